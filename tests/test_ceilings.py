"""Gold-input ceilings: the decoder handed the gold input as text in a SLAM layout (tiny random decoder)."""

import copy
import math

import pytest
import torch

from slam_tiny import save_tiny_llm, tiny_llm
from speechllm_redundancy import ceilings
from speechllm_redundancy.ceilings import candidates_for, decode_text_inputs, gold_ceiling, search_layouts
from speechllm_redundancy.data.manifest import Utterance
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.evaluation import bleu, wer
from speechllm_redundancy.slam import PROMPTS, PromptFormat, PromptLayout

torch.set_num_threads(2)
TEXTS = ["the cat sat", "a dog ran far away", "birds fly", "one two three four five six"]
GERMAN = ["die katze sass", "ein hund lief weit weg", "voegel fliegen", "eins zwei drei vier fuenf sechs"]


def utts(translations=None):
    return [Utterance(id=f"u{i}", audio=f"u{i}.wav", duration=1.0, sample_rate=16000, text=t,
                      translation=translations[i] if translations else None) for i, t in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def tiny():
    return tiny_llm(seed=4)


def test_gold_ceiling_scores_the_decoders_answers(tiny):
    llm, tok = tiny
    res = gold_ceiling(llm, tok, "asr", utts())
    assert set(res) == {"metric", "score", "hyps", "refs"} and res["metric"] == "wer"
    assert res["refs"] == TEXTS and len(res["hyps"]) == len(TEXTS)
    assert res["score"] == pytest.approx(wer(TEXTS, res["hyps"]))
    # the default ASR layout is the library's; any other is a different prompt, hence other answers
    assert gold_ceiling(llm, tok, "asr", utts(), PROMPTS["asr"])["hyps"] == res["hyps"]
    other = gold_ceiling(llm, tok, "asr", utts(), "Transcribe the speech.")["hyps"]
    assert other != res["hyps"]
    ast = gold_ceiling(llm, tok, "ast-en-de", utts(GERMAN))
    assert ast["metric"] == "bleu" and ast["refs"] == GERMAN
    assert ast["score"] == pytest.approx(bleu(GERMAN, ast["hyps"]))


def test_search_layouts_returns_every_candidate_best_first(tiny):
    llm, tok = tiny
    table = search_layouts(llm, tok, "asr", utts())
    assert [set(r) for r in table] == [{"name", "prompt", "metric", "score", "example"}] * len(table)
    assert sorted(r["name"] for r in table) == sorted(candidates_for("asr"))
    scores = [r["score"] for r in table]
    assert scores == sorted(scores) and all(r["metric"] == "wer" for r in table)
    for r in table[:2]:  # each row is that layout's gold-input ceiling
        res = gold_ceiling(llm, tok, "asr", utts(), r["prompt"])
        assert r["score"] == pytest.approx(res["score"]) and r["example"] == res["hyps"][0]


@pytest.mark.parametrize("task, scores, order", [
    ("asr", {"a": 40.0, "b": 12.5, "c": 97.0}, ["b", "a", "c"]),  # WER: lower is better
    ("ast-en-de", {"a": 4.0, "b": 21.0, "c": 0.5}, ["b", "a", "c"]),  # BLEU: higher is better
    ("ast-fr-en", {"a": 4.0, "b": 1.0, "c": 9.0}, ["c", "a", "b"]),
])
def test_search_layouts_sorts_by_the_tasks_metric(monkeypatch, task, scores, order):
    def fake(llm, tokenizer, task_, utterances, prompt, **kw):
        return {"metric": "wer" if task_ == "asr" else "bleu", "score": scores[prompt], "hyps": [prompt], "refs": []}

    monkeypatch.setattr(ceilings, "gold_ceiling", fake)
    table = search_layouts(None, None, task, [], {name: name for name in scores})
    assert [r["name"] for r in table] == order and [r["example"] for r in table] == order


def test_bad_tasks_and_inputs_are_user_errors(tiny):
    llm, tok = tiny
    for task in ("ast", "ast-en", "ast-en-xx", "st-en-de", "ast-en-de-fr", "ASR"):
        with pytest.raises(UserError, match="task"):
            candidates_for(task)
        with pytest.raises(UserError, match="task"):
            search_layouts(llm, tok, task, utts())
    with pytest.raises(UserError, match="no default layout"):
        gold_ceiling(llm, tok, "ast-de-en", utts(GERMAN))
    with pytest.raises(UserError, match="no translation"):
        gold_ceiling(llm, tok, "ast-en-de", utts())
    with pytest.raises(UserError, match="no candidate"):
        search_layouts(llm, tok, "asr", utts(), {})
    with pytest.raises(UserError, match="exactly once"):
        gold_ceiling(llm, tok, "asr", utts(), {"user": "Copy the sentence."})


def test_a_translation_row_without_its_translation_is_named(tiny, monkeypatch):
    """One row of a translation set without its translation: a UserError naming that row and the fix,
    before anything is decoded."""
    llm, tok = tiny
    monkeypatch.setattr(ceilings, "decode_text_inputs", lambda *a, **k: pytest.fail("decoded"))
    rows = utts(GERMAN)
    rows[2].translation = None
    rows[3].translation = "  "
    with pytest.raises(UserError, match=r"2 utterance\(s\) have no translation .*'u2', 'u3'.*manifest") as err:
        gold_ceiling(llm, tok, "ast-en-de", rows)
    assert "'u0'" not in str(err.value)
    assert ceilings.gold_pairs(utts(GERMAN), "ast-en-de") == (TEXTS, GERMAN)
    assert ceilings.gold_pairs(utts(), "asr") == (TEXTS, TEXTS)


def test_progress_shows_a_bar_and_changes_nothing(tiny, capsys):
    llm, tok = tiny
    quiet = gold_ceiling(llm, tok, "ast-en-de", utts(GERMAN), progress=False)
    assert "gold ceiling" not in capsys.readouterr().err
    shown = gold_ceiling(llm, tok, "ast-en-de", utts(GERMAN), progress=True)
    err = capsys.readouterr().err
    assert "gold ceiling (ast-en-de)" in err and f"{len(TEXTS)}/{len(TEXTS)}" in err
    assert shown == quiet
    layout = PromptLayout(tok, True, "", {"asr": PROMPTS["asr"]})
    assert (decode_text_inputs(llm, layout, "asr", TEXTS, batch_size=3, progress=True)
            == decode_text_inputs(llm, layout, "asr", TEXTS, batch_size=3))


def test_candidate_layouts_are_valid_and_name_their_languages():
    _, tok = tiny_llm()
    for task, words in (("asr", ()), ("ast-en-de", ("English", "German")), ("ast-fr-en", ("French", "English"))):
        cands = candidates_for(task)
        assert len(cands) >= 4
        for name, spec in cands.items():
            fmt = PromptFormat.of(spec)
            assert all(w in fmt.user + fmt.answer_prefix for w in words), (task, name)
            layout = PromptLayout(tok, True, "", {task: spec})
            before, after = layout.pieces(task)
            assert layout.text_ids(task, "x y") == before + layout._ids("x y") + after
    assert "quoted-copy+prefill" in candidates_for("asr")
    candidates_for("asr").clear()  # a copy: the library's table is untouched
    assert candidates_for("asr")


def test_answers_match_hf_generate_and_stop_at_the_stop_string(tiny):
    """An independent reference (transformers' generate on the token ids) gives the same answers; a
    layout whose stop string the decoder writes ends each answer at its first occurrence."""
    llm, tok = tiny
    free = {"user": '"{speech}"\nCopy.', "answer_prefix": '"'}
    layout = PromptLayout(tok, True, "", {"asr": free})
    answers = decode_text_inputs(llm, layout, "asr", TEXTS, batch_size=3)
    assert decode_text_inputs(llm, layout, "asr", TEXTS, batch_size=1) == answers
    assert len(set(answers)) > 1
    stop_ids = sorted(layout.stop_ids("asr"))
    for text, answer in zip(TEXTS, answers):
        ids = torch.tensor([layout.text_ids("asr", text)])
        cap = 16 + math.ceil(4 * len(text.split()))
        out = llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=cap, do_sample=False,
                           eos_token_id=stop_ids, pad_token_id=layout.pad_id)
        assert layout.finish("asr", out[0, ids.shape[1]:].tolist()) == answer
    # pick a character the answers contain (inside, not only at the edges) and make it the stop string
    chars = [c for a in answers for c in a[1:-1] if c.isascii() and c.isprintable() and not c.isspace()]
    stop = max(set(chars), key=lambda c: (sum(c in a for a in answers) < len(answers), chars.count(c), c))
    assert 0 < sum(stop in a for a in answers)
    cut = PromptLayout(tok, True, "", {"asr": {**free, "stop": stop}})
    expected = [a.split(stop, 1)[0].strip() for a in answers]
    assert decode_text_inputs(llm, cut, "asr", TEXTS, batch_size=3) == expected


