"""Efficiency: honest memory accounting, a FLOP-based ideal, a timing loop that is real greedy decoding."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from redundancy_tiny import random_batch, tiny_llama
from speechllm_redundancy import efficiency
from speechllm_redundancy.efficiency import PeakMemory, greedy_run, ideal_saving, measure_efficiency
from speechllm_redundancy.errors import UserError

torch.set_num_threads(1)


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
    custom = measure_efficiency(model, (0.25,), path={1: 0}, prompt_tokens=4, new_tokens=2, repeats=1,
                                progress=False)
    assert custom["start"].tolist() == [0, 0]
    with pytest.raises(UserError):
        measure_efficiency(model, (1.0,), progress=False)


def test_parameter_and_cache_bytes_helpers():
    model = tiny_llama(layers=2)
    expected = sum(p.numel() * 4 for p in model.parameters()) + sum(b.numel() * b.element_size()
                                                                    for b in model.buffers())
    assert efficiency.parameter_bytes(model) == expected
    assert efficiency.cache_bytes(None) == 0
