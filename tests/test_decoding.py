"""Greedy decoding with the KV cache: batched = batch size 1 = no-cache recomputation; caps and stops."""

import pytest
import torch

from slam_tiny import tiny_llm
from speechllm_redundancy.decoding import greedy
from speechllm_redundancy.slam import SlamConfig, SlamModel

torch.set_num_threads(2)
D = 16


def make():
    return make_with()


def make_with(**config):
    llm, tok = tiny_llm(seed=3)
    torch.manual_seed(2)
    return SlamModel(SlamConfig(encoder="e", llm="tiny", encoder_dim=D, projector_hidden=32, **config), llm, tok)


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


def test_keep_stop_returns_the_stop_token_and_changes_nothing_else():
    model = make()
    f = feats(9, 40, 23, 3, 61)
    batch = model.embed_batch(f, "asr", padding_side="left")
    caps = [6, 10, 10, 0, 10]
    free = greedy(model.llm, batch["inputs_embeds"], batch["attention_mask"], caps, set(), model.layout.pad_id)
    assert [len(o) for o in free] == caps
    # a stop id that some rows emit (at different steps) and some do not
    counts = {}
    for row in free:
        for t in set(row[1:]):
            counts[t] = counts.get(t, 0) + 1
    stop = max((t for t in counts if counts[t] < sum(1 for c in caps if c)), key=lambda t: counts[t])
    plain = greedy(model.llm, batch["inputs_embeds"], batch["attention_mask"], caps, {stop}, model.layout.pad_id)
    kept = greedy(model.llm, batch["inputs_embeds"], batch["attention_mask"], caps, {stop}, model.layout.pad_id,
                  keep_stop=True)
    assert plain == [row[: row.index(stop)] if stop in row else row for row in free]  # unchanged behaviour
    assert kept == [row[: row.index(stop) + 1] if stop in row else row for row in free]
    stopped = [row for row in kept if row and row[-1] == stop]
    assert stopped and len(stopped) < 4 and kept[3] == []  # some rows stop, some run to their cap
    # batched = batch size 1 with the stop kept
    single = []
    for x, cap in zip(f, caps):
        b = model.embed_batch([x], "asr", padding_side="left")
        single += greedy(model.llm, b["inputs_embeds"], b["attention_mask"], [cap], {stop}, model.layout.pad_id,
                         keep_stop=True)
    assert single == kept


def test_generate_stops_at_the_stop_string_and_cuts_the_answer():
    """With a layout whose stop string the model writes, the answer ends at its first occurrence."""
    from speechllm_redundancy.slam import PROMPTS

    f = feats(9, 40, 23, 3, 61, 17)
    free_layout = {"user": '"{speech}"\nCopy.', "answer_prefix": '"'}
    free = make_with(prompts={**PROMPTS, "asr": free_layout}).generate(f, max_new_tokens=12)
    chars = [c for text in free for c in text[1:-1] if c.isascii() and c.isprintable() and not c.isspace()]
    stop = max(set(chars), key=lambda c: (sum(c in t for t in free) < len(free), chars.count(c), c))
    assert 0 < sum(stop in t for t in free) < len(free)
    cut = make_with(prompts={**PROMPTS, "asr": {**free_layout, "stop": stop}})
    expected = [t.split(stop, 1)[0].strip() for t in free]
    assert cut.generate(f, max_new_tokens=12, batch_size=1) == expected
    assert cut.generate(f, max_new_tokens=12, batch_size=4) == expected


def test_generate_mixed_tasks_with_different_stops_is_independent_of_batching():
    """A row stops at its own task's stop tokens only, not at those of another task in its batch."""
    from speechllm_redundancy.slam import PROMPTS

    f = feats(9, 40, 23, 3, 61, 17)
    plain = {**PROMPTS, "ast-en-de": "Translate."}  # an instruction: no stop string of its own
    ast = make_with(prompts=plain).generate(f, task="ast-en-de", max_new_tokens=12)
    chars = [c for i in (1, 3, 5) for c in ast[i] if c.isascii() and c.isprintable() and not c.isspace()]
    stop = max(set(chars), key=lambda c: (chars.count(c), c))  # a character the AST rows do write
    model = make_with(prompts={**plain, "asr": {"user": "{speech}\nCopy.", "stop": stop}})
    tasks = ["asr", "ast-en-de"] * 3
    one = model.generate(f, task=tasks, batch_size=1, max_new_tokens=12)
    assert [one[i] for i in (1, 3, 5)] == [ast[i] for i in (1, 3, 5)] and any(stop in ast[i] for i in (1, 3, 5))
    assert model.generate(f, task=tasks, batch_size=6, max_new_tokens=12) == one
    assert model.generate(f[::-1], task=tasks[::-1], batch_size=4, max_new_tokens=12) == one[::-1]


def test_generate_caps_each_row_by_its_task_output_ratio(monkeypatch):
    """The cap is CAP_SLACK + ratio × speech positions, the ratio by task (German outruns its English source)."""
    import speechllm_redundancy.decoding as decoding
    from speechllm_redundancy.errors import UserError
    from speechllm_redundancy.slam import CAP_SLACK, OUTPUT_RATIO

    seen = []
    real = decoding.greedy

    def spy(llm, embeds, mask, caps, *args, **kwargs):
        seen.extend(caps)
        return real(llm, embeds, mask, caps, *args, **kwargs)

    monkeypatch.setattr(decoding, "greedy", spy)
    model = make()
    f = feats(40)  # 40 frames → 8 projected positions (k = 5)
    positions = model.embed_batch(f, "asr")["speech_lengths"][0]
    for task in ("asr", "ast-en-de", "ast-fr-en"):
        seen.clear()
        model.generate(f, task, max_new_tokens=500)
        assert seen == [CAP_SLACK + int(OUTPUT_RATIO[task] * positions)]
    assert OUTPUT_RATIO["ast-en-de"] > OUTPUT_RATIO["asr"]
    seen.clear()
    model.generate(f, "asr", max_new_tokens=500, tokens_per_frame=3.0)
    assert seen == [CAP_SLACK + 3 * positions]
    seen.clear()
    model.generate(f, "asr", max_new_tokens=5)
    assert seen == [5]
    with pytest.raises(UserError, match="tokens_per_frame"):
        model.generate(f, "asr", tokens_per_frame=0)
