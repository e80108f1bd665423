"""`slam heal|walk`: prune a trained SLAM model from the command line, as the chapters do.

    python -m speechllm_redundancy slam heal --model runs/lora --fraction 0.25 --path-manifest dev.jsonl \
        --strategy both --steps 300 --train train.jsonl --out runs/lora-pruned
    python -m speechllm_redundancy slam walk --model runs/lora --fractions 0.1 0.25 0.5 --strategy none both \
        --steps 300 --train train.jsonl --path-manifest dev.jsonl --eval test-clean.jsonl test-other.jsonl \
        --out walks/lora

Both run the library's own steps on a saved model: its optimal path from the angles of its own inputs
(``sweep.speech_angles``), block removal and healing (``healing.heal``), the walk (``sweep.walk_path``).
The model is keyed by a hash of its files, and its angles, healing runs and walk points live in the shared
cache (``artifacts/sweeps/<task>-<key>/``, as a chapter's walks do): an interrupted run resumes, a repeated
one is a cache hit, and a heal and a walk of one block, strategy and healing settings share the healing run.
Under ``accelerate launch`` every process takes part (training and decoding are shared out as in
``slam train`` and ``slam evaluate``); the first process alone prints and writes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from speechllm_redundancy.decoding import DECODE_PRECISIONS
from speechllm_redundancy.distributed import is_main_process, main_process_first
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.slam_cli import TASK_HELP, TASKS, _model_dir, add_train_flag, whole_number

MODEL_DIR = "final"  # in a `slam heal` folder: the healed SLAM model (as in a `slam train` folder)
DECODER_DIR = "decoder"  # ... and the pruned decoder it reads, a Hugging Face model folder
HEAL_RECORD = "heal.json"  # ... and what was removed and how it was healed
WALK_RECORD, WALK_TABLE = "walk.json", "walk.csv"  # a `slam walk` folder


def register(sub) -> None:
    """Add `heal` and `walk` to the `slam` command's sub-commands."""
    heal = sub.add_parser("heal", help="remove a block of decoder layers from a trained SLAM model, heal it, "
                                       "save the result as a SLAM model folder")
    _model_args(heal)
    heal.add_argument("--start", type=whole_number(0), help="first decoder layer to remove (with --size)")
    heal.add_argument("--size", type=whole_number(1), help="number of consecutive layers to remove (with --start)")
    heal.add_argument("--fraction", type=_fraction,
                      help="instead of --start/--size: remove round(FRACTION x layers) layers, the block the "
                           "model's optimal path removes (angles of --path-manifest)")
    _path_args(heal)
    heal.add_argument("--strategy", default="both", choices=_strategies(),
                      help="healing: none, decoder (LoRA on the receiving layer's MLP), projector (the input "
                           "side), both (default both)")
    _healing_args(heal)
    heal.add_argument("--out", required=True,
                      help="folder to write (new, empty, or an earlier `slam heal` output): final/ the healed "
                           "SLAM model, decoder/ its pruned decoder, heal.json what was done")
    heal.set_defaults(func=_heal)

    walk = sub.add_parser("walk", help="walk a trained SLAM model's pruning path: prune, heal and score each "
                                       "level on each evaluation set (cached, resumable)")
    _model_args(walk)
    walk.add_argument("--fractions", type=_fraction, nargs="+",
                      help="pruned fractions to walk, each rounded to whole layers (default: every level up to "
                           "half the layers); the unpruned model is always scored")
    _path_args(walk, required=True)
    walk.add_argument("--strategy", nargs="+", default=["none"], choices=_strategies(),
                      help="healing strategies to walk, one walk each (default none): none, decoder, projector, "
                           "both")
    _healing_args(walk)
    walk.add_argument("--eval", nargs="+", required=True, metavar="[NAME=]MANIFEST",
                      help="evaluation manifests, each scored at every level (NAME: its column; default the "
                           "file's stem)")
    walk.add_argument("--limit", type=whole_number(1), help="utterances decoded per set and level (default: all)")
    walk.add_argument("--max-new-tokens", type=whole_number(1), help="cap on each output's tokens (default: the "
                                                               "decoder's own)")
    walk.add_argument("--precision", default="auto", choices=DECODE_PRECISIONS,
                      help="the decoder's products while decoding: auto (bf16 on a CPU that multiplies it "
                           "natively, else fp32), bf16 or fp32")
    walk.add_argument("--out", help="folder to write walk.csv and walk.json into (new, empty, or an earlier "
                                    "`slam walk` output; default: print only)")
    walk.set_defaults(func=_walk)


