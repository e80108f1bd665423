"""What pruning buys: wall-clock and peak memory of a decoder and its pruned versions, against the ideal.

The *ideal* saving of removing n of L layers is the removed share of the decoder's compute, from FLOP
counting: every decoder layer costs the same (its linear weights, 2 FLOPs per weight per token, plus
attention over the context), while the LM head is not pruned. Prefill computes the head for the last
position only (as ``generate`` does), so its ideal is ≈ n/L; decoding pays the head every token, so its
ideal is a little lower. A real decoder reaches a fraction of the ideal (overheads outside the layers).

Timing: a greedy loop with a KV cache — one prefill forward, then one forward per new token, the
work ``generate`` does minus its bookkeeping — repeated; the minimum over repeats is reported (robust to
other processes on a shared machine). The process's CPU time is recorded beside the wall-clock: on a
CPU shared with other jobs it tracks the work done more steadily (``*_cpu_*`` columns).

Memory (``PeakMemory``): CUDA — ``max_memory_allocated`` above the allocation before the step; CPU —
the process's peak resident set (VmHWM, reset through ``/proc/self/clear_refs``) above its resident
set before the step, with glibc told to serve large blocks by mmap and free heap pages trimmed first,
so the resident set tracks live tensors. Peak memory of a step = the model's parameter bytes + that
peak increase (activations and KV cache), comparable across devices.
"""

from __future__ import annotations

import ctypes
import inspect
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from speechllm_redundancy.errors import UserError
from speechllm_redundancy.layers import decoder_stack
from speechllm_redundancy.pruning import prune_block

DEFAULT_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


