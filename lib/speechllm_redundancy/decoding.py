"""Greedy decoding from input embeddings with the KV cache, batched with left padding.

Position ids are passed explicitly (running count of real tokens), so a row's result is the same
whatever padding its batch needed — the tests compare batched output with batch size 1 and HF ``generate``.
A row leaves the batch (and its KV cache) as soon as it ends; with ``width`` the next waiting rows take its
place, so the decoder keeps running full steps instead of waiting at a narrowing width for its slowest row.
The cache is written in place into room reserved for the decode (``DynamicLayer`` re-copies each layer's
cache at every step to append one position).

Precision. ``greedy`` runs the decoder it is given. ``decoding_model(llm, "bf16")`` is the decoder the
toolkit hands it on a CPU that multiplies bf16 natively (``resolve_decode_precision``'s "auto"): a copy
whose decoder layers compute their linear products in bf16 with the weights cast and packed for oneDNN once,
while the residual stream, norms, attention and the LM head stay float32 (bf16 logits would round near-ties
into ties). Measured on the 2-core AMX CPU this project is sized for, book8's trained SLAM models, 64
test-clean utterances at width 64: SmolLM2-135M 13.2–15.4 s → 7.5–9.8 s (prefill 8.5 → 3.6 s), 0 of 64 rows
different; Qwen2.5-Coder-0.5B 36–42 s → 18.5 s (prefill ~25 → ~9 s). Casting the whole model to bf16
instead is *slower* there (Qwen 64 s, its prefill 85 s): the norms, rotary embeddings and
attention are not faster in bf16 on this CPU, and unpacked bf16 products are slow.
"""

from __future__ import annotations

import copy
import functools
import inspect
import weakref

from typing import Iterable, Sequence

import torch
from torch import nn

from speechllm_redundancy.errors import UserError
from speechllm_redundancy.layers import decoder_layers, decoder_stack

DECODE_PRECISIONS = ("auto", "fp32", "bf16")


def cache_kwarg(llm) -> str:
    """The name of ``llm``'s KV cache argument: transformers ≥ 5.2x calls it ``cache``, earlier releases
    ``past_key_values``. Read from the decoder stack's forward (a PEFT wrapper's takes **kwargs)."""
    forward = type(decoder_stack(llm)).forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def resolve_decode_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """"fp32" or "bf16" (the decoder layers' linear products) for greedy decoding on ``device``. "auto" is
    bf16 on a CPU whose oneDNN multiplies bf16 natively (AVX512-BF16 or AMX: the case measured above), fp32
    elsewhere: emulated bf16 is slower than fp32, and a GPU decodes in the model's own dtype."""
    from speechllm_redundancy.encoders import native_bf16, onednn_bf16

    if precision not in DECODE_PRECISIONS:
        raise UserError(f"decode precision {precision!r}: use one of {', '.join(DECODE_PRECISIONS)}.")
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cpu" and native_bf16() and onednn_bf16() else "fp32"


class Bf16Products(nn.Module):
    """A linear layer that multiplies in bf16 (its weight cast, and packed for oneDNN, once) and hands its
    result back in the input's dtype, so the residual stream it adds to stays float32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        from speechllm_redundancy.encoders import Bf16Linear

        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.product = Bf16Linear(weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x.to(torch.bfloat16)).to(x.dtype)


def _merged_weight(lora_layer) -> torch.Tensor:
    """A peft LoRA layer's weight with its active adapters added (what its forward computes, without dropout)."""
    weight = lora_layer.base_layer.weight.detach()
    if lora_layer.merged or lora_layer.disable_adapters:
        return weight
    return weight + sum(lora_layer.get_delta_weight(a) for a in lora_layer.active_adapters if a in lora_layer.lora_A)


def _products(module: nn.Module, made: dict) -> None:
    """``made[id(m)]`` = the ``Bf16Products`` standing in for each linear layer ``m`` under ``module`` (a peft
    LoRA layer as one, its adapters merged)."""
    for child in module.children():
        if hasattr(child, "base_layer") and hasattr(child, "get_delta_weight"):
            made[id(child)] = Bf16Products(_merged_weight(child), child.base_layer.bias)
        elif isinstance(child, nn.Linear):
            made[id(child)] = Bf16Products(child.weight.detach(), child.bias)
        else:
            _products(child, made)