# -- arguments --------------------------------------------------------------------------------------------
def _strategies() -> tuple[str, ...]:
    from speechllm_redundancy.healing import STRATEGIES

    return STRATEGIES


def _fraction(text: str) -> float:
    """An argparse type: a share of the decoder's layers, strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction strictly between 0 and 1: give the share of "
                                         "the decoder's layers to remove, e.g. 0.25")
    return value


def _model_args(parser) -> None:
    parser.add_argument("--model", required=True,
                        help="directory written by `slam train` or `slam heal` (or its final/)")
    parser.add_argument("--task", default="asr", choices=TASKS,
                        help=f"the model's task: {TASK_HELP}; gives the prompt, the targets and the metric")


def _path_args(parser, required: bool = False) -> None:
    from speechllm_redundancy.pruning import PATH_SAMPLES

    need = "" if required else " (with --fraction)"
    parser.add_argument("--path-manifest", required=required,
                        help=f"manifest whose first --path-limit utterances give the model's optimal pruning "
                             f"path{need}: the angles of its own inputs (the paper: a validation set)")
    parser.add_argument("--path-limit", type=whole_number(1), default=PATH_SAMPLES,
                        help=f"utterances of --path-manifest the angles average over (default {PATH_SAMPLES})")


def _healing_args(parser) -> None:
    from speechllm_redundancy.healing import HEALING_STEPS

    parser = parser.add_argument_group("healing run", "the short training run after each removal (flags as in "
                                                      "`slam train`)")
    parser.add_argument("--train", help="manifest the healing trains on (the model's own training data, as in "
                                        "the chapters); needed unless the strategy is none")
    parser.add_argument("--train-limit", type=whole_number(1), help="heal on (and encode) the first N utterances only")
    parser.add_argument("--steps", type=whole_number(1), default=HEALING_STEPS,
                        help=f"steps of each healing run (default {HEALING_STEPS}; a tenth of them warm-up)")
    for name in ("batch_size", "grad_accum", "lr", "seed", "mixed_precision"):  # as `slam train` has them
        add_train_flag(parser, name, keep_default=True)


# -- shared steps -----------------------------------------------------------------------------------------
def check_output_dir(out: Path, record: str, command: str) -> None:
    """Refuse a file, or a non-empty folder that ``command`` did not write (no ``record`` of it inside):
    what the user keeps there is never replaced. An earlier output of the command is replaced, whole."""
    if not out.exists() or out.is_dir() and not any(out.iterdir()):
        return
    try:
        ours = json.loads((out / record).read_text()).get("command") == command
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise UserError(f"{out} exists and is not empty, and is not an output of `{command}`: choose a new or "
                        "empty folder for --out (what is there is never overwritten).")


def check_manifests(args, strategies) -> None:
    """Before anything is loaded: healing needs --train when a strategy trains, and every manifest named
    must exist."""
    if not args.train and any(s != "none" for s in strategies):
        raise UserError(f"healing strategy {next(s for s in strategies if s != 'none')!r} trains: pass --train, "
                        "the manifest to heal on (the model's training data), or use --strategy none.")
    for flag, path in (("--train", args.train), ("--path-manifest", args.path_manifest)):
        if path and not Path(path).is_file():
            raise UserError(f"{flag} {path}: no such manifest; check the path.")


def load_model(path: str):
    """(the saved SLAM model at ``path``, its folder), on this process's device: its own under a launch, else
    the GPU when there is one."""
    import torch

    from speechllm_redundancy.distributed import process_device
    from speechllm_redundancy.slam import SlamModel

    folder = _model_dir(path)
    device = process_device()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return SlamModel.from_pretrained(folder, device=str(device)), folder


def model_key(folder: Path) -> str:
    """Names a saved SLAM model in the caches of its angles, healing runs and walk points: a hash of its
    files (weights, adapter settings, and config.json, which holds its decoder's weights hash), so a model
    trained again misses and a copied folder hits."""
    from speechllm_redundancy.cache import RECORD, file_sha256, key_of

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != RECORD)
    return key_of([(p.relative_to(folder).as_posix(), file_sha256(p)) for p in files])


def optimal_path(slam, key: str, args) -> dict[int, int]:
    """{n: l*(n)}: the model's speech-derived optimal path (``sweep.speech_angles``), measured once and cached
    (under a launch, by the first process)."""
    from speechllm_redundancy.sweep import speech_angles

    with main_process_first():
        angles = speech_angles(slam, args.path_manifest, key, limit=args.path_limit, task=args.task,
                               progress=is_main_process())
    return angles.optimal_path()


def healing_settings(args):
    """The training settings of every healing run (``healing.healing_config``, as the chapters heal)."""
    from speechllm_redundancy.healing import healing_config

    return healing_config(args.steps, seed=args.seed, batch_size=args.batch_size, grad_accum=args.grad_accum,
                          lr=args.lr, mixed_precision=args.mixed_precision)


def training_data(slam, args):
    """The healing data: --train's cached features (the model's encoder and Whisper window) and targets, as
    ``slam train`` pairs them; encoded once (under a launch, by the first process)."""
    from speechllm_redundancy.data.manifest import read_manifest, targets
    from speechllm_redundancy.features import cached_features
    from speechllm_redundancy.training import make_data

    utts = read_manifest(args.train)[: args.train_limit]
    targets(utts, args.task, args.train)  # a row without its target fails now, not after the encoding
    with main_process_first():
        store = cached_features(slam.config.encoder, args.train, whisper_window=slam.config.whisper_window,
                                limit=args.train_limit, progress=is_main_process())
    return make_data(store, utts, args.task, args.train)


# -- slam heal --------------------------------------------------------------------------------------------
def check_block_flags(args) -> None:
    """Before anything is loaded: the block is given one way, --start and --size or --fraction (with the
    manifest its path is measured on)."""
    if args.fraction is None:
        if args.start is None or args.size is None:
            raise UserError("say which layers to remove: --start and --size (layers start … start+size-1), or "
                            "--fraction with --path-manifest (the block the model's optimal path removes).")
        return
    if args.start is not None or args.size is not None:
        raise UserError("--fraction chooses the block from the optimal path: drop --start and --size, or drop "
                        "--fraction to remove a block of your own.")
    if not args.path_manifest:
        raise UserError("--fraction needs --path-manifest: the utterances whose angles give the model's optimal "
                        "path (the paper: a validation set).")


def heal_block(slam, key: str, layers: int, args) -> tuple[int, int]:
    """(start, size) of the block to remove: --start/--size as given (checked against the decoder's depth),
    or --fraction's block on the optimal path."""
    from speechllm_redundancy.pruning import _check_block
    from speechllm_redundancy.sweep import path_sizes

    if args.fraction is None:
        _check_block(layers, args.start, args.size)
        return args.start, args.size
    (size,) = path_sizes(layers, [args.fraction])
    path = optimal_path(slam, key, args)
    if size not in path:
        raise UserError(f"the optimal path measured on {args.path_manifest} has no block of {size} layers: "
                        "choose another --fraction, or --start and --size.")
    return path[size], size


def save_healed(slam, start: int, size: int, result, out: Path, record: dict) -> Path:
    """Write ``out`` in one atomic step: decoder/, the pruned decoder (``pruning.save_pruned``); final/, the
    SLAM model reading it, with the healing run's adapters and input side (``result``: the run; None when
    nothing trained); heal.json, ``record``. The decoder is pruned again from ``slam``, whole (the healing
    run's own copy holds shards after an FSDP launch), and final/ names it by its absolute path."""
    from speechllm_redundancy.cache import atomic_path, atomic_write_json
    from speechllm_redundancy.features import fingerprint
    from speechllm_redundancy.healing import prune_slam
    from speechllm_redundancy.pruning import save_pruned
    from speechllm_redundancy.slam import SlamModel

    pruned = prune_slam(slam, start, size)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        save_pruned(pruned.llm, pruned.tokenizer, tmp / DECODER_DIR)
        healed = pruned if result is None else SlamModel.from_pretrained(
            result.out_dir / MODEL_DIR, llm=pruned.llm, tokenizer=pruned.tokenizer)
        healed.config.llm = str(out.resolve() / DECODER_DIR)
        healed.save_pretrained(tmp / MODEL_DIR, llm_fingerprint=fingerprint(str(tmp / DECODER_DIR)))
        atomic_write_json(tmp / HEAL_RECORD, record)
    return out


def _heal(args) -> int:
    from dataclasses import asdict

    from speechllm_redundancy.healing import heal, strategy_config, trains_something
    from speechllm_redundancy.layers import num_decoder_layers
    from speechllm_redundancy.pruning import receiving_layer
    from speechllm_redundancy.sweep import healing_dir, walk_cache_dir

    out = Path(args.out)
    check_output_dir(out, HEAL_RECORD, "slam heal")  # before loading anything: a clash is named at once
    check_block_flags(args)
    check_manifests(args, [args.strategy])
    slam, folder = load_model(args.model)
    key, layers = model_key(folder), num_decoder_layers(slam.llm)
    start, size = heal_block(slam, key, layers, args)
    if args.strategy == "decoder":  # a block ending at the last layer leaves no receiving layer to heal
        receiving_layer(start, num_layers=layers - size)
    config = strategy_config(slam, args.strategy, healing_settings(args))
    result = None
    if trains_something(args.strategy, start, size, layers, config):
        data = training_data(slam, args)
        where = healing_dir(walk_cache_dir(args.task, key), key, size, start, args.strategy, config, data)
        result = heal(slam, start, size, args.strategy, data, config, where, progress=is_main_process())[1]
    if not is_main_process():  # the processes of one launch healed one model: the first one writes it
        return 0
    record = {"command": "slam heal", "model": str(folder.absolute()), "model_key": key, "task": args.task,
              "layers": layers, "start": start, "size": size, "removed": list(range(start, start + size)),
              "fraction": args.fraction, "path_manifest": args.path_manifest if args.fraction else None,
              "path_limit": args.path_limit if args.fraction else None,
              "strategy": args.strategy, "healed": result is not None, "train": args.train,
              "train_limit": args.train_limit, "healing": asdict(config) if result else None,
              "healing_run": str(result.out_dir) if result else None,
              "history": result.history if result else [], "minutes": result.minutes if result else 0.0}
    save_healed(slam, start, size, result, out, record)
    how = (f"healed ({args.strategy}) for {args.steps} steps in {result.minutes:.1f} min" if result else
           "not healed (nothing to train)" if args.strategy != "none" else "not healed (strategy none)")
    print(f"removed layers {start}..{start + size - 1} of {layers} ({size / layers:.0%}); {how}")
    print(f"model: {out / MODEL_DIR}")
    return 0


# -- slam walk --------------------------------------------------------------------------------------------
def eval_sets(items: list[str]) -> dict[str, Path]:
    """{name: manifest} of --eval's MANIFEST or NAME=MANIFEST items (a bare manifest is named by its stem)."""
    sets: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or Path(item).is_file():
            name, path = Path(item).stem, item
        if not name:
            raise UserError(f"--eval {item}: the set has no name: write NAME=MANIFEST, or the manifest alone.")
        if not Path(path).is_file():
            raise UserError(f"--eval {item}: manifest {path} does not exist: check the path.")
        if name in sets:
            raise UserError(f"--eval names set {name!r} twice ({sets[name]} and {path}): give one another name "
                            "as NAME=MANIFEST.")
        sets[name] = Path(path)
    return sets


def refuse_sharded_launch() -> None:
    """A walk decodes each level with a whole model per process; an FSDP launch holds shards."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        raise UserError("slam walk decodes every level with a whole model in each process, which an FSDP launch "
                        "shards: launch it with --multi_gpu (data parallel) instead of an FSDP --config_file.")


def encode_eval_sets(slam, sets: dict[str, Path], limit: int | None) -> None:
    """Encode the evaluation sets up front (under a launch, the first process; the others then find them)."""
    from speechllm_redundancy.features import cached_features

    with main_process_first():
        for manifest in sets.values():
            cached_features(slam.config.encoder, manifest, whisper_window=slam.config.whisper_window,
                            limit=limit, progress=is_main_process())


def walk_table(frame, removable: dict[str, float], task: str) -> str:
    """The walk as text: a score per level (rows: strategy, n, first removed layer, fraction) and set
    (columns), then each strategy's removable fraction by the paper's rule."""
    from speechllm_redundancy.evaluation import ASR_THRESHOLD, AST_THRESHOLD

    table = frame.assign(fraction=frame.fraction.round(3)).pivot_table(
        index=["strategy", "n", "start", "fraction"], columns="set", values="score", sort=False)
    rule = (f"WER within {ASR_THRESHOLD:+.0%}" if task == "asr" else f"BLEU within {AST_THRESHOLD:+.0%}")
    shares = ", ".join(f"{s} {f:.3f}" for s, f in removable.items())
    metric = "WER (%)" if task == "asr" else "BLEU"
    return (f"{metric} per pruning level (n layers removed from layer start on)\n"
            f"{table.to_string(float_format=lambda v: f'{v:.2f}')}\n"
            f"removable fraction ({rule} on every set): {shares}")


def save_walk(out: Path, frame, record: dict) -> Path:
    """Write ``out`` in one atomic step: walk.csv (one row per strategy, level and set) and walk.json
    (``record`` with the same rows as ``points``)."""
    from speechllm_redundancy.cache import atomic_path

    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / WALK_TABLE).write_text(frame.to_csv(index=False))
        points = json.loads(frame.to_json(orient="records"))
        (tmp / WALK_RECORD).write_text(json.dumps({**record, "points": points}, indent=2) + "\n")
    return out


def _walk(args) -> int:
    from dataclasses import asdict

    import pandas as pd

    from speechllm_redundancy.cache import file_sha256, key_of
    from speechllm_redundancy.layers import num_decoder_layers
    from speechllm_redundancy.sweep import (manifest_evaluator, path_sizes, removable, walk_cache_dir,
                                            walk_path)

    out = Path(args.out) if args.out else None
    if out is not None:
        check_output_dir(out, WALK_RECORD, "slam walk")  # before loading anything: a clash is named at once
    refuse_sharded_launch()
    sets, strategies = eval_sets(args.eval), list(dict.fromkeys(args.strategy))
    check_manifests(args, strategies)
    slam, folder = load_model(args.model)
    key, layers = model_key(folder), num_decoder_layers(slam.llm)
    sizes = path_sizes(layers, args.fractions)
    path = optimal_path(slam, key, args)
    config = healing_settings(args)
    healing = {} if strategies == ["none"] else {"heal_data": training_data(slam, args), "heal_config": config}
    encode_eval_sets(slam, sets, args.limit)
    evaluate = manifest_evaluator(sets, args.task, limit=args.limit, max_new_tokens=args.max_new_tokens,
                                  progress=is_main_process(), precision=args.precision)
    points_key = key_of(key, args.limit, args.max_new_tokens, {name: file_sha256(p) for name, p in sets.items()})
    walks = {s: walk_path(slam, path, sizes, list(sets), evaluate, walk_cache_dir(args.task, key), strategy=s,
                          key=points_key, model_key=key, progress=is_main_process(),
                          **({} if s == "none" else healing))
             for s in strategies}
    kind = "asr" if args.task == "asr" else "ast"
    shares = {s: removable(frame, layers, kind) for s, frame in walks.items()}
    if not is_main_process():  # every process holds the walk: the first one reports and writes it
        return 0
    frame = pd.concat(walks.values(), ignore_index=True)[["strategy", "n", "start", "fraction", "set", "score",
                                                          "delta"]]
    print(walk_table(frame, shares, args.task))
    if out is not None:
        record = {"command": "slam walk", "model": str(folder.absolute()), "model_key": key, "task": args.task,
                  "metric": "wer" if kind == "asr" else "bleu", "layers": layers,
                  "path": {str(n): start for n, start in path.items()}, "levels": sizes, "strategies": strategies,
                  "removable": shares, "path_manifest": args.path_manifest, "path_limit": args.path_limit,
                  "eval": {name: str(p) for name, p in sets.items()}, "limit": args.limit,
                  "max_new_tokens": args.max_new_tokens, "train": args.train, "train_limit": args.train_limit,
                  "healing": asdict(config) if healing else None}
        save_walk(out, frame, record)
        print(f"walk: {out / WALK_TABLE}, {out / WALK_RECORD}")
    return 0
