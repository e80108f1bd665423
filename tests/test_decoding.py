"""Greedy decoding with the KV cache: batched (rows leaving and joining the batch) = batch size 1 = no-cache
recomputation = HF ``generate``, on a Llama- and a Qwen2-shaped decoder; caps and stops; the in-place cache."""

import pytest
import torch

from slam_tiny import tiny_llm
from speechllm_redundancy.decoding import Bf16Products, decoding_model, greedy, resolve_decode_precision
from speechllm_redundancy.errors import UserError
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


def test_generate_refills_batch_size_rows_from_a_chunk_of_many(monkeypatch):
    """generate hands the decoder DECODE_CHUNK batches' worth of rows (by length) with width = batch_size,
    so a row that ends is replaced at once instead of its batch waiting for the slowest row."""
    import speechllm_redundancy.decoding as decoding
    from speechllm_redundancy.slam import DECODE_CHUNK

    calls, real = [], decoding.greedy

    def spy(llm, embeds, mask, caps, *args, **kwargs):
        calls.append((len(caps), kwargs["width"]))
        return real(llm, embeds, mask, caps, *args, **kwargs)

    monkeypatch.setattr(decoding, "greedy", spy)
    model, f = make(), feats(*range(3, 3 + 4 * (DECODE_CHUNK + 2), 4))
    model.generate(f, batch_size=1, max_new_tokens=3)
    assert calls == [(DECODE_CHUNK, 1), (2, 1)]
    calls.clear()
    model.generate(f, batch_size=2, max_new_tokens=3)
    assert calls == [(DECODE_CHUNK + 2, 2)]


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


# -- a Llama- and a Qwen2-shaped decoder (sliding-window layers), rows ending at very different steps ------

def token_rows(llm, lengths, seed=1):
    """Left-padded embeddings and mask of random token rows (as SlamModel feeds projected speech)."""
    from redundancy_tiny import random_batch

    batch = random_batch(lengths, side="left", seed=seed)
    return llm.get_input_embeddings()(batch["input_ids"]).detach(), batch["attention_mask"]


def hf_greedy(llm, embeds, cap, stop, pad_id):
    """Hugging Face ``generate`` from one unpadded row's embeddings, stopping at (and keeping) ``stop``."""
    if cap == 0:
        return []
    out = llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                       do_sample=False, max_new_tokens=cap, eos_token_id=[stop], pad_token_id=pad_id)
    return out[0].tolist()


def spread_stop(free, caps):
    """A token some rows write early, some late and some (with room to run) never, so rows end far apart."""
    firsts = {t: [r.index(t) if t in r else None for r in free] for r in free for t in r}
    never = {t: sum(f is None and c > 1 for f, c in zip(fs, caps)) for t, fs in firsts.items()}
    spread = {t: max(f for f in fs if f is not None) - min(f for f in fs if f is not None)
              for t, fs in firsts.items()}
    return max((t for t in firsts if never[t]), key=lambda t: (spread[t], t))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_batched_equals_batch_size_one_and_hf_generate_with_rows_ending_far_apart(kind, precision):
    """Rows stopping at steps far apart, rows running to their cap (1 to 40) and a row with none, in one
    batch: the batched decoder (rows leaving as they end, others joining at a narrower width) writes what
    batch size 1 and HF ``generate`` do, with float32 products and with the bf16 decoder."""
    from redundancy_tiny import COMMON, tiny_llama, tiny_qwen2

    llm = decoding_model((tiny_llama if kind == "llama" else tiny_qwen2)(layers=3), precision)
    lengths, caps, pad = [3, 17, 9, 30, 5, 12], [40, 40, 1, 40, 0, 25], COMMON["pad_token_id"]
    embeds, mask = token_rows(llm, lengths)
    free = greedy(llm, embeds, mask, caps, set(), pad)
    assert [len(r) for r in free] == caps and len({tuple(r[:5]) for r in free if r}) == 5
    stop = spread_stop(free, caps)
    expected = [r[: r.index(stop) + 1] if stop in r else r for r in free]
    ends = sorted(len(e) for e, r in zip(expected, free) if stop in r)
    capped = [len(e) == c > 1 for e, c, r in zip(expected, caps, free) if stop not in r]
    assert ends[-1] - ends[0] >= 20 and any(capped)
    for width in (None, 3, 2, 1):  # all rows at once, or the next rows joining as others end
        assert greedy(llm, embeds, mask, caps, {stop}, pad, keep_stop=True, width=width) == expected, width
    one = [greedy(llm, embeds[i : i + 1, -n:], mask[i : i + 1, -n:], [c], {stop}, pad, keep_stop=True)[0]
           for i, (n, c) in enumerate(zip(lengths, caps))]
    assert one == expected
    hf = [hf_greedy(llm, embeds[i : i + 1, -n:], c, stop, pad) for i, (n, c) in enumerate(zip(lengths, caps))]
    assert hf == expected