@torch.no_grad()
def bf16_products(llm: nn.Module) -> nn.Module:
    """A decoding copy of ``llm`` whose decoder layers' linear products run in bf16 (``Bf16Products``; a LoRA
    layer's adapters merged into its product), while embeddings, norms, attention and the LM head are copies
    of ``llm``'s. The linear layers are replaced *while* copying, so their float32 weights are never copied:
    building it costs half the decoder layers' float32 size on top of the model. For inference only; ``llm``
    is left as it was."""
    made: dict = {}
    for layer in decoder_layers(llm):
        _products(layer, made)
    twin = copy.deepcopy(llm, memo=dict(made))  # deepcopy hands back the replacement of each memoised module
    return twin.eval().requires_grad_(False)


_KEPT: dict = {}  # the one decoding copy kept: {"entry": (weakref to its model, weights state, copy)}


def _weights_state(llm: nn.Module) -> tuple:
    """What a decoding copy of ``llm`` depends on: which tensors its parameters are and how often each was
    changed in place (an optimiser step, ``load_state_dict``, a LoRA merge bump ``_version``), and which
    LoRA adapters are on (peft's ``disable_adapter`` changes no tensor)."""
    adapters = tuple((m.merged, m.disable_adapters, tuple(m.active_adapters)) for m in llm.modules()
                     if hasattr(m, "get_delta_weight"))
    return tuple((id(p), p._version) for p in llm.parameters()), adapters


def decoding_model(llm: nn.Module, precision: str) -> nn.Module:
    """``llm`` as greedy decoding runs it at ``precision`` (resolved: "fp32" or "bf16"): ``llm`` itself in
    fp32; in bf16 its ``bf16_products`` copy, built once for the current state of its weights. One copy is
    kept at a time (the evaluation sets of a pruning point share it), so decoding a 1.5B model and its pruned
    copies holds one bf16 copy, not one per model; a healing step or another model makes it stale."""
    if precision == "fp32":
        return llm
    if precision != "bf16":
        raise UserError(f"decode precision {precision!r}: resolve it first (resolve_decode_precision).")
    state = _weights_state(llm)
    kept = _KEPT.get("entry")
    if kept is not None and kept[0]() is llm and kept[1] == state:
        return kept[2]
    _KEPT.clear()  # the previous copy goes before the next one is built
    twin = bf16_products(llm)
    _KEPT["entry"] = (weakref.ref(llm), state, twin)
    weakref.finalize(llm, _forget, id(twin))  # a walk point's model dies before the next point heals
    return twin


def _forget(twin_id: int) -> None:
    """Drop the kept copy if it is still the one made for a model that has just been freed."""
    kept = _KEPT.get("entry")
    if kept is not None and id(kept[2]) == twin_id:
        _KEPT.clear()


