"""Remove a block of decoder layers and leave a valid, smaller Hugging Face model.

Deleting entries of ``model.layers`` is not enough: each attention module keeps the ``layer_idx`` it was
built with and uses it to address its slot of the KV cache, and the config still says the old depth
(``num_hidden_layers``, per-layer lists such as ``layer_types``), which the cache, the causal masks and
``from_pretrained`` all read. A stale ``layer_idx`` makes cached generation read another layer's keys
(or crash); a stale config gives a checkpoint that does not reload. ``prune_block`` fixes all of them.

Numbering: removing the block (l, n) deletes layers l … l+n-1. The layer that was l+n — the *receiving
layer*, which now gets the output of layer l-1 — sits at index l afterwards (``receiving_layer``).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from torch import nn

from speechllm_redundancy.cache import atomic_path
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.layers import decoder_stack

# utterances whose angles a pruning path averages over, unless told otherwise (the paper: a validation set)
PATH_SAMPLES = 64
# config attributes holding one entry per decoder layer (sliced with the layers)
PER_LAYER_LISTS = ("layer_types", "mlp_layer_types", "kv_sharing_modes", "no_rope_layers")


def receiving_layer(start: int, *, num_layers: int | None = None) -> int:
    """Index, in the pruned model, of the layer that receives the removed block's input: ``start``.

    (It was layer ``start + size`` before pruning.) Pass the pruned model's ``num_layers`` to check that
    one exists: a block that ended at the last layer has none (the final norm receives its input).
    """
    if num_layers is not None and not 0 <= start < num_layers:
        raise UserError(f"no receiving layer: the removed block started at {start} and ended at the last "
                        f"layer (the pruned decoder has {num_layers}); heal the projector instead.")
    return start


def _stack(model: nn.Module) -> nn.Module:
    try:
        return decoder_stack(model)
    except TypeError as err:
        raise UserError(str(err)) from err


def _check_block(num_layers: int, start: int, size: int) -> None:
    if not (isinstance(start, int) and isinstance(size, int)):
        raise UserError(f"block start and size must be integers, got {start!r} and {size!r}.")
    if size < 0 or size >= num_layers:
        raise UserError(f"block size {size} is out of range for a {num_layers}-layer decoder: "
                        f"choose 0 ≤ n ≤ {num_layers - 1} (at least one layer must remain).")
    if start < 0 or start + size > num_layers:
        raise UserError(f"block start {start} with size {size} does not fit a {num_layers}-layer decoder: "
                        f"choose 0 ≤ l ≤ {num_layers - size}.")


def _update_config(config, keep: list[int], old_count: int) -> None:
    """Make ``config`` describe the kept layers, in order."""
    kept = set(keep)
    for name in PER_LAYER_LISTS:
        values = getattr(config, name, None)
        if isinstance(values, (list, tuple)) and len(values) == old_count:
            setattr(config, name, type(values)(values[i] for i in keep))
    window = getattr(config, "max_window_layers", None)
    if isinstance(window, int):  # Qwen2: layers below this index use full attention
        config.max_window_layers = sum(1 for i in keep if i < window)
    if getattr(config, "is_heterogeneous", False):  # sparse per-layer overrides keyed by layer index
        overrides = config._heterogeneity_spec.per_layer_overrides
        config.per_layer_config = {new: overrides[old] for new, old in enumerate(keep) if old in overrides}
    removed = [i for i in range(old_count) if i not in kept]
    history = list(getattr(config, "pruned_layers", None) or [])  # indices in the original model
    original = [i for i in range(old_count + len(history)) if i not in history]
    config.pruned_layers = sorted(history + [original[i] for i in removed])
    config.num_hidden_layers = len(keep)


def _renumber(layers: nn.ModuleList) -> None:
    for index, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index


def prune_block(model: nn.Module, start: int, size: int, *, inplace: bool = False) -> nn.Module:
    """Remove layers ``start … start+size-1`` and return the model (a new object unless ``inplace``).

    ``model`` is a decoder-only HF causal LM (Llama, Qwen2, Mistral, … anything with ``model.layers``),
    a PEFT-wrapped one, or an object holding one as ``.llm`` (a SlamModel); the same wrapper comes back.
    The copy shares nothing with the original; the removed layers are never copied. The config records
    the removed original indices in ``pruned_layers`` (composes over repeated pruning).
    """
    stack = _stack(model)
    old_count = len(stack.layers)
    _check_block(old_count, start, size)
    keep = [i for i in range(old_count) if not start <= i < start + size]
    if not inplace:
        original = stack.layers
        stack.layers = nn.ModuleList([original[i] for i in keep])  # so deepcopy skips the removed layers
        try:
            model = copy.deepcopy(model)
        finally:
            stack.layers = original
        stack = _stack(model)
    else:
        stack.layers = nn.ModuleList([stack.layers[i] for i in keep])
    if size == 0:
        return model  # nothing removed: leave the config exactly as it was
    _renumber(stack.layers)
    _update_config(stack.config, keep, old_count)
    if hasattr(stack, "has_sliding_layers"):  # Qwen2 caches this flag at construction
        stack.has_sliding_layers = "sliding_attention" in (getattr(stack.config, "layer_types", None) or [])
    return model


# --- CLI ---------------------------------------------------------------------------------------------


def _check_output_dir(output: Path, force: bool) -> None:
    """Refuse to write over a file or a non-empty directory unless ``force``."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not force:
        raise UserError(f"{output} exists and is not empty; choose another --output or pass --force.")


def save_pruned(model: nn.Module, tokenizer, output: Path, *, force: bool = False) -> Path:
    """Write a reloadable HF directory (model + tokenizer), atomically; refuse to clobber a non-empty dir."""
    output = Path(output)
    _check_output_dir(output, force)
    with atomic_path(output) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return output


def _cmd_prune(args) -> int:
    from speechllm_redundancy.angles import DTYPES
    from speechllm_redundancy.zoo import load_causal_lm

    if args.size == 0:  # prune_block allows it (the n = 0 point of a walk); as a command it would only copy
        raise UserError(f"--size 0 removes no layer: {args.output} would be a copy of {args.model}. Pass "
                        "--size 1 or more (the number of consecutive layers to remove); to copy a model, copy "
                        "its directory.")
    output = Path(args.output)
    _check_output_dir(output, args.force)  # before loading the model: a clash is named at once
    model, tokenizer = load_causal_lm(args.model, DTYPES[args.dtype])
    before = len(_stack(model).layers)
    model = prune_block(model, args.start, args.size, inplace=True)
    save_pruned(model, tokenizer, output, force=args.force)
    print(f"removed layers {args.start}..{args.start + args.size - 1} of {before}: "
          f"{before - args.size} remain; receiving layer now at index {args.start} -> {output}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("prune", help="remove a block of decoder layers → a reloadable HF model dir",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model name (see `models list`), hub id or local HF dir")
    p.add_argument("--start", type=int, required=True, help="first layer to remove (l*)")
    p.add_argument("--size", type=int, required=True, help="number of consecutive layers to remove (n)")
    p.add_argument("--output", required=True, help="directory to write (must not exist or be empty)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype the pruned model is loaded and saved in")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    p.set_defaults(func=_cmd_prune)


__all__ = ["PER_LAYER_LISTS", "prune_block", "receiving_layer", "save_pruned"]
