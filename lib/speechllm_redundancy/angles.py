"""Angular distance between decoder layers: which blocks of layers barely change the last token's state.

For a decoder with L layers, h^l is the output of layer l (h^0 the input to layer 0, i.e. the embeddings
or the speech+prompt ``inputs_embeds``), taken at the **last non-padding token** of each row and **before
the final norm**. The distance of a block of n layers starting at l is

    D(l, n) = mean over inputs of arccos(cos(h^l, h^(l+n))) / pi,   0 <= l, n >= 1, l + n <= L

(Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers"); the pruning path is
l*(n) = argmin_l D(l, n) for n = 1 … L-1.

Why hooks and not ``output_hidden_states``: the latter keeps every token's state of every layer (memory
grows with L × tokens) and returns the last layer *after* the final norm, which silently inflates the
distance of every block ending at L. Here a forward hook on each decoder layer gathers one vector per row
as the layer finishes, so memory is O(L × width) per row, whatever the sequence length, and the forward
runs through the decoder stack only (no LM head, no KV cache).

Beside it, ShortGPT's Block Influence of each layer (1 − cos between its input and output, averaged over
all non-padding tokens) is accumulated in the same pass, as a second, per-layer redundancy metric.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from speechllm_redundancy.cache import atomic_path, atomic_write_json, cached_json
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.layers import decoder_stack

# keys of a batch that reach the decoder forward; anything else (labels, ids, …) is ignored
_FORWARD_KEYS = ("input_ids", "inputs_embeds", "attention_mask", "position_ids")


@dataclass
class AngleMatrix:
    """Mean angular distances of every block of a decoder, and the per-layer Block Influence.

    ``distances[l, n]`` = D(l, n), shape (L, L + 1): row = start layer l (0 … L-1), column = block size
    n (0 … L). Column 0 and every cell with l + n > L are NaN (undefined), so a heatmap of the array
    shows exactly the measured triangle. ``count`` = number of sequences averaged (None when read back
    from a CSV). ``block_influence[i]`` = ShortGPT BI of layer i (None if not measured).
    """

    distances: np.ndarray
    count: int | None = None
    block_influence: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        self.distances = np.asarray(self.distances, dtype=np.float64)
        rows, cols = self.distances.shape
        if cols != rows + 1:
            raise ValueError(f"distances must have shape (L, L + 1), indexed [l, n]; got {(rows, cols)}")
        if self.block_influence is not None:
            self.block_influence = np.asarray(self.block_influence, dtype=np.float64)

    @property
    def num_layers(self) -> int:
        return self.distances.shape[0]

    def distance(self, start: int, size: int) -> float:
        """D(start, size)."""
        return float(self.distances[start, size])

    def optimal_path(self) -> dict[int, int]:
        """{n: l*(n)} for n = 1 … L-1 (ties go to the smaller l)."""
        return optimal_path(self.distances)

    def removed_layers(self, size: int) -> list[int]:
        """The layers the path removes for block size ``size``: l*(n) … l*(n)+n-1."""
        start = self.optimal_path()[size]
        return list(range(start, start + size))

    def to_frame(self) -> pd.DataFrame:
        """Long format, one row per defined cell: columns l, n, distance."""
        ls, ns = np.nonzero(~np.isnan(self.distances))
        frame = pd.DataFrame({"l": ls, "n": ns, "distance": self.distances[ls, ns]})
        return frame.sort_values(["n", "l"], ignore_index=True)

    def to_csv(self, path: str | Path) -> Path:
        """Write the columns l, n, distance (atomically)."""
        with atomic_path(path) as tmp:
            self.to_frame().to_csv(tmp, index=False, float_format="%.10g")
        return Path(path)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, count: int | None = None) -> AngleMatrix:
        missing = {"l", "n", "distance"} - set(frame.columns)
        if missing:
            raise UserError(f"angle table lacks the column(s) {sorted(missing)}; it needs l, n, distance.")
        num_layers = int((frame["l"] + frame["n"]).max())
        distances = np.full((num_layers, num_layers + 1), np.nan)
        distances[frame["l"].to_numpy(int), frame["n"].to_numpy(int)] = frame["distance"].to_numpy(float)
        return cls(distances, count=count)

    @classmethod
    def from_csv(cls, path: str | Path) -> AngleMatrix:
        if not Path(path).is_file():
            raise UserError(f"no angle table at {path}: write one with `angles … --output {path}`.")
        return cls.from_frame(pd.read_csv(path))

    def to_json(self) -> dict:
        """Full-fidelity JSON value (distances, count, block influence), for caching."""
        def clean(a):  # JSON has no NaN
            return [[None if math.isnan(v) else v for v in row] for row in np.atleast_2d(a)]

        bi = None if self.block_influence is None else clean(self.block_influence)[0]
        return {"distances": clean(self.distances), "count": self.count, "block_influence": bi}

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> AngleMatrix:
        return cls.from_json(json.loads(Path(path).read_text()))

    @classmethod
    def from_json(cls, blob: dict) -> AngleMatrix:
        distances = np.array([[np.nan if v is None else v for v in row] for row in blob["distances"]])
        return cls(distances, count=blob.get("count"), block_influence=blob.get("block_influence"))


def cached_angles(path: str | Path, compute: Callable[[], AngleMatrix]) -> AngleMatrix:
    """The AngleMatrix saved at ``path``, or ``compute()`` saved there (atomically) when absent.

    Name ``path`` by a key of the inputs (``cache.key_of(model, data, …)``) so a changed input misses.
    Stored through ``cache.cached_json``: sealed, recomputed when damaged, computed once by concurrent runs.
    """
    computed: list[AngleMatrix] = []

    def fresh() -> dict:
        computed.append(compute())
        return computed[0].to_json()

    blob = cached_json(path, fresh)
    return computed[0] if computed else AngleMatrix.from_json(blob)


def optimal_path(distances: np.ndarray) -> dict[int, int]:
    """l*(n) = argmin_l D(l, n) for n = 1 … L-1, from an array indexed [l, n] (NaN = undefined)."""
    distances = np.asarray(distances, dtype=np.float64)
    num_layers = distances.shape[0]
    path = {}
    for n in range(1, num_layers):
        column = distances[: num_layers - n + 1, n]
        if np.isnan(column).all():
            continue
        path[n] = int(np.nanargmin(column))
    return path


# --- comparisons between two matrices / paths -------------------------------------------------------


def _as_path(x: AngleMatrix | Mapping[int, int]) -> dict[int, int]:
    return x.optimal_path() if isinstance(x, AngleMatrix) else {int(k): int(v) for k, v in x.items()}


def mean_abs_difference(a: AngleMatrix, b: AngleMatrix) -> float:
    """Mean |D_a(l, n) − D_b(l, n)| over the cells defined in both (same decoder depth required)."""
    if a.num_layers != b.num_layers:
        raise UserError(f"cannot compare angle matrices of {a.num_layers} and {b.num_layers} layers: "
                        "measure both on the same decoder.")
    diff = np.abs(a.distances - b.distances)
    return float(np.nanmean(diff))


def path_agreement(a: AngleMatrix | Mapping[int, int], b: AngleMatrix | Mapping[int, int]) -> float:
    """Fraction of block sizes n (present in both paths) for which l*(n) is the same."""
    pa, pb = _as_path(a), _as_path(b)
    common = sorted(set(pa) & set(pb))
    if not common:
        raise UserError("the two pruning paths share no block size: measure them on the same decoder.")
    return sum(pa[n] == pb[n] for n in common) / len(common)


def pruned_block_distance(m: AngleMatrix) -> float:
    """Mean D(l*(n), n) over the block sizes of a map's optimal path: how close the blocks it would prune
    are (the paper's number for comparing text, SLAM and LoRA maps)."""
    return float(np.mean([m.distance(start, n) for n, start in m.optimal_path().items()]))


def low_distance_share(m: AngleMatrix, threshold: float) -> float:
    """Share of a map's blocks (l, n ≥ 1) whose distance D(l, n) is at most ``threshold``: the width of its
    low-distance region, comparable across decoders of different depths."""
    values = m.distances[:, 1:]
    values = values[~np.isnan(values)]
    return float(np.mean(values <= threshold)) if values.size else float("nan")


def removed_overlap(a: AngleMatrix | Mapping[int, int],
                    b: AngleMatrix | Mapping[int, int]) -> dict[int, float]:
    """{n: Jaccard overlap of the layer sets each path removes at block size n}."""
    pa, pb = _as_path(a), _as_path(b)
    overlap = {}
    for n in sorted(set(pa) & set(pb)):
        sa, sb = set(range(pa[n], pa[n] + n)), set(range(pb[n], pb[n] + n))
        overlap[n] = len(sa & sb) / len(sa | sb)
    return overlap


def compare(a: AngleMatrix, b: AngleMatrix) -> dict[str, float]:
    """The three summary numbers the chapters quote for a pair of maps."""
    overlap = removed_overlap(a, b)
    return {
        "mean_abs_difference": mean_abs_difference(a, b),
        "path_agreement": path_agreement(a, b),
        "mean_removed_overlap": float(np.mean(list(overlap.values()))),
    }


# --- measurement -------------------------------------------------------------------------------------


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding position of each row (works for left and right padding)."""
    width = attention_mask.shape[-1]
    return width - 1 - attention_mask.flip(-1).to(torch.int32).argmax(-1)


def _hidden_of(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class _Recorder:
    """Forward hooks that gather each layer's last-token output (and its Block Influence) per batch.

    Kept lean on purpose: on a GPU a small model's forward is bound by kernel launches, so each hook does
    one ``index_select`` (the float64 cast happens once, after the forward)."""

    def __init__(self, layers: nn.ModuleList, block_influence: bool):
        self.layers = layers
        self.with_bi = block_influence
        self.flat = self.mask = None
        self.states: list[torch.Tensor | None] = [None] * (len(layers) + 1)
        self.bi_sum: list[torch.Tensor | float] = [0.0] * len(layers)
        self.bi_tokens = 0
        self.handles = []

    def __enter__(self) -> _Recorder:
        self.handles.append(self.layers[0].register_forward_pre_hook(self._input_hook, with_kwargs=True))
        for i, layer in enumerate(self.layers):
            if self.with_bi:  # needs the layer's input too
                hook = layer.register_forward_hook(self._make_bi_hook(i), with_kwargs=True)
            else:
                hook = layer.register_forward_hook(self._make_output_hook(i))
            self.handles.append(hook)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def begin(self, mask: torch.Tensor) -> None:
        self.mask = mask
        width = mask.shape[-1]
        # row r's last real token in the (B*T, D) view of a layer's output
        self.flat = torch.arange(mask.shape[0], device=mask.device) * width + last_token_index(mask)
        self.states = [None] * (len(self.layers) + 1)
        if self.with_bi:
            self.bi_tokens = self.bi_tokens + mask.sum(dtype=torch.float64)  # stays on device: no sync

    def _gather(self, hidden: torch.Tensor) -> torch.Tensor:
        # one vector per row, copied out so the all-token tensor can be freed as usual
        flat = self.flat if hidden.device == self.flat.device else self.flat.to(hidden.device)
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat)

    def _input_hook(self, module, args, kwargs):
        self.states[0] = self._gather(args[0] if args else kwargs["hidden_states"])

    def _make_output_hook(self, i: int):
        def hook(module, args, output):
            self.states[i + 1] = self._gather(_hidden_of(output))
        return hook

    def _make_bi_hook(self, i: int):
        def hook(module, args, kwargs, output):
            out = _hidden_of(output)
            self.states[i + 1] = self._gather(out)
            inp = args[0] if args else kwargs["hidden_states"]
            cos = F.cosine_similarity(inp.float(), out.float(), dim=-1)  # (B, T)
            mask = self.mask.to(cos.device, cos.dtype)
            self.bi_sum[i] = self.bi_sum[i] + ((1.0 - cos) * mask).sum(dtype=torch.float64)
        return hook

    def stacked(self, device: torch.device) -> torch.Tensor:
        """(B, L+1, D) float64 on ``device``."""
        if any(s is None for s in self.states):
            raise RuntimeError("a decoder layer did not run: is the model's forward skipping layers?")
        return torch.stack([s.to(device) for s in self.states], dim=1).to(torch.float64)


def _model_inputs(batch: Mapping[str, Any], device: torch.device,
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Validate a batch and move it to the model. Checks run where the mask is (usually the CPU), so an
    accelerator is not stalled waiting for their answers."""
    if not isinstance(batch, Mapping):
        raise UserError(f"angle batches must be dicts of tensors, got {type(batch).__name__}.")
    inputs = {k: torch.as_tensor(batch[k]) for k in _FORWARD_KEYS if batch.get(k) is not None}
    if ("input_ids" in inputs) == ("inputs_embeds" in inputs):
        raise UserError("each angle batch needs exactly one of `input_ids` (text) or `inputs_embeds` "
                        "(speech, e.g. from SlamModel.embed_batch); got keys " + ", ".join(sorted(batch)))
    ref = inputs.get("input_ids", inputs.get("inputs_embeds"))
    if ref.dim() < 2 or ref.shape[1] == 0:
        raise UserError("an angle batch holds an empty sequence: drop empty inputs before measuring.")
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = inputs["attention_mask"] = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
    if (mask.sum(-1) == 0).any():
        raise UserError("an angle batch has a row that is all padding: drop empty inputs before measuring.")
    if "position_ids" not in inputs and not bool(mask.all()):
        # padding: count positions from each row's first real token, as generate() does, so a padded row
        # gives exactly the states of the same input unpadded (left padding would shift them otherwise)
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
    if "inputs_embeds" in inputs:
        inputs["inputs_embeds"] = inputs["inputs_embeds"].to(dtype)
    return inputs


def _prepare(model: nn.Module):
    stack = decoder_stack(model)
    first = next(stack.parameters())
    dtype = first.dtype if first.is_floating_point() else torch.float32
    acc_device = first.device if first.device.type in ("cpu", "cuda") else torch.device("cpu")  # float64
    return stack, first.device, dtype, acc_device


class _EvalMode:
    """Eval mode for the duration (no dropout), then every module's own train/eval flag restored."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self):
        # a plain walk of the module tree: ``modules()`` builds every qualified name and costs milliseconds
        self.training, todo = [], [self.module]
        while todo:
            module = todo.pop()
            if module.training:
                self.training.append(module)
            todo.extend(child for child in module._modules.values() if child is not None)
        for module in self.training:
            module.training = False

    def __exit__(self, *exc):
        for module in self.training:
            module.training = True


def last_token_states(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """h^0 … h^L at the last non-padding token of each row: float64 tensor (B, L + 1, D).

    The same gathering as ``measure_angles``, for one batch (per-input analyses, tests).
    """
    stack, device, dtype, acc_device = _prepare(model)
    inputs = _model_inputs(batch, device, dtype)
    with _EvalMode(stack), _Recorder(stack.layers, False) as rec, torch.inference_mode():
        rec.begin(inputs["attention_mask"])
        stack(**inputs, use_cache=False)
        return rec.stacked(acc_device)


def measure_angles(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    *,
    progress: bool = True,
    block_influence: bool = False,
) -> AngleMatrix:
    """Run the batches through the decoder once and return D(l, n) (and Block Influence per layer).

    ``model``: any Hugging Face decoder-only LM, a PEFT-wrapped one, or an object holding one (``.llm``).
    ``batches``: dicts with ``input_ids`` or ``inputs_embeds`` plus ``attention_mask`` (left or right
    padding; ``position_ids`` optional; other keys such as ``labels`` are ignored). Only the decoder stack
    runs (no LM head, no KV cache), in eval mode under ``torch.inference_mode``; every module's
    train/eval flag is restored afterwards. ``block_influence=True`` also accumulates ShortGPT's Block
    Influence in the same pass (it reads every token of every layer: ~5–15% slower, so off by default).
    """
    stack, device, dtype, acc_device = _prepare(model)
    num_layers = len(stack.layers)
    total = torch.zeros(num_layers + 1, num_layers + 1, dtype=torch.float64, device=acc_device)
    count = 0
    with _EvalMode(stack), _Recorder(stack.layers, block_influence) as rec, torch.inference_mode():
        bar = tqdm(batches, desc="angles", unit="batch", disable=not progress,
                   total=len(batches) if hasattr(batches, "__len__") else None)
        for batch in bar:
            inputs = _model_inputs(batch, device, dtype)
            rec.begin(inputs["attention_mask"])
            stack(**inputs, use_cache=False)
            unit = F.normalize(rec.stacked(acc_device), dim=-1)  # (B, L+1, D) float64
            cos = (unit @ unit.transpose(1, 2)).clamp(-1.0, 1.0)
            total += torch.arccos(cos).sum(0) / math.pi
            count += unit.shape[0]
    if count == 0:
        raise UserError("no inputs to measure angles on: the batch stream was empty.")
    pairwise = (total / count).cpu().numpy()
    distances = np.full((num_layers, num_layers + 1), np.nan)
    for n in range(1, num_layers + 1):
        for start in range(num_layers - n + 1):
            distances[start, n] = pairwise[start, start + n]
    bi = None
    if block_influence:
        bi = np.array([float(s) for s in rec.bi_sum]) / float(rec.bi_tokens)
    return AngleMatrix(distances, count=count, block_influence=bi)


# --- CLI ---------------------------------------------------------------------------------------------


def text_batches(tokenizer, lines: list[str], *, batch_size: int = 8, max_length: int = 512,
                 chat_template: bool = False) -> list[dict[str, torch.Tensor]]:
    """Tokenise text inputs as they are (default special tokens, no chat template unless asked), padded by
    the tokenizer on its ``padding_side`` (``measure_angles`` reads each row's last real token either way).

    Inputs are sorted by length so batches carry little padding (the mean does not depend on order). A
    tokenizer without a pad token is given its end-of-text token as one: padding is masked out, so which
    token pads does not matter.
    """
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("--chat-template: this tokenizer has no chat template; drop the option.")
        lines = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                               add_generation_prompt=True) for t in lines]
    if not lines:
        return []
    options = {"add_special_tokens": not chat_template, "truncation": True, "max_length": max_length}
    lengths = [len(ids) for ids in tokenizer(list(lines), **options)["input_ids"]]
    order = sorted((i for i, n in enumerate(lengths) if n), key=lengths.__getitem__)
    borrowed = tokenizer.pad_token is None  # pad with end-of-text for these batches, leave the caller's as it was
    if borrowed:
        if tokenizer.eos_token is None:
            raise UserError("the tokenizer has neither a pad nor an end-of-text token: "
                            "set tokenizer.pad_token.")
        tokenizer.pad_token = tokenizer.eos_token
    try:
        batches = []
        for i in range(0, len(order), batch_size):
            chunk = [lines[j] for j in order[i:i + batch_size]]
            encoded = tokenizer(chunk, padding=True, return_tensors="pt", **options)
            batches.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    finally:
        if borrowed:
            tokenizer.pad_token = None
    return batches


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_output_file(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise UserError(f"{path} exists; choose another --output or pass --force to overwrite it.")


class SpeechBatches:
    """Batches of a SLAM model's decoder inputs (speech + prompt, no target) for ``measure_angles``.

    Each row ends at the assistant opening, where generation would start: that is the last token read.
    Features come from the shared encoder-feature cache; batches are built lazily (one in memory at a
    time) and sorted by length to limit padding.
    """

    def __init__(self, slam, manifest, *, task: str = "asr", batch_size: int = 8, limit: int | None = None):
        from speechllm_redundancy.data.manifest import read_manifest
        from speechllm_redundancy.features import cached_features

        self.slam, self.task, self.batch_size = slam, task, batch_size
        utts = read_manifest(manifest)[: limit or None]
        if not utts:
            raise UserError(f"{manifest} lists no utterances: give a manifest with at least one.")
        store = cached_features(slam.config.encoder, manifest, whisper_window=slam.config.whisper_window,
                                limit=limit or None)
        self.features = sorted((store[u.id] for u in utts), key=len)

    def __len__(self) -> int:
        return math.ceil(len(self.features) / self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.features), self.batch_size):
            yield self.slam.embed_batch(self.features[i:i + self.batch_size], self.task)


class GoldTextBatches:
    """``SpeechBatches``' twin with each utterance's transcript (as token embeddings) in the speech slot: the
    same layout, soft prompt and read position, so its map differs from the speech map only in the input."""

    def __init__(self, slam, manifest, *, task: str = "asr", batch_size: int = 8, limit: int | None = None):
        from speechllm_redundancy.data.manifest import read_manifest

        self.slam, self.task, self.batch_size = slam, task, batch_size
        utts = read_manifest(manifest)[: limit or None]
        if not utts:
            raise UserError(f"{manifest} lists no utterances: give a manifest with at least one.")
        self.texts = sorted((u.text for u in utts), key=len)

    def __len__(self) -> int:
        return math.ceil(len(self.texts) / self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.texts), self.batch_size):
            yield self.slam.embed_text_batch(self.texts[i:i + self.batch_size], self.task)


def _cmd_angles(args) -> int:
    output = Path(args.output)
    check_output_file(output, args.force)
    if args.batch_size < 1 or args.max_length < 1:
        raise UserError("--batch-size and --max-length must be at least 1.")
    device = _device(args.device)
    if args.slam:
        if not args.manifest:
            raise UserError("--slam needs --manifest <jsonl> (the utterances to measure on).")
        from speechllm_redundancy.slam import SlamModel

        model = SlamModel.from_pretrained(args.slam, device=str(device))
        batches = SpeechBatches(model, args.manifest, task=args.task, batch_size=args.batch_size)
    else:
        if not args.text:
            raise UserError("--model needs --text <file with one input per line>.")
        text = Path(args.text)
        if not text.is_file():
            raise UserError(f"--text {text}: no such file; give a text file with one input per line.")
        lines = [line for line in text.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise UserError(f"--text {text} holds no non-empty line; put one input per line.")
        from speechllm_redundancy.zoo import load_causal_lm

        model, tokenizer = load_causal_lm(args.model, DTYPES[args.dtype])
        model = model.to(device)
        batches = text_batches(tokenizer, lines, batch_size=args.batch_size, max_length=args.max_length,
                               chat_template=args.chat_template)
    result = measure_angles(model, batches)
    result.to_csv(output)
    path = result.optimal_path()
    print(f"{result.count} inputs, {result.num_layers} layers -> {output}")
    print("optimal path l*(n): " + ", ".join(f"{n}:{path[n]}" for n in sorted(path)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("angles", help="angular distances D(l, n) of decoder blocks → CSV l,n,distance",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="text mode: model name (see `models list`), hub id or local HF dir")
    source.add_argument("--slam", help="speech mode: a saved SLAM model (SlamModel.save_pretrained)")
    p.add_argument("--text", help="text mode: a file with one input per line")
    p.add_argument("--manifest", help="speech mode: a JSONL manifest of utterances")
    p.add_argument("--task", default="asr",
                   help="speech mode: the prompt (asr, ast-en-de, ast-fr-en or a literal instruction)")
    p.add_argument("--output", required=True, help="CSV to write (columns l, n, distance)")
    p.add_argument("--batch-size", type=int, default=8, help="inputs measured per forward pass")
    p.add_argument("--max-length", type=int, default=512, help="truncate text inputs to this many tokens")
    p.add_argument("--chat-template", action="store_true",
                   help="wrap each line as a user turn of the tokenizer's chat template")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                   help="text mode: dtype the model's weights are loaded in")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.set_defaults(func=_cmd_angles)