# -- cached_gold_ceiling: the ceiling each chapter records beside its baselines ---------------------------

@pytest.fixture
def saved(tmp_path, monkeypatch):
    """A tiny decoder saved to a directory (its name for the zoo), SLAM models around copies of it, and a
    manifest of TEXTS with their GERMAN translations; artifacts in tmp_path."""
    from speechllm_redundancy.data.manifest import write_manifest
    from speechllm_redundancy.slam import SlamConfig, SlamModel, load_llm

    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / "artifacts"))
    name = save_tiny_llm(tmp_path / "decoder", seed=4)
    llm, tok = load_llm(name)

    def slam(**config):  # each model its own copy of the decoder (peft wraps it in place)
        return SlamModel(SlamConfig(encoder="tiny-whisper", llm=name, encoder_dim=16, projector_hidden=32,
                                    **config), copy.deepcopy(llm), tok)

    manifest = write_manifest(tmp_path / "test.jsonl", utts(GERMAN))
    return name, slam, manifest


def _no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded again: the cached ceiling was not used")

    monkeypatch.setattr(ceilings, "decode_text_inputs", refuse)


def test_cached_ceiling_is_gold_ceiling_and_decodes_once(saved, monkeypatch):
    name, slam, manifest = saved
    model = slam()
    res = ceilings.cached_gold_ceiling(model, "asr", manifest, 3)
    direct = gold_ceiling(model.llm, model.tokenizer, "asr", utts()[:3])
    assert res["metric"] == "wer" and res["score"] == pytest.approx(direct["score"])
    assert res["hyps"] == direct["hyps"] and res["refs"] == TEXTS[:3]
    ast = ceilings.cached_gold_ceiling(model, "ast-en-de", manifest)  # limit None: the whole manifest
    direct_ast = gold_ceiling(model.llm, model.tokenizer, "ast-en-de", utts(GERMAN))
    assert ast["metric"] == "bleu" and ast["score"] == pytest.approx(direct_ast["score"])
    stored = manifest.parent / "artifacts" / "ceilings"
    files = sorted(p.name for p in stored.iterdir() if not p.name.startswith("."))  # less records and locks
    assert len(files) == 2 and all(f.endswith(".json") for f in files)

    _no_decoding(monkeypatch)
    again = ceilings.cached_gold_ceiling(model, "asr", manifest, 3)
    assert again["score"] == res["score"] and again["hyps"] == res["hyps"]
    # the decoder by name, in the SlamConfig-default layout the model has: the same key, no model load
    monkeypatch.setattr("speechllm_redundancy.slam.load_llm", lambda *a, **k: pytest.fail("loaded a decoder"))
    assert ceilings.cached_gold_ceiling(name, "asr", manifest, 3)["hyps"] == res["hyps"]
    # the record_baseline column takes the result as it is
    from speechllm_redundancy.results import _ceiling_score
    assert _ceiling_score(again, "wer") == res["score"]
    assert sorted(p.name for p in stored.iterdir() if not p.name.startswith(".")) == files


