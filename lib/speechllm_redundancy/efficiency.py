"""What pruning buys: wall-clock and peak memory of a decoder and its pruned versions, against the ideal.

Two measurements, kept apart because they answer different questions:

- **The bare decoder** (``measure_efficiency``): the causal LM alone on a random prompt — what its layers
  cost, with nothing else in the way; every fraction of a profile is cheap to time.
- **The whole SpeechLLM** (``measure_speech_llm``): real test utterances through the encoder (from audio,
  not cached features), the projector and the decoder — prefill, then greedy decoding — the paper's
  claim. The encoder and projector are not pruned, so the saving is smaller.

The *ideal* saving of removing n of L layers is the removed share of the decoder's compute, from FLOP
counting: every decoder layer costs the same (its linear weights, 2 FLOPs per weight per token, plus
attention over the context), while the LM head is not pruned. Prefill computes the head for the last
position only (as ``generate`` does), so its ideal is ≈ n/L; decoding pays the head every token, so its
ideal is a little lower. For the whole SpeechLLM the ideal keeps the unpruned model's measured encoder
time and shrinks its measured prefill and decoding times by their ideals. The *ideal peak memory* is the
unpruned peak less the removed layers' weights and KV cache: what pruning would reach if nothing else
moved.

Timing: a greedy loop with a KV cache — one prefill forward, then one forward per new token, the
work ``generate`` does minus its bookkeeping — repeated; the **median** over repeats is reported, with the
fastest and slowest repeat, and a saving with its range over the repeats (``saving_range``: on a machine
shared with other jobs one run can be a third slower than the next). The process's CPU time is recorded
beside the wall-clock for the bare decoder: on a shared CPU it tracks the work done more steadily
(``*_cpu_*`` columns).

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
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from speechllm_redundancy.decoding import cache_kwarg
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.layers import decoder_stack
from speechllm_redundancy.pruning import prune_block

DEFAULT_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
TIMING_FORMAT = 2  # in the cached results' keys: 2 = medians with spreads (1 kept the fastest repeat only)
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")

# Claim 7 as published: Llama-3.1-8B with 40 % of its decoder layers removed (13 of 32).
PAPER_FRACTION = 0.4
PAPER_SAVING = 0.35  # wall-clock
PAPER_PEAK_GIB = (15.72, 10.37)  # peak GPU memory, unpruned → pruned
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


def _shape_config(shape: str):
    """(model class, config) of a named shape from SHAPES."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if shape not in SHAPES:
        raise UserError(f"unknown decoder shape {shape!r}; choose one of {', '.join(SHAPES)}.")
    spec = dict(SHAPES[shape])
    arch = spec.pop("arch")
    llama = arch == "llama"
    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if llama else (Qwen2Config, Qwen2ForCausalLM)
    return model_cls, config_cls(max_position_embeddings=32768, **spec)


def random_decoder(shape: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                   seed: int = 0) -> nn.Module:
    """A random-init causal LM with the shape of a real one (timing and memory do not need weights)."""
    model_cls, config = _shape_config(shape)
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


def shape_skeleton(shape: str) -> nn.Module:
    """A decoder of a named shape on the meta device: parameter counts and FLOPs of models too large to
    build here (the paper's 8B), without memory."""
    model_cls, config = _shape_config(shape)
    with torch.device("meta"), _no_init():
        return model_cls._from_config(config)


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


def ideal_saving(model: nn.Module, removed: int, *, phase: str, prompt_tokens: float,
                 new_tokens: float = 1) -> float:
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


def ideal_peak_bytes(base_peak: float | None, removed_parameter_bytes: float,
                     removed_cache_bytes: float = 0.0) -> float | None:
    """The unpruned peak less what the removed layers held (weights and KV cache): the peak pruning would
    reach if activations and everything outside the removed layers stayed as they were."""
    if base_peak is None or pd.isna(base_peak):
        return None
    return float(base_peak) - removed_parameter_bytes - removed_cache_bytes


def paper_ideal_peak_ratio() -> float:
    """The ideal peak ratio of claim 7's own setting: 15.72 GiB less the weights of 13 of Llama-3.1-8B's
    32 layers in bfloat16 (its KV cache left out: the paper gives no context length), over 15.72 GiB.
    ≈ 0.66, the paper's measured 10.37 / 15.72: the paper's pruned model saved what its layers held."""
    model = shape_skeleton("llama-3.1-8b")
    layers = decoder_stack(model).layers
    removed = round(PAPER_FRACTION * len(layers))
    per_layer = sum(p.numel() for p in layers[0].parameters()) * 2  # bfloat16
    base = PAPER_PEAK_GIB[0] * 2**30
    return ideal_peak_bytes(base, removed * per_layer) / base


