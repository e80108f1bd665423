"""Greedy decoding with the KV cache: batched = batch size 1 = no-cache recomputation; caps and stops."""

import torch

from slam_tiny import tiny_llm
from speechllm_redundancy.decoding import greedy
from speechllm_redundancy.slam import SlamConfig, SlamModel

torch.set_num_threads(2)
D = 16


def make():
    llm, tok = tiny_llm(seed=3)
    torch.manual_seed(2)
    return SlamModel(SlamConfig(encoder="e", llm="tiny", encoder_dim=D, projector_hidden=32), llm, tok)


def feats(*lengths):
    g = torch.Generator().manual_seed(5)
    return [3 * torch.randn(n, D, generator=g) for n in lengths]


def naive_greedy(model, f, n):
    """Reference: recompute the whole sequence at every step, no cache, no padding."""
    batch = model.embed_batch([f], "asr", padding_side="left")
    embeds, out = batch["inputs_embeds"], []
    emb = model.llm.get_input_embeddings()
    for _ in range(n):
        nxt = int(model.llm(inputs_embeds=embeds).logits[0, -1].argmax())
        if nxt == model.layout.stop_id:
            break
        out.append(nxt)
        embeds = torch.cat([embeds, emb.weight[nxt][None, None]], 1)
    return out


def test_batched_greedy_equals_batch_size_one_and_no_cache():
    model = make()
    f = feats(9, 40, 23, 3, 61)
    batch = model.embed_batch(f, "asr", padding_side="left")
    batched = greedy(model.llm, batch["inputs_embeds"], batch["attention_mask"], 10, {model.layout.stop_id},
                     model.layout.pad_id)
    single = []
    for x in f:
        b = model.embed_batch([x], "asr", padding_side="left")
        single += greedy(model.llm, b["inputs_embeds"], b["attention_mask"], 10, {model.layout.stop_id},
                         model.layout.pad_id)
    assert batched == single
    assert len({tuple(s) for s in single}) > 1  # the inputs matter: this is not a constant output
    assert [naive_greedy(model, x, 10) for x in f] == single


def test_generate_is_independent_of_batch_size_and_order():
    model = make()
    f = feats(9, 40, 23, 3, 61, 17)
    one = model.generate(f, batch_size=1, max_new_tokens=8)
    assert model.generate(f, batch_size=4, max_new_tokens=8) == one
    assert model.generate(f[::-1], batch_size=3, max_new_tokens=8) == one[::-1]


def test_caps_and_stop_token():
    model = make()
    f = feats(9, 40)
    batch = model.embed_batch(f, "asr", padding_side="left")
    out = greedy(model.llm, batch["inputs_embeds"], batch["attention_mask"], [2, 5], set(), model.layout.pad_id)
    assert [len(o) for o in out] == [2, 5]
    # a stop id ends the row where it first appears and is not returned; the other row runs on
    first = out[1]
    cut = next(i for i in range(1, len(first)) if first[i] not in first[:i])
    again = greedy(model.llm, batch["inputs_embeds"], batch["attention_mask"], [2, 5], {first[cut]},
                   model.layout.pad_id)
    assert again[1] == first[:cut]
    assert again[0] == out[0][: out[0].index(first[cut])] if first[cut] in out[0] else again[0] == out[0]
