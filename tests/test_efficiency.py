"""Efficiency: honest memory accounting, a FLOP-based ideal, a timing loop that is real greedy decoding."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from redundancy_tiny import random_batch, tiny_llama
from slam_tiny import save_tiny_wavlm, tiny_llm, write_manifest_dir
from speechllm_redundancy import efficiency
from speechllm_redundancy.efficiency import (PeakMemory, greedy_run, ideal_saving, measure_efficiency,
                                             measure_speech_llm, speech_llm_run)
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.layers import decoder_layers

torch.set_num_threads(1)


pytestmark = pytest.mark.usefixtures("artifacts")  # a fresh artifacts folder per test (conftest.py)


def test_peak_memory_sees_a_transient_cpu_allocation():
    with PeakMemory("cpu") as small:
        torch.ones(10)
    with PeakMemory("cpu") as big:
        x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, freed before the block ends
        x.add_(1)
        del x
    if big.method == "unavailable":
        pytest.skip("no /proc/self/clear_refs on this system: CPU peak memory is not measurable")
    assert big.method == "cpu_peak_rss"
    assert 60 * 2**20 <= big.bytes <= 80 * 2**20
    assert small.bytes < 8 * 2**20


def test_greedy_loop_matches_generate():
    model = tiny_llama(layers=3)
    ids = random_batch([10, 10], seed=3)["input_ids"]
    run = greedy_run(model, ids, 6, torch.device("cpu"))
    with torch.no_grad():
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
                             do_sample=False, pad_token_id=model.config.pad_token_id)
    assert torch.equal(run["tokens"], ref[:, 10:])
    cfg = model.config
    per_layer = 2 * 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4  # k,v fp32
    assert run["kv_cache_bytes"] == 3 * per_layer * 15  # 10 prompt + 5 fed-back tokens cached


def test_ideal_saving_counts_layers_against_head():
    model = tiny_llama(layers=4)
    cfg = model.config
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    kv = cfg.num_key_value_heads * d // cfg.num_attention_heads
    linear = d * d * 2 + d * kv * 2 + 3 * d * f  # q, o, k, v, gate/up/down
    layer = 2 * linear + 4 * 8 * d  # attention over a context of 8
    head = 2 * v * d
    assert ideal_saving(model, 1, phase="decode", prompt_tokens=6, new_tokens=4) == pytest.approx(
        layer / (4 * layer + head))
    prefill = ideal_saving(model, 2, phase="prefill", prompt_tokens=16)
    per_token = 2 * linear + 4 * 8 * d
    assert prefill == pytest.approx(2 * 16 * per_token / (4 * 16 * per_token + head))
    assert ideal_saving(model, 0, phase="decode", prompt_tokens=6) == 0


def test_measure_efficiency_frame():
    model = tiny_llama(layers=4)
    frame = measure_efficiency(model, (0.0, 0.25, 0.5), prompt_tokens=12, new_tokens=3, repeats=1,
                               progress=False)
    assert frame["removed"].tolist() == [0, 1, 2] and frame["layers"].tolist() == [4, 3, 2]
    assert frame["start"].tolist() == [0, 2, 1]  # default block ends just before the last layer
    assert frame["parameter_bytes"].is_monotonic_decreasing
    kv = frame["kv_cache_bytes"].tolist()
    assert kv[0] == pytest.approx(2 * kv[2]) and kv[1] == pytest.approx(1.5 * kv[2])
    assert frame.loc[0, "prefill_saving"] == 0 and pd.isna(frame.loc[0, "prefill_vs_ideal"])
    assert (frame["prefill_s"] > 0).all() and (frame["decode_tokens_per_s"] > 0).all()
    if frame.loc[0, "memory_method"] != "unavailable":
        assert (frame["decode_peak_bytes"] >= frame["parameter_bytes"]).all()
        removed = frame.loc[0, ["parameter_bytes", "kv_cache_bytes"]] - frame.loc[2, ["parameter_bytes",
                                                                                   "kv_cache_bytes"]]
        assert frame.loc[2, "ideal_decode_peak_bytes"] == frame.loc[0, "decode_peak_bytes"] - removed.sum()
    custom = measure_efficiency(model, (0.25,), path={1: 0}, prompt_tokens=4, new_tokens=2, repeats=1,
                                progress=False)
    assert custom["start"].tolist() == [0, 0]
    with pytest.raises(UserError):
        measure_efficiency(model, (1.0,), progress=False)


def test_efficiency_reports_the_median_and_the_spread_of_the_repeats(monkeypatch):
    # (prefill, decode) seconds per call: each row's warm-up, then its three repeats
    seconds = iter([9.0, 9.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0,  # unpruned: prefill 2, 4, 6
                    9.0, 9.0, 1.0, 1.0, 3.0, 2.0, 2.0, 3.0])  # pruned: prefill 1, 3, 2

    def fake_run(model, ids, new_tokens, device):
        mem = PeakMemory(device)
        return {"prefill_s": next(seconds), "decode_s": next(seconds), "prefill_cpu_s": 1.0,
                "decode_cpu_s": 1.0, "prefill_mem": mem, "decode_mem": mem, "kv_cache_bytes": 0,
                "tokens": None}

    monkeypatch.setattr(efficiency, "greedy_run", fake_run)
    frame = measure_efficiency(tiny_llama(layers=4), (0.0, 0.5), repeats=3, progress=False)
    assert frame.loc[0, ["prefill_s", "prefill_min_s", "prefill_max_s"]].tolist() == [4.0, 2.0, 6.0]
    assert frame.loc[1, "prefill_s"] == 2.0 and frame.loc[1, "prefill_saving"] == pytest.approx(1 - 2 / 4)
    assert frame.loc[1, "prefill_saving_low"] == pytest.approx(1 - 3 / 2)  # slowest pruned, fastest unpruned
    assert frame.loc[1, "prefill_saving_high"] == pytest.approx(1 - 1 / 6)
    assert frame.loc[1, "decode_s"] == 2.0 and frame.loc[0, "decode_s"] == 5.0


def test_parameter_and_cache_bytes_helpers():
    model = tiny_llama(layers=2)
    expected = sum(p.numel() * 4 for p in model.parameters()) + sum(b.numel() * b.element_size()
                                                                    for b in model.buffers())
    assert efficiency.parameter_bytes(model) == expected
    assert efficiency.cache_bytes(None) == 0


# --- the whole SpeechLLM ------------------------------------------------------------------------------


def tiny_speech_llm(tmp_path, layers=4):
    from speechllm_redundancy.encoders import SpeechEncoder
    from speechllm_redundancy.slam import SlamConfig, SlamModel

    encoder = SpeechEncoder.from_name(save_tiny_wavlm(tmp_path / "wavlm"), device="cpu")
    llm, tok = tiny_llm(layers=layers)
    torch.manual_seed(1)
    config = SlamConfig(encoder=encoder.path, llm="tiny", encoder_dim=encoder.dim, projector_hidden=32)
    slam = SlamModel(config, llm, tok)
    manifest = write_manifest_dir(tmp_path / "audio", durations=(0.6, 1.1, 0.8),
                                  texts=["ab", "hello", "a b c d"])
    return slam, encoder, manifest


def test_one_utterance_runs_encoder_prefill_and_the_asked_decoding(tmp_path):
    slam, encoder, _ = tiny_speech_llm(tmp_path)
    wave = torch.randn(16000)
    run = speech_llm_run(slam, encoder, wave, "asr", 5, torch.device("cpu"))
    assert run["tokens"] == 5 and min(run["encode"], run["prefill"], run["decode"]) > 0
    assert run["total"] == pytest.approx(run["encode"] + run["prefill"] + run["decode"])
    cfg = slam.llm.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    per_position = 2 * cfg.num_key_value_heads * head_dim * 4 * 4  # k and v, float32, 4 layers
    assert run["kv_cache_bytes"] == per_position * (run["prompt_tokens"] + 4)  # the last token: not fed back
    expected = slam.embed_batch(encoder.encode([wave]), "asr", padding_side="left")["inputs_embeds"].shape[1]
    assert run["prompt_tokens"] == expected


def test_speech_llm_is_timed_from_audio_with_paired_repeats(tmp_path, monkeypatch):
    slam, encoder, manifest = tiny_speech_llm(tmp_path)
    calls = []
    encode = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda waves: calls.append(len(waves)) or encode(waves))
    frame = measure_speech_llm(slam, manifest, (0.5,), limit=2, repeats=2, encoder=encoder, progress=False)
    assert len(calls) == 2 * (1 + 2 * 2)  # per model: a warm-up, then 2 utterances x 2 repeats, from audio
    assert frame["removed"].tolist() == [0, 2] and frame["start"].tolist() == [0, 1]
    assert len(decoder_layers(slam.llm)) == 4  # the original is untouched
    lengths = [len(slam.layout.target_ids(t, slam.config.max_target_tokens)) for t in ("ab", "hello")]
    assert frame["new_tokens"].tolist() == [sum(lengths)] * 2  # the same work for both models
    unpruned = frame.loc[0]
    assert unpruned["total_saving"] == 0
    assert unpruned["total_saving_low"] <= 0 <= unpruned["total_saving_high"]
    pruned = frame.loc[1]
    assert pruned["total_saving_low"] <= pruned["total_saving"] <= pruned["total_saving_high"]
    assert pruned["total_saving"] == pytest.approx(1 - pruned["total_s"] / frame.loc[0, "total_s"])
    assert pruned["total_min_s"] <= pruned["total_s"] <= pruned["total_max_s"]
    assert frame.loc[0, "kv_cache_bytes"] == 2 * pruned["kv_cache_bytes"]
    assert 0 < pruned["ideal_total_saving"] < pruned["ideal_prefill_saving"] < 0.5
    assert frame.loc[0, "ideal_total_saving"] == 0
    if pruned["memory_method"] != "unavailable":
        removed = frame.loc[0, "parameter_bytes"] - pruned["parameter_bytes"] + pruned["kv_cache_bytes"]
        assert pruned["ideal_peak_bytes"] == frame.loc[0, "peak_bytes"] - removed


def test_speech_llm_timing_is_cached_by_its_inputs(tmp_path, monkeypatch):
    slam, encoder, manifest = tiny_speech_llm(tmp_path)
    made = []

    def fake(slam, manifest, fractions, **kw):
        made.append(kw)
        return pd.DataFrame([{"removed": 0, "total_s": 1.5}])

    monkeypatch.setattr(efficiency, "measure_speech_llm", fake)
    first = efficiency.cached_speech_llm_efficiency(slam, "k1", manifest, [0.5], limit=2, repeats=2)
    again = efficiency.cached_speech_llm_efficiency(slam, "k1", manifest, [0.5], limit=2, repeats=2)
    efficiency.cached_speech_llm_efficiency(slam, "k2", manifest, [0.5], limit=2, repeats=2)
    efficiency.cached_speech_llm_efficiency(slam, "k1", manifest, [0.5], limit=2, repeats=3)
    assert len(made) == 3 and made[0] == {"limit": 2, "repeats": 2, "task": "asr", "device": "cpu"}
    assert first.equals(again) and again.loc[0, "total_s"] == 1.5