@functools.cache  # one class, built on first use (transformers imports slowly)
def _roomy_layer_class():
    """A ``DynamicLayer`` whose keys/values are a view ``[start:end]`` of a buffer with room to spare: a step
    writes one column in place instead of copying the cache, dropping leading columns moves ``start``, and
    rows are selected or appended (left-padded with zeros) by one copy of the buffer."""
    from transformers.cache_utils import DynamicLayer

    class RoomyLayer(DynamicLayer):
        def __init__(self, room: int):
            super().__init__()
            self.room, self.start, self.end, self._k, self._v = room, 0, 0, None, None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            new = key_states.shape[-2]
            if self._k is None or self.end + new > self._k.shape[-2]:
                self._move(key_states, 0, max(self.room, 2 * (self.end - self.start + new)))
            self._k[:, :, self.end : self.end + new] = key_states
            self._v[:, :, self.end : self.end + new] = value_states
            self.end += new
            return self._views()

        def _views(self):
            span = slice(self.start, self.end)
            self.keys, self.values = self._k[:, :, span], self._v[:, :, span]
            return self.keys, self.values

        def _move(self, like, left: int, room: int):
            """Re-home the columns in a new buffer of ``room``, ``left`` zero columns before them."""
            cols = self.end - self.start
            k, v = (like.new_zeros(*like.shape[:2], room, like.shape[-1]) for _ in range(2))
            if self._k is not None:
                k[:, :, left : left + cols], v[:, :, left : left + cols] = self.keys, self.values
            self._k, self._v, self.start, self.end = k, v, 0, left + cols

        def select(self, rows: torch.Tensor, drop: int):
            """Keep ``rows`` and all but the first ``drop`` columns."""
            self._k, self._v = self._k.index_select(0, rows), self._v.index_select(0, rows)
            self.start += drop
            self._views()

        def batch_select_indices(self, indices: torch.Tensor):
            self.select(indices, 0)

        def join(self, other: RoomyLayer):
            """Append the rows of ``other``, right-aligned with these (the shorter side left-padded)."""
            cols, more = self.end - self.start, other.end - other.start
            if more > cols:
                self._widen(more - cols)
            k, v = (buf.new_zeros(len(other.keys), *buf.shape[1:]) for buf in (self._k, self._v))
            k[:, :, self.end - more : self.end], v[:, :, self.end - more : self.end] = other._views()
            self._k, self._v = torch.cat([self._k, k]), torch.cat([self._v, v])
            self._views()

        def _widen(self, extra: int):
            """``extra`` zero columns before the current ones."""
            if self.start >= extra:
                self.start -= extra
                self._k[:, :, self.start : self.start + extra] = 0
                self._v[:, :, self.start : self.start + extra] = 0
            else:
                self._move(self._k, extra, max(self._k.shape[-2], self.end - self.start + extra + self.room))
            self._views()

    return RoomyLayer


def _cache(room: int):
    """A DynamicCache whose layers reserve ``room`` positions, or None where transformers builds its layers
    differently (then ``greedy`` uses a plain DynamicCache: the same results, only slower)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    if getattr(cache, "layer_class_to_replicate", None) is not DynamicLayer or cache.layers:
        return None
    cache.layer_class_to_replicate = functools.partial(_roomy_layer_class(), room)
    return cache


class _Batch:
    """The rows decoding together: their batch indices, KV cache, attention mask, next positions, logits."""

    def __init__(self, llm, room: int):
        self.llm, self.room, self.kwarg = llm, room, cache_kwarg(llm)
        self.rows = self.cache = self.mask = self.pos = self.logits = None

    def __len__(self):
        return 0 if self.rows is None else len(self.rows)

    def join(self, rows: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor):
        """Prefill ``rows`` (their common left padding dropped) and add them to the batch."""
        first = int(mask.any(0).int().argmax())
        embeds, mask = embeds[:, first:], mask[:, first:]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        first_rows = not len(self)  # later rows are copied into the batch's cache: no room to spare
        cache = _cache(self.room if first_rows else mask.shape[1]) or _plain_cache()
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                          logits_to_keep=1, **{self.kwarg: cache}).logits[:, -1]
        if first_rows:
            self.rows, self.cache, self.mask, self.pos = rows, cache, mask, positions[:, -1:] + 1
            self.logits = logits
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            _join_layer(mine, theirs)
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(mask, width)])
        self.rows, self.pos = torch.cat([self.rows, rows]), torch.cat([self.pos, positions[:, -1:] + 1])
        self.logits = torch.cat([self.logits, logits])

    def keep(self, stay: torch.Tensor):
        """Only the rows ``stay`` go on; columns now padding for every row are dropped."""
        self.rows, self.mask, self.pos, self.logits = (t[stay] for t in
                                                       (self.rows, self.mask, self.pos, self.logits))
        if not len(stay):
            return
        drop = int(self.mask.any(0).int().argmax())
        self.mask = self.mask[:, drop:]
        for layer in self.cache.layers:
            _select_layer(layer, stay, drop)

    def step(self, nxt: torch.Tensor):
        """Feed each row its token; the logits of the next one."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.logits = self.llm(input_ids=nxt[:, None], attention_mask=self.mask, position_ids=self.pos,
                               use_cache=True, **{self.kwarg: self.cache}).logits[:, -1]
        self.pos = self.pos + 1