# --- timing ------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Wall-clock and process CPU seconds of a block (``.wall``, ``.cpu``), the device synchronised at both
    ends so queued GPU work is counted where it was issued."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> _Clock:
        _sync(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        _sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


def _greedy_step(model: nn.Module, cache):
    """``step(**inputs)``: one cached forward of ``model`` returning the greedy next token (B, 1). The
    keyword names are looked up once, not per token (per-token overhead would dilute every saving)."""
    keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    fixed = {"use_cache": True, cache_kwarg(model): cache, **({"logits_to_keep": 1} if keep else {})}

    def step(**inputs) -> torch.Tensor:
        return model(**inputs, **fixed).logits[:, -1].argmax(-1, keepdim=True)

    return step


def _decode(step, token: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """``token`` then ``steps`` greedy tokens, each fed back through the cache."""
    tokens = [token]
    for _ in range(steps):
        token = step(input_ids=token)
        tokens.append(token)
    return tokens


def _new_cache(model: nn.Module):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def greedy_run(model: nn.Module, input_ids: torch.Tensor, new_tokens: int, device: torch.device) -> dict:
    """One prefill + ``new_tokens - 1`` cached greedy steps; seconds and peak memory of each phase."""
    cache = _new_cache(model)
    step = _greedy_step(model, cache)
    with torch.inference_mode():
        with PeakMemory(device) as prefill_mem, _Clock(device) as prefill:
            token = step(input_ids=input_ids)
        with PeakMemory(device) as decode_mem, _Clock(device) as decode:
            tokens = _decode(step, token, new_tokens - 1)
    return {"prefill_s": prefill.wall, "decode_s": decode.wall, "prefill_cpu_s": prefill.cpu,
            "decode_cpu_s": decode.cpu, "prefill_mem": prefill_mem, "decode_mem": decode_mem,
            "kv_cache_bytes": cache_bytes(cache), "tokens": torch.cat(tokens, dim=1)}


def _sizes(fractions: Iterable[float], num_layers: int) -> list[int]:
    """Layers removed per fraction (rounded), 0 first, each once."""
    sizes = sorted({round(f * num_layers) for f in fractions} | {0})
    if sizes[-1] >= num_layers:
        raise UserError(f"cannot remove {sizes[-1]} of {num_layers} layers: keep fractions below 1.")
    return sizes


def _block_start(size: int, num_layers: int, path: Mapping[int, int] | None) -> int:
    """Where the removed block starts: ``path[size]`` or the block that ends just before the last layer
    (every block of one size costs the same)."""
    return (path or {}).get(size, num_layers - size - 1) if size else 0


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, minimum and maximum of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def saving_range(base: Sequence[float], pruned: Sequence[float]) -> tuple[float, float]:
    """The range of the saving ``1 - pruned / base`` over every pairing of an unpruned and a pruned repeat:
    slowest pruned against fastest unpruned, to fastest pruned against slowest unpruned. Pairing repeats
    one to one would be tighter, and too tight on a shared machine: with two or three repeats the paired
    savings of a tiny model agreed within 3 points while a phase that pruning leaves alone (the encoder)
    "saved" 18 to 38 %."""
    return 1 - max(pruned) / min(base), 1 - min(pruned) / max(base)


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
    """Prefill / greedy-decoding wall-clock and peak memory of the bare decoder ``model`` on a random prompt,
    pruned by each fraction of layers.

    For fraction f, n = round(f·L) layers are removed, starting at ``path[n]`` (an optimal path) or, by
    default, the block that ends just before the last layer (any block costs the same). Returns one row
    per fraction: median times over ``repeats`` with the fastest and slowest (``*_min_s``, ``*_max_s``),
    savings of the medians relative to the unpruned row with their range over the repeats
    (``saving_range``: ``*_saving_low`` / ``*_saving_high``), the ideal savings and the
    ratio (target ≥ 0.9), and memory (parameter bytes, KV cache bytes, peak bytes of each phase, the ideal
    decoding peak). The model is moved to ``device`` (default: where it is); each row measures its own
    copy (the unpruned row too), made one at a time, so at most two models are on the device at once.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device)
    num_layers = len(decoder_stack(model).layers)
    sizes = _sizes(fractions, num_layers)
    if new_tokens < 2 or prompt_tokens < 1 or repeats < 1:
        raise UserError("need prompt_tokens ≥ 1, new_tokens ≥ 2 and repeats ≥ 1.")
    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, prompt_tokens), generator=gen).to(device)
    rows, times = [], {}
    for size in tqdm(sizes, desc="efficiency", unit="model", disable=not progress):
        start = _block_start(size, num_layers, path)
        # a fresh copy for every row, the unpruned one too: on an H100 the original object of an 8B model
        # decoded ~25% slower than its exact deep copy (prefill alike), which would inflate every saving
        pruned = prune_block(model, start, size).eval()
        greedy_run(pruned, ids[:, : min(8, prompt_tokens)], 2, device)  # warm-up (kernels, allocator)
        runs = [greedy_run(pruned, ids, new_tokens, device) for _ in range(repeats)]
        weights = parameter_bytes(pruned)
        row = {"removed": size, "layers": num_layers - size, "start": start, "fraction": size / num_layers,
               "repeats": repeats}
        for phase in ("prefill", "decode"):
            times[size, phase] = [r[f"{phase}_s"] for r in runs]
            s = spread(times[size, phase])
            row.update({f"{phase}_s": s["median"], f"{phase}_min_s": s["min"], f"{phase}_max_s": s["max"],
                        f"{phase}_cpu_s": statistics.median(r[f"{phase}_cpu_s"] for r in runs)})
            values = [r[f"{phase}_mem"].bytes for r in runs]
            row[f"{phase}_peak_bytes"] = None if None in values else weights + max(values)
        row.update({
            "ideal_prefill_saving": ideal_saving(model, size, phase="prefill", prompt_tokens=prompt_tokens),
            "ideal_decode_saving": ideal_saving(model, size, phase="decode", prompt_tokens=prompt_tokens,
                                                new_tokens=new_tokens),
            "parameter_bytes": weights, "kv_cache_bytes": runs[0]["kv_cache_bytes"],
            "memory_method": runs[0]["prefill_mem"].method,
        })
        rows.append(row)
        del pruned, runs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    frame = pd.DataFrame(rows)
    base = frame.iloc[0]
    for phase in ("prefill", "decode"):
        ideal = frame[f"ideal_{phase}_saving"]
        frame[f"{phase}_saving"] = 1 - frame[f"{phase}_s"] / base[f"{phase}_s"]
        ranges = [saving_range(times[0, phase], times[size, phase]) for size in sizes]
        frame[f"{phase}_saving_low"], frame[f"{phase}_saving_high"] = zip(*ranges)
        frame[f"{phase}_vs_ideal"] = (frame[f"{phase}_saving"] / ideal).where(ideal > 0)
        frame[f"{phase}_cpu_saving"] = 1 - frame[f"{phase}_cpu_s"] / base[f"{phase}_cpu_s"]
        frame[f"{phase}_cpu_vs_ideal"] = (frame[f"{phase}_cpu_saving"] / ideal).where(ideal > 0)
    frame["ideal_decode_peak_bytes"] = [
        ideal_peak_bytes(base["decode_peak_bytes"], base["parameter_bytes"] - r["parameter_bytes"],
                         base["kv_cache_bytes"] - r["kv_cache_bytes"]) for _, r in frame.iterrows()]
    frame["decode_tokens_per_s"] = batch_size * (new_tokens - 1) / frame["decode_s"]
    frame["prefill_tokens_per_s"] = batch_size * prompt_tokens / frame["prefill_s"]
    return frame


# --- the whole SpeechLLM -----------------------------------------------------------------------------

PHASES = ("encode", "prefill", "decode", "total")


def speech_llm_run(slam, encoder, wave: torch.Tensor, task: str, new_tokens: int,
                   device: torch.device) -> dict:
    """One utterance through the whole SpeechLLM, batch 1: seconds of ``encode`` (the encoder on the waveform,
    the projector, the prompt's embeddings), ``prefill`` and ``decode`` (``new_tokens - 1`` cached greedy
    steps), their ``total``, the peak memory increase of the whole (``peak``: None where not measurable),
    the KV cache it ended with and the tokens it wrote."""
    cache = _new_cache(slam.llm)
    step = _greedy_step(slam.llm, cache)
    with torch.inference_mode(), PeakMemory(device) as mem:
        with _Clock(device) as encode:
            embeds = slam.embed_batch(encoder.encode([wave]), task, padding_side="left")["inputs_embeds"]
        with _Clock(device) as prefill:
            token = step(inputs_embeds=embeds)
        with _Clock(device) as decode:
            tokens = _decode(step, token, new_tokens - 1)
    return {"encode": encode.wall, "prefill": prefill.wall, "decode": decode.wall,
            "total": encode.wall + prefill.wall + decode.wall, "peak": mem.bytes, "method": mem.method,
            "kv_cache_bytes": cache_bytes(cache), "prompt_tokens": embeds.shape[1], "tokens": len(tokens)}


def _speech_inputs(slam, manifest, task: str, limit: int) -> tuple[list[torch.Tensor], list[int]]:
    """Waveforms of the first ``limit`` utterances (read before any timing: the disk is not the model) and
    the tokens each is decoded for: its reference's target tokens, stop included — what a perfect model
    writes, the same work for every pruned copy whatever it would have written."""
    from speechllm_redundancy.data.audio import load_audio
    from speechllm_redundancy.data.manifest import read_manifest, targets

    utts = read_manifest(manifest)[:limit]
    if not utts:
        raise UserError(f"{manifest} has no utterances to time.")
    refs = targets(utts, task, manifest)
    lengths = [max(2, len(slam.layout.target_ids(t, slam.config.max_target_tokens, task))) for t in refs]
    return [load_audio(u.audio) for u in utts], lengths


def _repeat_totals(runs: list[dict]) -> dict[str, float]:
    """One repeat's seconds per phase, summed over its utterances."""
    return {phase: sum(r[phase] for r in runs) for phase in PHASES}


def measure_speech_llm(slam, manifest, fractions: Iterable[float] = (PAPER_FRACTION,), *, limit: int = 16,
                       repeats: int = 3, task: str = "asr", path: Mapping[int, int] | None = None,
                       encoder=None, device: torch.device | str | None = None,
                       progress: bool = True) -> pd.DataFrame:
    """End-to-end time and peak memory of a SlamModel and its pruned copies (``healing.prune_slam``) on the
    first ``limit`` utterances of ``manifest``, one at a time: encoder from audio, projector, prefill and
    greedy decoding of each utterance's reference length (``_speech_inputs``).

    Within each repeat every model runs every utterance in turn (the order reversed on alternate repeats),
    so a slow spell of a shared machine hits all of them alike. Per phase, a row has the median seconds over
    the repeats (summed over the utterances) with the fastest and slowest, the saving of the medians
    against the unpruned model and its range (``saving_range``: ``*_saving_low`` / ``_high``); the encode
    phase, which pruning leaves alone, shows what noise alone does to a saving. The ideal total saving keeps
    the unpruned encoder time and shrinks its prefill and decoding times by their FLOP ideals; the ideal
    peak is the unpruned peak less the removed layers' weights and KV cache. ``encoder``: a loaded
    ``SpeechEncoder`` (default: the model's own).
    """
    from speechllm_redundancy.encoders import SpeechEncoder
    from speechllm_redundancy.healing import prune_slam

    if repeats < 1 or limit < 1:
        raise UserError("need repeats ≥ 1 and limit ≥ 1 utterance.")
    device = torch.device(device) if device is not None else slam.device
    if encoder is None:
        encoder = SpeechEncoder.from_name(slam.config.encoder, whisper_window=slam.config.whisper_window,
                                          device=str(device))
    waves, lengths = _speech_inputs(slam, manifest, task, limit)
    num_layers = len(decoder_stack(slam.llm).layers)
    sizes = _sizes(fractions, num_layers)
    starts = {size: _block_start(size, num_layers, path) for size in sizes}
    models = {size: prune_slam(slam, starts[size], size).to(device).eval() for size in sizes}  # fresh copies
    for model in models.values():
        speech_llm_run(model, encoder, waves[0], task, 2, device)  # warm-up (kernels, allocator)
    runs: dict[int, list[list[dict]]] = {size: [] for size in sizes}
    for r in tqdm(range(repeats), desc="speech LLM timing", unit="repeat", disable=not progress):
        for size in sizes if r % 2 == 0 else sizes[::-1]:
            runs[size].append([speech_llm_run(models[size], encoder, w, task, n, device)
                               for w, n in zip(waves, lengths)])
    frame = pd.DataFrame([_speech_llm_row(models, size, starts[size], runs, encoder, lengths)
                          for size in sizes])
    return _add_ideals(frame, models[0].llm, runs[0])


def _speech_llm_row(models, size: int, start: int, runs, encoder, lengths) -> dict:
    totals = [_repeat_totals(rep) for rep in runs[size]]
    base = [_repeat_totals(rep) for rep in runs[0]]
    num_layers = len(decoder_stack(models[0].llm).layers)
    row = {"removed": size, "layers": num_layers - size, "start": start, "fraction": size / num_layers,
           "utterances": len(lengths), "repeats": len(totals), "new_tokens": sum(lengths)}
    for phase in PHASES:
        times, base_times = [t[phase] for t in totals], [b[phase] for b in base]
        s = spread(times)
        low, high = saving_range(base_times, times)
        row.update({f"{phase}_s": s["median"], f"{phase}_min_s": s["min"], f"{phase}_max_s": s["max"],
                    f"{phase}_saving": 1 - s["median"] / statistics.median(base_times),
                    f"{phase}_saving_low": low, f"{phase}_saving_high": high})
    peaks = [r["peak"] for rep in runs[size] for r in rep]
    weights = parameter_bytes(models[size]) + parameter_bytes(encoder.model)
    row.update({"parameter_bytes": weights,
                "kv_cache_bytes": max(r["kv_cache_bytes"] for rep in runs[size] for r in rep),
                "peak_bytes": None if None in peaks else weights + max(peaks),
                "memory_method": runs[size][0][0]["method"]})
    return row


def _add_ideals(frame: pd.DataFrame, llm: nn.Module, base_runs: list[list[dict]]) -> pd.DataFrame:
    """Ideal savings per phase (FLOPs at the utterances' mean prompt and output lengths), the ideal total
    (the unpruned encoder time kept) and the ideal peak."""
    flat = [r for rep in base_runs for r in rep]
    prompt = statistics.mean(r["prompt_tokens"] for r in flat)
    new = frame.loc[0, "new_tokens"] / frame.loc[0, "utterances"]
    base = frame.iloc[0]
    frame["ideal_prefill_saving"] = [ideal_saving(llm, n, phase="prefill", prompt_tokens=prompt)
                                     for n in frame["removed"]]
    frame["ideal_decode_saving"] = [ideal_saving(llm, n, phase="decode", prompt_tokens=prompt, new_tokens=new)
                                    for n in frame["removed"]]
    frame["ideal_total_saving"] = (frame["ideal_prefill_saving"] * base["prefill_s"]
                                   + frame["ideal_decode_saving"] * base["decode_s"]) / base["total_s"]
    frame["ideal_peak_bytes"] = [
        ideal_peak_bytes(base["peak_bytes"], base["parameter_bytes"] - r["parameter_bytes"],
                         base["kv_cache_bytes"] - r["kv_cache_bytes"]) for _, r in frame.iterrows()]
    return frame


# --- cached measurements (what the chapter reads) ----------------------------------------------------


def _cached_frame(folder: str, key: str, compute) -> pd.DataFrame:
    from speechllm_redundancy.cache import cached_json
    from speechllm_redundancy.paths import artifact_path

    records = cached_json(artifact_path("efficiency", folder, f"{key}.json"),
                          lambda: compute().to_dict(orient="records"))
    return pd.DataFrame(records)


def decoder_dtype(device: str | torch.device) -> torch.dtype:
    """The bare decoders' dtype: bfloat16 on CUDA (as the paper's GPU runs), float32 on CPU."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def cached_efficiency(llm: str, fractions: Iterable[float] = DEFAULT_FRACTIONS, *, repeats: int = 3,
                      device: str = "cpu", seed: int = 0) -> pd.DataFrame:
    """``measure_efficiency`` of the bare decoder ``llm`` (zoo name, directory or hub id), stored under a key
    of its inputs: a re-run of the chapter reads the timing made before instead of timing again."""
    from speechllm_redundancy.cache import key_of
    from speechllm_redundancy.zoo import load_causal_lm

    dtype = decoder_dtype(device)
    fractions = list(fractions)

    def compute() -> pd.DataFrame:
        model, _ = load_causal_lm(llm, dtype=dtype)
        return measure_efficiency(model, fractions, repeats=repeats, device=device, seed=seed)

    key = key_of(TIMING_FORMAT, llm, str(dtype), fractions, repeats, device, seed)
    return _cached_frame("decoder", key, compute).assign(model=llm)


def cached_speech_llm_efficiency(slam, model_key: str, manifest,
                                 fractions: Iterable[float] = (PAPER_FRACTION,), *, limit: int = 16,
                                 repeats: int = 3, task: str = "asr", device: str = "cpu") -> pd.DataFrame:
    """``measure_speech_llm`` of a trained SLAM model (``model_key``: its training key, e.g. ``SlamRun.key``),
    stored under a key of the model, the utterances and the settings."""
    from speechllm_redundancy.cache import key_of

    fractions = list(fractions)
    key = key_of(TIMING_FORMAT, model_key, str(Path(manifest).resolve()), limit, task, fractions, repeats,
                 device)
    return _cached_frame("speech_llm", key, lambda: measure_speech_llm(
        slam, manifest, fractions, limit=limit, repeats=repeats, task=task, device=device))
