"""Greedy decoding from input embeddings with the KV cache, batched with left padding.

Position ids are passed explicitly (running count of real tokens), so a row's result is the same
whatever padding its batch needed — the test compares batched output with batch size 1.
"""

from __future__ import annotations

import inspect

from typing import Iterable, Sequence

import torch

from speechllm_redundancy.layers import decoder_stack


def _cache_kwarg(llm) -> str:
    """transformers ≥ 5.2x calls the KV cache argument ``cache``; earlier releases ``past_key_values``."""
    forward = type(decoder_stack(llm)).forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


@torch.inference_mode()
def greedy(llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int | Sequence[int],
           stop_ids: Iterable[int | None], pad_id: int, keep_stop: bool = False) -> list[list[int]]:
    """Generate token ids per row until a stop id or the row's token cap. The stop token itself is
    returned only with ``keep_stop`` (a stop *string* may share its token with text, e.g. '."').

    ``inputs_embeds`` (B, L, H) and ``attention_mask`` (B, L) must be left-padded (real tokens last).
    """
    from transformers import DynamicCache

    b = inputs_embeds.shape[0]
    caps = [max_new_tokens] * b if isinstance(max_new_tokens, int) else list(max_new_tokens)
    stops = torch.tensor(sorted({s for s in stop_ids if s is not None}), device=inputs_embeds.device)
    mask = attention_mask.clone()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = {_cache_kwarg(llm): DynamicCache()}  # the cache object is updated in place
    out = llm(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions,
              use_cache=True, logits_to_keep=1, **cache)
    next_pos = positions[:, -1:] + 1
    done = torch.zeros(b, dtype=torch.bool, device=mask.device)
    caps_t = torch.tensor(caps, device=mask.device)
    lengths = torch.zeros(b, dtype=torch.long, device=mask.device)
    raw: list[torch.Tensor] = []  # each step's argmax (finished rows are fed padding instead)
    for step in range(max(caps)):
        nxt = out.logits[:, -1].argmax(-1)
        capped = step >= caps_t
        hit = torch.isin(nxt, stops) & ~done & ~capped
        done |= hit | capped
        lengths += (~done).long() + (hit.long() if keep_stop else 0)
        raw.append(nxt)
        if done.all() or step + 1 >= max(caps):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        fed = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        out = llm(input_ids=fed[:, None], attention_mask=mask, position_ids=next_pos,
                  use_cache=True, **cache)
        next_pos = next_pos + 1
    if not raw:
        return [[] for _ in range(b)]
    seq = torch.stack(raw, 1).tolist()  # within a row's length these are its tokens (and stop, if kept)
    return [row[:n] for row, n in zip(seq, lengths.tolist())]