# Shapes of real decoders (from their published configs), for random-init timing runs without weights.
SHAPES: dict[str, dict] = {
    "smollm2-135m": dict(arch="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         tie_word_embeddings=True),
    "llama-3.2-1b": dict(arch="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         tie_word_embeddings=True),
    "llama-3.1-8b": dict(arch="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         tie_word_embeddings=False),
    "qwen2.5-0.5b": dict(arch="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(arch="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True),
    "qwen2.5-7b": dict(arch="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                       tie_word_embeddings=False),
}


def _no_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers 5.x
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def random_decoder(shape: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                   seed: int = 0) -> nn.Module:
    """A random-init causal LM with the shape of a real one (timing and memory do not need weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if shape not in SHAPES:
        raise UserError(f"unknown decoder shape {shape!r}; choose one of {', '.join(SHAPES)}.")
    spec = dict(SHAPES[shape])
    arch = spec.pop("arch")
    if arch == "llama":
        config_cls, model_cls = LlamaConfig, LlamaForCausalLM
    else:
        config_cls, model_cls = Qwen2Config, Qwen2ForCausalLM
    config = config_cls(max_position_embeddings=32768, **spec)
    with torch.device(device), _no_init():  # HF's per-module init is slow on CPU; fill directly
        model = model_cls._from_config(config, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)
    model.tie_weights()
    return model.eval()


# --- memory ------------------------------------------------------------------------------------------


def _proc_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def _release_free_heap() -> bool:
    """Make the resident set track live memory: glibc serves blocks ≥ 64 KiB by mmap (no dynamic raise
    of the threshold), and free heap pages are handed back now, so reusing them later counts again."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
    libc.malloc_trim(0)
    return True


class PeakMemory:
    """Context manager: ``.bytes`` = peak memory above the level at entry, for ``device``.

    ``.method`` says how it was measured ("cuda_max_allocated", "cpu_peak_rss" or "unavailable",
    where ``.bytes`` is None).
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.bytes: int | None = None
        self.method = "unavailable"

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda_max_allocated"
        elif self.device.type == "cpu" and _CLEAR_REFS.exists():
            _release_free_heap()
            try:
                _CLEAR_REFS.write_text("5")  # reset VmHWM to the current resident set
                self._base = _proc_kib("VmRSS")
                self.method = "cpu_peak_rss"
            except OSError:
                self.method = "unavailable"
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            self.bytes = max(0, torch.cuda.max_memory_allocated(self.device) - self._base)
        elif self.method == "cpu_peak_rss":
            self.bytes = max(0, _proc_kib("VmHWM") - self._base)


def parameter_bytes(model: nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def cache_bytes(cache) -> int:
    """Bytes held by a transformers KV cache (keys and values of every layer)."""
    total = 0
    for layer in getattr(cache, "layers", []) or []:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


# --- ideal saving from FLOP counting ----------------------------------------------------------------


def layer_flops(model: nn.Module, context: float) -> float:
    """Forward FLOPs of one decoder layer per token attending to ``context`` positions."""
    layer = decoder_stack(model).layers[0]
    linear = sum(m.weight.numel() for m in layer.modules() if isinstance(m, nn.Linear))
    cfg = decoder_stack(model).config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attention = 2 * 2 * context * cfg.num_attention_heads * head_dim  # q·k and p·v
    return 2.0 * linear + attention


def head_flops(model: nn.Module) -> float:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return 2.0 * head.weight.numel() if head is not None else 0.0


def ideal_saving(model: nn.Module, removed: int, *, phase: str, prompt_tokens: int,
                 new_tokens: int = 1) -> float:
    """Share of a phase's FLOPs ("prefill" or "decode") that removing ``removed`` layers takes away."""
    num_layers = len(decoder_stack(model).layers)
    if phase == "prefill":  # every prompt token through the layers; the head on the last one only
        layers = prompt_tokens * layer_flops(model, prompt_tokens / 2)
        head = head_flops(model)
    elif phase == "decode":  # one token per step, the head every step
        layers = layer_flops(model, prompt_tokens + new_tokens / 2)
        head = head_flops(model)
    else:
        raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}")
    return removed * layers / (num_layers * layers + head)


# --- timing ------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_kwargs(model: nn.Module) -> tuple[str, bool]:
    params = inspect.signature(model.forward).parameters
    cache_name = "cache" if "cache" in params else "past_key_values"
    return cache_name, "logits_to_keep" in params


def greedy_run(model: nn.Module, input_ids: torch.Tensor, new_tokens: int, device: torch.device) -> dict:
    """One prefill + ``new_tokens - 1`` cached greedy steps; seconds and peak memory of each phase."""
    from transformers import DynamicCache

    cache_name, keep = _forward_kwargs(model)
    extra = {"logits_to_keep": 1} if keep else {}
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        _sync(device)
        with PeakMemory(device) as prefill_mem:
            start, cpu = time.perf_counter(), time.process_time()
            out = model(input_ids=input_ids, use_cache=True, **{cache_name: cache}, **extra)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            _sync(device)
            prefill_s, prefill_cpu_s = time.perf_counter() - start, time.process_time() - cpu
        del out
        tokens = [token]
        with PeakMemory(device) as decode_mem:
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(new_tokens - 1):
                out = model(input_ids=token, use_cache=True, **{cache_name: cache}, **extra)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(token)
            _sync(device)
            decode_s, decode_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    return {"prefill_s": prefill_s, "decode_s": decode_s, "prefill_cpu_s": prefill_cpu_s,
            "decode_cpu_s": decode_cpu_s, "prefill_mem": prefill_mem, "decode_mem": decode_mem,
            "kv_cache_bytes": cache_bytes(cache), "tokens": torch.cat(tokens, dim=1)}


def measure_efficiency(
    model: nn.Module,
    fractions: Iterable[float] = DEFAULT_FRACTIONS,
    *,
    path: Mapping[int, int] | None = None,
    batch_size: int = 1,
    prompt_tokens: int = 256,
    new_tokens: int = 32,
    repeats: int = 3,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Prefill / greedy-decoding wall-clock and peak memory of ``model`` pruned by each fraction of layers.

    For fraction f, n = round(f·L) layers are removed, starting at ``path[n]`` (an optimal path) or, by
    default, the block that ends just before the last layer (any block costs the same). Returns one row
    per fraction with measured times, savings relative to the unpruned row, the ideal savings and their
    ratio (target ≥ 0.9), and memory (parameter bytes, KV cache bytes, peak bytes of each phase).
    The model is moved to ``device`` (default: where it is); each row measures its own copy (the
    unpruned row too), made one at a time, so at most two models are on the device at once.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device)
    num_layers = len(decoder_stack(model).layers)
    sizes = sorted({round(f * num_layers) for f in fractions} | {0})
    if sizes[-1] >= num_layers:
        raise UserError(f"cannot remove {sizes[-1]} of {num_layers} layers: keep fractions below 1.")
    if new_tokens < 2 or prompt_tokens < 1 or repeats < 1:
        raise UserError("need prompt_tokens ≥ 1, new_tokens ≥ 2 and repeats ≥ 1.")
    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, prompt_tokens), generator=gen).to(device)
    rows = []
    for size in tqdm(sizes, desc="efficiency", unit="model", disable=not progress):
        start = (path or {}).get(size, num_layers - size - 1) if size else 0
        # a fresh copy for every row, the unpruned one too: on an H100 the original object of an 8B model
        # decoded ~25% slower than its exact deep copy (prefill alike), which would inflate every saving
        pruned = prune_block(model, start, size).eval()
        greedy_run(pruned, ids[:, : min(8, prompt_tokens)], 2, device)  # warm-up (kernels, allocator)
        runs = [greedy_run(pruned, ids, new_tokens, device) for _ in range(repeats)]
        best = min(runs, key=lambda r: r["prefill_s"] + r["decode_s"])
        weights = parameter_bytes(pruned)
        peaks = {}
        for phase in ("prefill", "decode"):
            values = [r[f"{phase}_mem"].bytes for r in runs]
            peaks[phase] = None if None in values else weights + max(values)

        rows.append({
            "removed": size, "layers": num_layers - size, "start": start,
            "fraction": size / num_layers,
            "prefill_s": min(r["prefill_s"] for r in runs),
            "decode_s": min(r["decode_s"] for r in runs),
            "prefill_cpu_s": min(r["prefill_cpu_s"] for r in runs),
            "decode_cpu_s": min(r["decode_cpu_s"] for r in runs),
            "ideal_prefill_saving": ideal_saving(model, size, phase="prefill", prompt_tokens=prompt_tokens),
            "ideal_decode_saving": ideal_saving(model, size, phase="decode", prompt_tokens=prompt_tokens,
                                                new_tokens=new_tokens),
            "parameter_bytes": weights, "kv_cache_bytes": best["kv_cache_bytes"],
            "prefill_peak_bytes": peaks["prefill"], "decode_peak_bytes": peaks["decode"],
            "memory_method": best["prefill_mem"].method,
        })
        del pruned, runs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    frame = pd.DataFrame(rows)
    base = frame.iloc[0]
    for phase in ("prefill", "decode"):
        ideal = frame[f"ideal_{phase}_saving"]
        frame[f"{phase}_saving"] = 1 - frame[f"{phase}_s"] / base[f"{phase}_s"]
        frame[f"{phase}_vs_ideal"] = (frame[f"{phase}_saving"] / ideal).where(ideal > 0)
        frame[f"{phase}_cpu_saving"] = 1 - frame[f"{phase}_cpu_s"] / base[f"{phase}_cpu_s"]
        frame[f"{phase}_cpu_vs_ideal"] = (frame[f"{phase}_cpu_saving"] / ideal).where(ideal > 0)
    frame["decode_tokens_per_s"] = batch_size * (new_tokens - 1) / frame["decode_s"]
    frame["prefill_tokens_per_s"] = batch_size * prompt_tokens / frame["prefill_s"]
    return frame
