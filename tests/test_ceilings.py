"""Gold-input ceilings: the decoder handed the gold input as text in a SLAM layout (tiny random decoder)."""

import math

import pytest
import torch

from slam_tiny import tiny_llm
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
    with pytest.raises(UserError, match="translations"):
        gold_ceiling(llm, tok, "ast-en-de", utts())
    with pytest.raises(UserError, match="no candidate"):
        search_layouts(llm, tok, "asr", utts(), {})
    with pytest.raises(UserError, match="exactly once"):
        gold_ceiling(llm, tok, "asr", utts(), {"user": "Copy the sentence."})


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
