"""Angular distances: agree with plain references, ignore padding, are measured before the final norm."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from redundancy_tiny import byte_tokenizer, random_batch, save_tiny, tiny_llama, tiny_qwen2
from speechllm_redundancy import angles
from speechllm_redundancy.angles import (
    AngleMatrix,
    compare,
    last_token_states,
    mean_abs_difference,
    measure_angles,
    optimal_path,
    path_agreement,
    removed_overlap,
)
from speechllm_redundancy.cli import main as cli_main
from speechllm_redundancy.errors import UserError

torch.set_num_threads(1)
LENGTHS = [5, 9, 3, 12]


def rows_of(batch):
    """Each row of a padded batch on its own, unpadded."""
    out = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        keep = mask.bool()
        out.append({"input_ids": ids[keep][None], "attention_mask": mask[keep][None]})
    return out


def angular(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    cos = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1).clamp(-1, 1)
    return torch.arccos(cos) / math.pi


def reference_states(model, single):
    """All h^l of one unpadded input via output_hidden_states; h^L from a copy whose final norm is removed."""
    with torch.no_grad():
        hidden = model(**single, output_hidden_states=True).hidden_states
        no_norm = copy.deepcopy(model)
        no_norm.model.norm = nn.Identity()
        last = no_norm.model(**single).last_hidden_state
    return [h[0, -1] for h in hidden[:-1]] + [last[0, -1]], hidden[-1][0, -1]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request):
    return (tiny_llama if request.param == "llama" else tiny_qwen2)(layers=6, dtype=torch.float64)


def test_matches_output_hidden_states_and_manual_last_layer(model):
    batch = random_batch(LENGTHS, side="right")
    L = model.config.num_hidden_layers
    refs = [reference_states(model, single)[0] for single in rows_of(batch)]
    expected = np.full((L, L + 1), np.nan)
    for n in range(1, L + 1):
        for l in range(L - n + 1):
            expected[l, n] = float(torch.stack([angular(r[l], r[l + n]) for r in refs]).mean())
    got = measure_angles(model, [batch], progress=False)
    assert got.count == len(LENGTHS) and got.num_layers == L
    np.testing.assert_allclose(got.distances, expected, atol=1e-10, equal_nan=True)
    # blocks ending at L are measured before the final norm: the post-norm vector would give other values
    post_norm = [reference_states(model, s)[1] for s in rows_of(batch)]
    wrong = float(torch.stack([angular(r[0], p) for r, p in zip(refs, post_norm)]).mean())
    assert abs(wrong - got.distances[0, L]) > 1e-3


def test_states_are_embeddings_then_layer_outputs(model):
    batch = random_batch(LENGTHS, side="left")
    states = last_token_states(model, batch)
    assert states.shape == (len(LENGTHS), model.config.num_hidden_layers + 1, model.config.hidden_size)
    assert states.dtype == torch.float64
    embedded = model.get_input_embeddings()(batch["input_ids"][:, -1])  # left padding: last column is real
    torch.testing.assert_close(states[:, 0], embedded.double(), rtol=0, atol=0)
    for row, single in enumerate(rows_of(batch)):
        ref, _ = reference_states(model, single)
        torch.testing.assert_close(states[row], torch.stack(ref).double(), rtol=0, atol=1e-10)


def test_padding_side_and_batching_do_not_matter(model):
    right = measure_angles(model, [random_batch(LENGTHS, side="right")], progress=False, block_influence=True)
    left = measure_angles(model, [random_batch(LENGTHS, side="left")], progress=False, block_influence=True)
    alone = measure_angles(model, rows_of(random_batch(LENGTHS)), progress=False, block_influence=True)
    for other in (left, alone):
        np.testing.assert_allclose(right.distances, other.distances, atol=1e-10, equal_nan=True)
        np.testing.assert_allclose(right.block_influence, other.block_influence, atol=1e-10)
    assert right.count == left.count == alone.count == len(LENGTHS)


def test_values_in_unit_interval_and_nan_outside_triangle():
    model = tiny_llama(layers=5)
    got = measure_angles(model, [random_batch([4, 7, 2])], progress=False)
    D = got.distances
    L = 5
    defined = np.array([[1 <= n and l + n <= L for n in range(L + 1)] for l in range(L)])
    assert np.isnan(D[~defined]).all() and not np.isnan(D[defined]).any()
    assert (D[defined] >= 0).all() and (D[defined] <= 1).all()
    assert len(got.to_frame()) == L * (L + 1) // 2


def test_inputs_embeds_equal_input_ids_and_labels_ignored():
    model = tiny_qwen2(layers=4, dtype=torch.float64)
    batch = random_batch(LENGTHS, side="left")
    embedded = {"inputs_embeds": model.get_input_embeddings()(batch["input_ids"]).detach(),
                "attention_mask": batch["attention_mask"], "labels": batch["input_ids"]}
    a = measure_angles(model, [batch], progress=False)
    b = measure_angles(model, [embedded], progress=False)
    np.testing.assert_allclose(a.distances, b.distances, atol=1e-12, equal_nan=True)


def test_block_influence_matches_all_token_reference():
    model = tiny_llama(layers=4, dtype=torch.float64)
    batch = random_batch(LENGTHS, side="right")
    L = 4
    sums, tokens = np.zeros(L), 0
    for single in rows_of(batch):
        with torch.no_grad():
            hidden = list(model(**single, output_hidden_states=True).hidden_states[:-1])
            no_norm = copy.deepcopy(model)
            no_norm.model.norm = nn.Identity()
            hidden.append(no_norm.model(**single).last_hidden_state)
        for i in range(L):
            cos = torch.nn.functional.cosine_similarity(hidden[i][0], hidden[i + 1][0], dim=-1)
            sums[i] += float((1 - cos).sum())
        tokens += single["input_ids"].shape[1]
    got = measure_angles(model, [batch], progress=False, block_influence=True).block_influence
    np.testing.assert_allclose(got, sums / tokens, rtol=1e-5)


def test_peft_wrapped_and_held_models_and_train_flags_restored():
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(layers=4)
    batch = random_batch(LENGTHS)
    plain = measure_angles(base, [batch], progress=False)
    assert plain.block_influence is None  # off by default
    peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft.train()
    wrapped = measure_angles(peft, [batch], progress=False)  # LoRA B starts at zero: same function
    np.testing.assert_allclose(plain.distances, wrapped.distances, atol=1e-6, equal_nan=True)
    assert peft.training and all(m.training for m in peft.modules())

    class Holder(nn.Module):  # what a SlamModel looks like to measure_angles
        def __init__(self, llm):
            super().__init__()
            self.llm = llm

    held = measure_angles(Holder(base), [batch], progress=False)
    np.testing.assert_allclose(plain.distances, held.distances, atol=0, equal_nan=True)


def test_bad_batches_raise_user_errors():
    model = tiny_llama(layers=2)
    with pytest.raises(UserError, match="exactly one of"):
        measure_angles(model, [{"attention_mask": torch.ones(1, 3)}], progress=False)
    bad = random_batch([3, 2])
    bad["attention_mask"][1] = 0
    with pytest.raises(UserError, match="all padding"):
        measure_angles(model, [bad], progress=False)
    with pytest.raises(UserError, match="empty"):
        measure_angles(model, [], progress=False)


def test_optimal_path_and_comparisons():
    L = 4
    D = np.full((L, L + 1), np.nan)
    for n in range(1, L + 1):
        for l in range(L - n + 1):
            D[l, n] = 0.1 * n + (0.0 if l == L - n - 1 else 0.05 * (l + 1))  # deepest block not ending at L
    a = AngleMatrix(D, count=3)
    assert optimal_path(D) == a.optimal_path() == {1: 2, 2: 1, 3: 0}
    assert a.removed_layers(2) == [1, 2]
    b_dist = D.copy()
    b_dist[0, 1] = -1.0  # moves l*(1) to 0, |ΔD| on one cell
    b = AngleMatrix(b_dist)
    assert mean_abs_difference(a, a) == 0
    assert mean_abs_difference(a, b) == pytest.approx((b_dist[0, 1] - D[0, 1]).__abs__() / 10)
    assert path_agreement(a, b) == pytest.approx(2 / 3)
    assert removed_overlap(a, b) == {1: 0.0, 2: 1.0, 3: 1.0}
    assert path_agreement(a, {1: 2, 2: 0, 3: 0}) == pytest.approx(2 / 3)
    summary = compare(a, b)
    assert summary["mean_removed_overlap"] == pytest.approx(2 / 3)
    with pytest.raises(UserError, match="layers"):
        mean_abs_difference(a, AngleMatrix(np.full((3, 4), 0.1)))


def test_csv_and_json_round_trip(tmp_path):
    got = measure_angles(tiny_llama(layers=3), [random_batch([4, 6])], progress=False, block_influence=True)
    got.to_csv(tmp_path / "d.csv")
    frame = pd.read_csv(tmp_path / "d.csv")
    assert list(frame.columns) == ["l", "n", "distance"]
    back = AngleMatrix.from_csv(tmp_path / "d.csv")
    np.testing.assert_allclose(back.distances, got.distances, rtol=1e-9, equal_nan=True)
    got.save(tmp_path / "d.json")
    again = AngleMatrix.load(tmp_path / "d.json")
    assert again.count == got.count
    np.testing.assert_allclose(again.distances, got.distances, equal_nan=True)
    np.testing.assert_allclose(again.block_influence, got.block_influence)
    with pytest.raises(UserError, match="no angle table"):
        AngleMatrix.from_csv(tmp_path / "missing.csv")
    calls = []
    for _ in range(2):  # computed once, then read back
        cached = angles.cached_angles(tmp_path / "c" / "k.json", lambda: calls.append(1) or got)
        np.testing.assert_allclose(cached.distances, got.distances, equal_nan=True)
    assert calls == [1]


def test_text_batches_default_special_tokens_and_chat_template():
    tok = byte_tokenizer()
    plain = angles.text_batches(tok, ["hello there", "hi"], batch_size=8)
    assert len(plain) == 1
    ids, mask = plain[0]["input_ids"], plain[0]["attention_mask"]
    assert mask.sum(1).tolist() == [3, 12]  # sorted by length; <s> + bytes
    assert ids[0, 0] == tok.bos_token_id and ids[1, 0] == tok.bos_token_id
    chat = angles.text_batches(tok, ["hi"], chat_template=True)
    text = tok.decode(chat[0]["input_ids"][0])
    assert text.startswith("<s>user: hi") and text.endswith("assistant:")


def test_text_batches_pad_on_the_tokenizers_side_with_eos_if_it_has_no_pad_token():
    tok = byte_tokenizer()
    tok.pad_token, tok.padding_side = None, "left"
    (batch,) = angles.text_batches(tok, ["hello there", "hi"], batch_size=8)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert mask.tolist() == [[0] * 9 + [1] * 3, [1] * 12]
    assert ids[0, :9].tolist() == [tok.eos_token_id] * 9 and tok.decode(ids[0, 9:]) == "<s>hi"
    assert tok.pad_token is None  # the caller's tokenizer is left as it was given
    tok.pad_token = tok.eos_token = None
    with pytest.raises(UserError, match="neither a pad nor an end-of-text token"):
        angles.text_batches(tok, ["hi"])


def test_cli_text_mode(tmp_path, capsys):
    model_dir = save_tiny(tmp_path / "m", "llama", layers=4)
    inputs = tmp_path / "in.txt"
    inputs.write_text("the quick brown fox\n\njumps over\nthe lazy dog and more words\n")
    out = tmp_path / "d.csv"
    argv = ["angles", "--model", str(model_dir), "--text", str(inputs), "--output", str(out),
            "--batch-size", "2", "--device", "cpu"]
    assert cli_main(argv) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["l", "n", "distance"] and len(frame) == 4 * 5 // 2
    assert "optimal path" in capsys.readouterr().out
    assert cli_main(argv) == 2  # refuses to overwrite
    assert "--force" in capsys.readouterr().err
    assert cli_main(argv + ["--force"]) == 0
    missing = ["angles", "--model", str(model_dir), "--text", str(tmp_path / "nope.txt"),
               "--output", str(tmp_path / "x.csv")]
    assert cli_main(missing) == 2


def test_cli_speech_mode_reads_the_last_prompt_token(tmp_path, monkeypatch, capsys):
    from slam_tiny import save_tiny_llm, save_tiny_whisper, write_manifest_dir
    from speechllm_redundancy.features import cached_features
    from speechllm_redundancy.slam import SlamConfig, SlamModel

    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / "artifacts"))
    whisper = save_tiny_whisper(tmp_path / "whisper")
    config = SlamConfig(encoder=whisper, llm=save_tiny_llm(tmp_path / "llm", layers=4), encoder_dim=32,
                        projector_hidden=32)
    torch.manual_seed(0)
    SlamModel(config).save_pretrained(tmp_path / "slam")
    manifest = write_manifest_dir(tmp_path / "corpus")
    out = tmp_path / "speech.csv"
    assert cli_main(["angles", "--slam", str(tmp_path / "slam"), "--manifest", str(manifest),
                     "--output", str(out), "--batch-size", "2", "--device", "cpu"]) == 0
    got = AngleMatrix.from_csv(out)
    assert got.num_layers == 4
    # independently: each utterance alone, embedded without a target, through output_hidden_states
    slam = SlamModel.from_pretrained(tmp_path / "slam")
    store = cached_features(whisper, manifest, progress=False)
    refs = []
    with torch.no_grad():
        for utt_id in sorted(store):
            batch = slam.embed_batch([store[utt_id]], "asr")
            hidden = slam.llm(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"],
                              output_hidden_states=True).hidden_states
            refs.append([h[0, -1] for h in hidden])
    for l, n in [(0, 1), (1, 2), (0, 3), (2, 1)]:
        expected = float(torch.stack([angular(r[l], r[l + n]) for r in refs]).mean())
        assert got.distance(l, n) == pytest.approx(expected, abs=1e-5)
    assert cli_main(["angles", "--slam", str(tmp_path / "slam"), "--output", str(tmp_path / "x.csv")]) == 2
    assert "--manifest" in capsys.readouterr().err