def test_a_plain_dynamic_cache_decodes_the_same(monkeypatch):
    """Where transformers' DynamicCache cannot take the roomy layers, rows leave and join a plain one."""
    import speechllm_redundancy.decoding as decoding
    from redundancy_tiny import COMMON, tiny_qwen2

    llm = tiny_qwen2(layers=2)
    embeds, mask = token_rows(llm, [3, 17, 9, 30, 5, 12])
    caps, pad = [30, 12, 1, 30, 0, 25], COMMON["pad_token_id"]
    free = greedy(llm, embeds, mask, caps, set(), pad)
    stop = spread_stop(free, caps)
    roomy = [greedy(llm, embeds, mask, caps, {stop}, pad, width=w) for w in (None, 2)]
    monkeypatch.setattr(decoding, "_cache", lambda room: None)
    assert [greedy(llm, embeds, mask, caps, {stop}, pad, width=w) for w in (None, 2)] == roomy
    assert roomy[0] == roomy[1] != free


def test_finished_rows_leave_the_batch(monkeypatch):
    """Each forward runs only the rows still decoding (a row with cap 0 is not even prefilled): the batch
    never waits at full width for its slowest row, and no step is spent on a finished one."""
    from redundancy_tiny import COMMON, tiny_llama

    llm = tiny_llama(layers=2)
    embeds, mask = token_rows(llm, [4, 11, 7, 9])
    caps = [3, 0, 12, 7]
    widths, real = [], llm.forward

    def spy(*args, **kwargs):
        widths.append(kwargs["attention_mask"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(llm, "forward", spy)
    out = greedy(llm, embeds, mask, caps, set(), COMMON["pad_token_id"])
    assert [len(r) for r in out] == caps
    # prefill: 3 rows; after token 3 two rows remain, after token 7 one; the last token needs no forward
    assert widths == [3] * 3 + [2] * 4 + [1] * 5
    assert sum(widths) == sum(caps)  # one row-forward per token written (the prefill yields the first)


def test_waiting_rows_join_as_others_end(monkeypatch):
    """With ``width``, a row that ends is replaced by the next waiting one (prefilled alone, then decoded
    with the rest): every step runs as many rows as are left to run, up to the width, and columns that
    have become padding for every row leave the cache."""
    from redundancy_tiny import COMMON, tiny_llama

    llm = tiny_llama(layers=2)
    embeds, mask = token_rows(llm, [4, 11, 7, 9, 6])
    caps = [3, 0, 6, 4, 2]
    calls, real = [], llm.forward

    def spy(*args, **kwargs):
        calls.append(("prefill" if "inputs_embeds" in kwargs else "step", kwargs["attention_mask"].shape[0]))
        assert kwargs["attention_mask"].any(0).all()  # no column is padding for every row: none is kept
        return real(*args, **kwargs)

    monkeypatch.setattr(llm, "forward", spy)
    out = greedy(llm, embeds, mask, caps, set(), COMMON["pad_token_id"], width=2)
    assert [len(r) for r in out] == caps
    # rows 0 and 2 start; row 3 joins once row 0 has its 3 tokens, row 4 once row 3 has its 4
    assert calls == [("prefill", 2), ("step", 2), ("step", 2), ("step", 1), ("prefill", 1), ("step", 2),
                     ("step", 2), ("step", 1), ("prefill", 1), ("step", 1)]
    assert sum(width for _, width in calls) == sum(caps)


def test_the_cache_appends_in_place_and_selects_and_joins_rows():
    """The roomy cache returns what concatenation would, writes each step into one buffer (no copy per
    step), keeps chosen rows and drops leading columns, appends rows right-aligned (the shorter side
    zero-padded on the left), and grows past its reserved room if asked to."""
    from speechllm_redundancy.decoding import _cache

    g = torch.Generator().manual_seed(0)

    def kv(rows, n):
        k = torch.randn(rows, 2, n, 3, generator=g)
        return k, -k

    def pad(t, width):
        return torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0))

    cache, ref, buffers = _cache(room=10), None, set()
    for n in (5, 1, 1):
        k, v = kv(4, n)
        got = cache.update(k, v, 0)
        ref = k if ref is None else torch.cat([ref, k], -2)
        assert torch.equal(got[0], ref) and torch.equal(got[1], -ref)
        buffers.add(got[0].untyped_storage().data_ptr())
    layer = cache.layers[0]
    assert len(buffers) == 1 and type(layer).__name__ == "RoomyLayer"
    rows = torch.tensor([0, 2, 3])
    layer.select(rows, drop=2)
    ref = ref[rows][:, :, 2:]
    assert torch.equal(layer.keys, ref) and cache.get_seq_length() == 5
    for more in (7, 3, 9):  # wider than the batch (it is left-padded), narrower (the newcomers are), wider
        other = _cache(room=more)
        other.update(*kv(2, more), 0)
        layer.join(other.layers[0])
        width = max(ref.shape[-2], more)
        ref = torch.cat([pad(ref, width), pad(other.layers[0].keys, width)])
        assert torch.equal(layer.keys, ref) and torch.equal(layer.values, -ref)
    k, v = kv(9, 12)  # past the room reserved
    got = cache.update(k, v, 0)
    assert torch.equal(got[0], torch.cat([ref, k], -2)) and cache.get_seq_length() == 21