def _plain_cache():
    from transformers import DynamicCache

    return DynamicCache()


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (width - t.shape[-1], 0))


def _select_layer(layer, rows: torch.Tensor, drop: int):
    """``RoomyLayer.select`` on either kind of layer."""
    if hasattr(layer, "select"):
        return layer.select(rows, drop)
    layer.keys, layer.values = layer.keys[rows, :, drop:], layer.values[rows, :, drop:]


def _join_layer(layer, other):
    """``RoomyLayer.join`` on either kind of layer."""
    if hasattr(layer, "join"):
        return layer.join(other)
    width = max(layer.keys.shape[-2], other.keys.shape[-2])

    def pad(t):
        return torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0))

    layer.keys = torch.cat([pad(layer.keys), pad(other.keys)])
    layer.values = torch.cat([pad(layer.values), pad(other.values)])


def _rule_out_stops(logits: torch.Tensor, stops: torch.Tensor, early: torch.Tensor) -> None:
    """Rule the stop ids out, in place, in the rows that are ``early`` (not yet at their floor): B × stops
    values written, not a copy of the (B, vocabulary) logits; they serve this step's choice only."""
    logits[:, stops] = logits[:, stops].masked_fill(early[:, None], float("-inf"))


@torch.inference_mode()
def greedy(llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int | Sequence[int],
           stop_ids: Iterable[int | None], pad_id: int, keep_stop: bool = False,
           width: int | None = None, min_new_tokens: int | Sequence[int] = 0) -> list[list[int]]:
    """Generate token ids per row until a stop id or the row's token cap. The stop token itself is
    returned only with ``keep_stop`` (a stop *string* may share its token with text, e.g. '."').
    ``min_new_tokens`` (per row or one for all): the stop ids cannot be chosen before a row has written
    this many tokens (its next-best token is taken instead; Hugging Face's ``min_new_tokens``).

    ``inputs_embeds`` (B, L, H) and ``attention_mask`` (B, L) must be left-padded (real tokens last); they
    are cast to the dtype of the decoder's embeddings. ``width``: at most this many rows decode at once, the
    next (in the given order) joining as rows end (None: all B).
    """
    inputs_embeds = inputs_embeds.to(llm.get_input_embeddings().weight.dtype)
    b, cols = inputs_embeds.shape[:2]
    dev = inputs_embeds.device
    caps = torch.tensor([max_new_tokens] * b if isinstance(max_new_tokens, int) else list(max_new_tokens),
                        dtype=torch.long, device=dev)
    floors = torch.tensor([min_new_tokens] * b if isinstance(min_new_tokens, int) else list(min_new_tokens),
                          dtype=torch.long, device=dev)
    floored = bool(b) and int(floors.max()) > 0
    longest = max(int(caps.max()), 0) if b else 0
    tokens = torch.full((b, longest), pad_id, dtype=torch.long, device=dev)
    written = torch.zeros(b, dtype=torch.long, device=dev)  # tokens so far, then the row's result length
    stops = torch.tensor(sorted({s for s in stop_ids if s is not None}), dtype=torch.long, device=dev)
    waiting = (caps > 0).nonzero().flatten()
    batch, width = _Batch(llm, room=cols + longest), width or b
    while len(waiting) or len(batch):
        if len(waiting) and len(batch) < width:
            new, waiting = waiting[: width - len(batch)], waiting[width - len(batch) :]
            batch.join(new, inputs_embeds[new], attention_mask[new])
        rows = batch.rows
        if floored:  # no host sync: rows past their floor are left as they are
            _rule_out_stops(batch.logits, stops, written[rows] < floors[rows])
        nxt = batch.logits.argmax(-1)
        tokens[rows, written[rows]] = nxt
        written[rows] += 1
        hit = torch.isin(nxt, stops)
        ended = hit | (written[rows] >= caps[rows])
        if ended.any():  # the one host sync a step: which rows leave the batch
            written[rows[ended]] -= (hit[ended] & (not keep_stop)).long()
            stay = (~ended).nonzero().flatten()
            batch.keep(stay)
            nxt = nxt[stay]
        if len(batch):
            batch.step(nxt)
    return [row[:n] for row, n in zip(tokens.tolist(), written.tolist())]
