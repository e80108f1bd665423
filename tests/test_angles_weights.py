"""On the real SmolLM2-135M (packaged weights): angles agree with an independent output_hidden_states
computation for every block not ending at the last layer, and pruning along the path keeps a valid model."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from packaged_weights import need

from speechllm_redundancy.angles import measure_angles, text_batches
from speechllm_redundancy.pruning import prune_block

pytestmark = pytest.mark.weights

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella.",
    "The weather today is sunny with a light breeze from the west, and the sea is calm.",
    "We will meet at the library after lunch to finish the project.",
    "My brother bought a new car last week.",
    "Why?",
]


@pytest.fixture(scope="module")
def smollm():
    from speechllm_redundancy.zoo import load_causal_lm

    need("smollm2-135m")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_causal_lm("smollm2-135m")


def test_smollm2_angles_match_output_hidden_states(smollm):
    model, tokenizer = smollm
    L = model.config.num_hidden_layers
    refs = []
    for text in SENTENCES:  # independent: one sentence at a time, all-token hidden states, last token
        ids = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**ids, output_hidden_states=True).hidden_states
        assert len(hidden) == L + 1
        refs.append(torch.stack([h[0, -1].double() for h in hidden]))
    expected = np.full((L, L + 1), np.nan)
    for n in range(1, L):
        for l in range(L - n):
            cos = torch.stack([torch.nn.functional.cosine_similarity(r[l], r[l + n], dim=0) for r in refs])
            expected[l, n] = float((torch.arccos(cos.clamp(-1, 1)) / torch.pi).mean())
    for side in ("right", "left"):
        tokenizer.padding_side = side
        batches = text_batches(tokenizer, SENTENCES, batch_size=4)
        got = measure_angles(model, batches, progress=False)
        inner = ~np.isnan(expected)
        np.testing.assert_allclose(got.distances[inner], expected[inner], atol=2e-5)
        # blocks ending at L: hooks read the pre-norm state; output_hidden_states' last entry is post-norm
        cos = [torch.nn.functional.cosine_similarity(r[0], r[L], dim=0).clamp(-1, 1) for r in refs]
        post = np.mean([float(torch.arccos(c) / torch.pi) for c in cos])
        assert abs(got.distances[0, L] - post) > 1e-3
        assert np.nanmin(got.distances) >= 0 and np.nanmax(got.distances) <= 1


def test_smollm2_pruned_along_path_generates_with_cache(smollm):
    model, tokenizer = smollm
    got = measure_angles(model, text_batches(tokenizer, SENTENCES), progress=False)
    start = got.optimal_path()[3]
    pruned = prune_block(model, start, 3)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    outs = []
    for use_cache in (True, False):
        with torch.no_grad():
            outs.append(pruned.generate(**ids, max_new_tokens=8, do_sample=False, use_cache=use_cache))
    assert torch.equal(outs[0], outs[1])
    assert pruned.config.num_hidden_layers == model.config.num_hidden_layers - 3