def test_bf16_products_multiply_the_layers_in_bf16_and_leave_the_model_as_it_was():
    """The bf16 decoder is a copy: its decoder layers' linears are ``Bf16Products`` (bf16 in, the input's
    dtype out), the LM head and embeddings stay float32, and the model keeps its own float32 linears. Its
    logits follow float32's within bf16 rounding, not exactly."""
    model = make()
    before = {n: p.clone() for n, p in model.llm.state_dict().items()}
    twin = decoding_model(model.llm, "bf16")
    assert twin is not model.llm and decoding_model(model.llm, "fp32") is model.llm
    linears = [m for layer in twin.model.layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    products = [m for m in twin.modules() if isinstance(m, Bf16Products)]
    assert not linears and len(products) == 7 * len(twin.model.layers)  # q k v o, gate up down
    assert isinstance(twin.lm_head, torch.nn.Linear) and twin.lm_head.weight.dtype == torch.float32
    assert not any(isinstance(m, Bf16Products) for m in model.llm.modules())
    assert all(torch.equal(p, before[n]) for n, p in model.llm.state_dict().items())
    batch = model.embed_batch(feats(9, 40), "asr", padding_side="left")
    real = batch["attention_mask"].bool()
    with torch.inference_mode():
        ref = model.llm(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"]).logits[real]
        low = twin(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"]).logits[real]
    assert low.dtype == torch.float32 and not torch.equal(low, ref)
    assert (low - ref).norm() < 0.1 * ref.norm()  # 3 % on this random model
    assert (low.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9  # 97 % of positions


def test_the_bf16_decoder_is_built_once_per_state_of_the_weights():
    """The evaluation sets of a pruning point share one bf16 copy; a change to the weights (a healing step)
    makes it stale, and the next decode builds it again from the changed weights."""
    model = make()
    twin = decoding_model(model.llm, "bf16")
    assert decoding_model(model.llm, "bf16") is twin
    f = feats(9, 40, 23)
    before = model.generate(f, max_new_tokens=6, precision="bf16")
    with torch.no_grad():
        for layer in model.llm.model.layers:
            layer.mlp.down_proj.weight.mul_(-3.0)
    changed = decoding_model(model.llm, "bf16")
    assert changed is not twin
    assert model.generate(f, max_new_tokens=6, precision="bf16") != before  # it reads the new weights
    with pytest.raises(UserError, match="resolve it first"):
        decoding_model(model.llm, "auto")


def test_one_bf16_decoder_is_kept_at_a_time_and_built_without_copying_the_linear_weights(monkeypatch):
    """Decoding another model drops the first one's copy (a 1.5B decoder and its pruned copies hold one
    bf16 copy between them), and the copy is built without duplicating the float32 weights it replaces."""
    import gc
    import weakref

    first, second = make(), make_with(prompt_vectors=0)
    kept_first = decoding_model(first.llm, "bf16")
    assert decoding_model(first.llm, "bf16") is kept_first
    kept_second = decoding_model(second.llm, "bf16")
    again = decoding_model(first.llm, "bf16")
    assert again is not kept_first  # the second model's copy replaced it, so it is built anew
    gone = [weakref.ref(kept_first), weakref.ref(kept_second)]
    del kept_first, kept_second
    gc.collect()
    assert [r() for r in gone] == [None, None]  # nothing holds the dropped copies
    last = weakref.ref(again)
    del again, first
    gc.collect()
    assert last() is None  # nor the kept one, once its model is freed (before the next point heals)

    copied, real = [], torch.nn.Parameter.__deepcopy__
    monkeypatch.setattr(torch.nn.Parameter, "__deepcopy__",
                        lambda self, memo: copied.append(id(self)) or real(self, memo))
    from speechllm_redundancy.decoding import bf16_products

    bf16_products(second.llm)
    linear = {id(m.weight) for m in second.llm.model.layers.modules() if isinstance(m, torch.nn.Linear)}
    assert linear and copied and not linear & set(copied)  # norms and embeddings copied, linear weights not


def test_the_bf16_decoder_merges_lora_adapters_first():
    """A LoRA-adapted decoder's bf16 copy decodes what its adapters say: its logits follow the adapted
    model's, not the base model's."""
    model = make_with(lora={"r": 4, "alpha": 8, "dropout": 0.0})
    for name, p in model.llm.named_parameters():
        if "lora_B" in name:  # the adapters start at zero: give them something to say
            torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(len(name)))
    batch = model.embed_batch(feats(9, 40), "asr", padding_side="left")
    twin = decoding_model(model.llm, "bf16")
    assert not any("lora" in n for n, _ in twin.named_parameters())
    with model.llm.disable_adapter():  # no tensor changes, but the decoder it decodes does
        unadapted = decoding_model(model.llm, "bf16")
    assert unadapted is not twin and decoding_model(model.llm, "bf16") is not unadapted
    real = batch["attention_mask"].bool()
    with torch.inference_mode():
        adapted = model.llm(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"]).logits
        with model.llm.disable_adapter():
            base = model.llm(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"]).logits
        low = twin(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"]).logits
        low_base = unadapted(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"]).logits
    assert (low - adapted)[real].norm() < 0.25 * (base - adapted)[real].norm()
    assert (low_base - base)[real].norm() < 0.25 * (base - adapted)[real].norm()


def test_auto_precision_is_bf16_only_on_a_cpu_that_multiplies_it_natively(monkeypatch):
    from speechllm_redundancy import encoders

    monkeypatch.setattr(encoders, "native_bf16", lambda: True)
    monkeypatch.setattr(encoders, "onednn_bf16", lambda: True)
    assert resolve_decode_precision("auto", "cpu") == "bf16"
    assert resolve_decode_precision("auto", torch.device("cuda", 0)) == "fp32"
    assert resolve_decode_precision("fp32", "cpu") == "fp32" and resolve_decode_precision("bf16", "cuda") == "bf16"
    monkeypatch.setattr(encoders, "native_bf16", lambda: False)
    assert resolve_decode_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(encoders, "native_bf16", lambda: True)
    monkeypatch.setattr(encoders, "onednn_bf16", lambda: False)
    assert resolve_decode_precision("auto", "cpu") == "fp32"
    with pytest.raises(UserError, match="decode precision 'half': use one of auto, fp32, bf16"):
        resolve_decode_precision("half")


def test_generate_decodes_at_the_precision_asked_for(monkeypatch):
    """``generate`` hands ``greedy`` the float32 model at fp32 and the bf16 copy at bf16; rows read as
    transcripts either way, each within its cap."""
    import speechllm_redundancy.decoding as decoding

    model, seen = make(), []
    real = decoding.greedy
    monkeypatch.setattr(decoding, "greedy", lambda llm, *a, **k: seen.append(llm) or real(llm, *a, **k))
    f = feats(9, 40, 23)
    for precision in ("fp32", "bf16"):
        out = model.generate(f, max_new_tokens=5, precision=precision)
        assert len(out) == 3 and all(isinstance(o, str) for o in out)
    assert seen[0] is model.llm and seen[1] is decoding_model(model.llm, "bf16")


def test_min_new_tokens_rules_out_the_stops_until_each_rows_floor_as_hf_generate_does():
    """Rows whose stop comes before their floor write on (the next-best token) until the floor, and then stop
    as usual; rows with a floor they pass anyway decode as without one. Batched, with rows joining as others
    end, it equals Hugging Face ``generate(min_new_tokens=…)`` one row at a time."""
    from redundancy_tiny import COMMON, tiny_llama

    llm = tiny_llama(layers=3)
    lengths, caps, pad = [3, 17, 9, 30, 5, 12], [40, 40, 40, 40, 40, 25], COMMON["pad_token_id"]
    embeds, mask = token_rows(llm, lengths)
    free = greedy(llm, embeds, mask, caps, set(), pad)
    stop = spread_stop(free, caps)
    plain = greedy(llm, embeds, mask, caps, {stop}, pad, keep_stop=True)
    stopped = [i for i, r in enumerate(plain) if r and r[-1] == stop]
    assert len(stopped) >= 2
    floors = [0] * len(caps)
    for i in stopped[:2]:
        floors[i] = min(len(plain[i]) + 3, caps[i])  # past where the row stopped without a floor
    floors[stopped[-1]] = max(floors[stopped[-1]], 1)  # a floor the row passes anyway
    for width in (None, 2):
        floored = greedy(llm, embeds, mask, caps, {stop}, pad, keep_stop=True, width=width, min_new_tokens=floors)
        for i in stopped[:2]:
            assert len(floored[i]) > len(plain[i]) and stop not in floored[i][: floors[i]]
            assert floored[i][: len(plain[i]) - 1] == plain[i][:-1]  # the same up to the forbidden stop
        for i in set(range(len(caps))) - set(stopped[:2]):
            assert floored[i] == plain[i], i
        for i, (n, c, f) in enumerate(zip(lengths, caps, floors)):
            hf = llm.generate(inputs_embeds=embeds[i : i + 1, -n:], attention_mask=torch.ones(1, n, dtype=torch.long),
                              do_sample=False, max_new_tokens=c, min_new_tokens=f, eos_token_id=[stop],
                              pad_token_id=pad)[0].tolist()
            assert floored[i] == hf, i
    assert greedy(llm, embeds, mask, caps, {stop}, pad, keep_stop=True, min_new_tokens=0) == plain