def test_cached_ceiling_key_follows_manifest_limit_and_layout(saved, monkeypatch, tmp_path):
    from speechllm_redundancy.data.manifest import write_manifest

    name, slam, manifest = saved
    calls = []
    real = ceilings.decode_text_inputs

    def counted(*args, **kwargs):
        calls.append(len(args[3]))
        return real(*args, **kwargs)

    monkeypatch.setattr(ceilings, "decode_text_inputs", counted)
    ceilings.cached_gold_ceiling(name, "asr", manifest, 2)
    ceilings.cached_gold_ceiling(name, "asr", manifest, 2)
    assert calls == [2]
    ceilings.cached_gold_ceiling(name, "asr", manifest, 3)  # another limit
    assert calls == [2, 3]
    write_manifest(manifest, utts()[::-1])  # the same path, other bytes (other sentences first)
    res = ceilings.cached_gold_ceiling(name, "asr", manifest, 2)
    assert calls == [2, 3, 2] and res["refs"] == TEXTS[::-1][:2]
    ceilings.cached_gold_ceiling(name, "asr", manifest, 2, prompt="Transcribe the speech.")  # another layout
    assert calls == [2, 3, 2, 2]
    ceilings.cached_gold_ceiling(slam(chat_template=False), "asr", manifest, 2)
    assert calls == [2, 3, 2, 2, 2]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(UserError, match="limit"):
            ceilings.cached_gold_ceiling(name, "asr", manifest, bad)
    with pytest.raises(UserError, match="does not exist"):
        ceilings.cached_gold_ceiling(name, "asr", tmp_path / "missing.jsonl", 2)


def test_cached_ceiling_is_the_base_decoders_and_refuses_a_pruned_one(saved):
    """A LoRA model's ceiling is measured with its adapters off (they stay on afterwards); a pruned
    decoder has no ceiling of its own."""
    from speechllm_redundancy.pruning import prune_block

    name, slam, manifest = saved
    base = slam()
    expected = gold_ceiling(base.llm, base.tokenizer, "asr", utts())
    lora = slam(lora={"r": 4, "alpha": 64}).eval()  # eval: no LoRA dropout
    torch.manual_seed(0)
    for n, p in lora.llm.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 1.0)
    adapted = gold_ceiling(lora.llm, lora.tokenizer, "asr", utts())["hyps"]
    assert adapted != expected["hyps"]  # the adapters change the answers ...
    res = ceilings.cached_gold_ceiling(lora, "asr", manifest)
    # ... not the ceiling
    assert res["hyps"] == expected["hyps"] and res["score"] == pytest.approx(expected["score"])
    assert gold_ceiling(lora.llm, lora.tokenizer, "asr", utts())["hyps"] == adapted  # and are on again
    assert not lora.llm.training

    pruned = slam()
    pruned.llm = prune_block(pruned.llm, 1, 1)
    with pytest.raises(UserError, match="unpruned"):
        ceilings.cached_gold_ceiling(pruned, "asr", manifest, 2)
