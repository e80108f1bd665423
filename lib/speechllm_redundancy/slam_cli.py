"""`slam features|train|evaluate`: the SLAM recipe from the command line (`slam heal|walk`, pruning a trained
model: slam_pruning_cli).

    python -m speechllm_redundancy slam train --encoder whisper-base --llm smollm2-135m \
        --train artifacts/corpus/default/train.jsonl --out runs/smollm2 [--lora] [--steps 1500]
    python -m speechllm_redundancy slam train --profile paper --llm Qwen/Qwen2.5-7B [--task ast-fr-en] [--lora]
    python -m speechllm_redundancy slam evaluate --model runs/smollm2 \
        --manifest artifacts/corpus/default/test-clean.jsonl --task asr
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from speechllm_redundancy.decoding import DECODE_PRECISIONS
from speechllm_redundancy.distributed import is_main_process
from speechllm_redundancy.errors import UserError

TASKS = ("asr", "ast-en-de", "ast-fr-en")
TASK_HELP = "asr (transcribe) or ast-<source>-<target> (translate the speech)"
PROFILE_CHOICES = ("profile", "chapter", "llm", "task", "lora")  # what `slam train --profile` takes from the user
WINDOW_HELP = "Whisper input: the full 30 s window, the utterance + 2 s (padded) or the utterance only (trim)"
# the help of each TrainConfig field's flag (`slam train --steps …`); tests/test_cli.py finds any missing
TRAIN_HELP = {
    "steps": "optimiser steps with the next-token (SLAM) loss",
    "batch_size": "utterances per micro-batch",
    "grad_accum": "micro-batches per optimiser step",
    "lr": "peak learning rate (linear warm-up, then linear decay to zero)",
    "weight_decay": "AdamW weight decay",
    "warmup_steps": "steps of linear learning-rate warm-up",
    "grad_clip": "clip the gradient norm to this (0: no clipping)",
    "checkpoint_every": "save a resumable checkpoint every N steps",
    "seed": "seed of the initial weights, batch order and every random draw",
    "bucket": "draw batches from groups of BUCKET x batch size utterances sorted by length (0: off)",
    "time_masks": "SpecAugment: time spans masked per utterance",
    "time_mask_width": "SpecAugment: longest masked time span, in encoder frames",
    "feature_masks": "SpecAugment: channel spans masked per utterance",
    "feature_mask_width": "SpecAugment: widest masked channel span",
    "ctc_warmup_steps": "CTC warm-start steps of the projector before the next-token loss (0: none)",
    "ctc_lr": "learning rate of the CTC warm start",
    "ctc_batch_size": "utterances per batch of the CTC warm start",
    "ctc_weight": "weight of a CTC loss kept beside the next-token loss after the warm start",
    "freeze_projector": "train only the adapters and soft prompt in the next-token phase",
    "prompt_lr": "learning rate of the soft prompt (default: --lr)",
    "max_minutes": "stop (and save) once this much training time has passed",
    "mixed_precision": "bf16 autocast: auto (where faster: GPUs with bf16), no or bf16",
}
POSITIVE_TRAIN_SETTINGS = ("batch_size", "grad_accum", "ctc_batch_size", "checkpoint_every")


def add_train_flag(parser, name: str, keep_default: bool = False) -> None:
    """Declare TrainConfig field ``name`` as ``--name`` with its help from TRAIN_HELP: one declaration for
    `slam train` and the healing runs of `slam heal|walk`. ``keep_default``: the flag defaults to the field's
    default (else to None, so that a command can tell the settings a user gave from those it fills in)."""
    from speechllm_redundancy.training import TrainConfig

    field = TrainConfig.__dataclass_fields__[name]
    flag = "--" + name.replace("_", "-")
    help_text = f"{TRAIN_HELP[name]} (default {field.default})"
    default = field.default if keep_default else None
    if name == "mixed_precision":
        parser.add_argument(flag, choices=("auto", "no", "bf16"), default=default, help=help_text)
    elif isinstance(field.default, bool):
        parser.add_argument(flag, action="store_const", const=True, default=default, help=help_text)
    elif isinstance(field.default, float) or name in ("max_minutes", "prompt_lr"):
        parser.add_argument(flag, type=float, default=default, help=help_text)
    else:
        parser.add_argument(flag, type=whole_number(1 if name in POSITIVE_TRAIN_SETTINGS else 0), default=default,
                            help=help_text)


def whole_number(minimum: int):
    """An argparse type: a whole number of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= {minimum}")
        return value

    return parse


def register(subparsers) -> None:
    from speechllm_redundancy.encoders import WHISPER_WINDOWS
    from speechllm_redundancy.slam import SlamConfig
    from speechllm_redundancy.training import TrainConfig

    slam = subparsers.add_parser("slam", help="SLAM SpeechLLM: encode features, train, evaluate, prune and heal, "
                                              "walk the pruning path")
    sub = slam.add_subparsers(dest="slam_command", required=True)

    feats = sub.add_parser("features", help="compute (or find) the cached encoder features of a manifest")
    feats.add_argument("--encoder", required=True, help="zoo name, local HF dir or hub id")
    feats.add_argument("--manifest", required=True, nargs="+", help="manifest(s) to encode (JSON Lines)")
    feats.add_argument("--whisper-window", default="full", choices=WHISPER_WINDOWS, help=WINDOW_HELP)
    feats.add_argument("--limit", type=int, help="encode only the first N utterances (whole shards)")
    feats.set_defaults(func=_features)

    tr = sub.add_parser("train", help="train a SLAM model (projector, optionally LoRA); resumes if interrupted")
    tr.add_argument("--encoder", default=SlamConfig.encoder,
                    help="frozen speech encoder: zoo name, local HF dir or hub id")
    tr.add_argument("--llm", help=f"zoo name, local HF dir (e.g. a pruned model) or hub id (default {SlamConfig.llm}; "
                                  "with --profile: required, one of the decoders the profile's chapters train)")
    tr.add_argument("--profile",
                    help="train the model the book's chapters train on this profile (name or yaml), with the "
                         "chapter's settings and data, into the cache where the chapters read it; choose it with "
                         "--llm, --task and --lora (the other options, --train and --out are then the profile's)")
    tr.add_argument("--chapter", help="with --profile: the chapter whose settings to train with (stem or prefix "
                                      "such as 03; default: the first chapter that trains the model)")
    tr.add_argument("--train", help="training manifest (JSON Lines); required unless --profile")
    tr.add_argument("--train-limit", type=int, help="train on (and encode) only the first N utterances")
    tr.add_argument("--task", default="asr", choices=TASKS, help=TASK_HELP)
    tr.add_argument("--out", help="output directory (default: the shared cache, keyed by settings and data)")
    tr.add_argument("--lora", action="store_true", help="LoRA on the decoder's q, k, v, o projections (with "
                                                        "--profile: the chapters' LoRA model, of `lora_llms`)")
    tr.add_argument("--lora-r", type=int, default=8, help="rank of the LoRA matrices (with --lora)")
    tr.add_argument("--lora-alpha", type=int, default=16, help="LoRA scale: updates are scaled by alpha/r")
    tr.add_argument("--k", type=int, default=SlamConfig.k, help="frames concatenated per projector input")
    tr.add_argument("--whisper-window", default=SlamConfig.whisper_window, choices=WHISPER_WINDOWS,
                    help=WINDOW_HELP)
    tr.add_argument("--no-chat-template", action="store_true",
                    help="lay the prompt out as plain text even if the tokenizer has a chat template")
    tr.add_argument("--ctc-compress", action="store_true",
                    help="feed the LLM one vector per CTC label run (needs a CTC head: --ctc-warmup-steps > 0 "
                         "or --init-from)")
    tr.add_argument("--ctc-embed", default=SlamConfig.ctc_embed, choices=("mean", "soft", "hard"),
                    help="what the LLM reads per CTC segment: mean projected frame, p·E (soft) or the label's embedding")
    tr.add_argument("--ctc-temperature", type=float, default=SlamConfig.ctc_temperature,
                    help="softmax temperature of the posteriors in --ctc-embed soft")
    tr.add_argument("--prompt-vectors", type=int, default=SlamConfig.prompt_vectors,
                    help="trainable soft-prompt vectors before the speech (prompt tuning; their rate: --prompt-lr)")
    tr.add_argument("--prompt-init", default=SlamConfig.prompt_init,
                    help="text whose token embeddings the soft prompt starts from")
    tr.add_argument("--asr-layout", default="quoted", choices=("quoted", "recognised"),
                    help="ASR prompt layout: copy the quoted speech, or the cpu recipe's frozen-decoder layout "
                         "(the quoted words come from a recogniser; correct only misheard words)")
    tr.add_argument("--init-from", help="start from this saved SLAM model's projector and CTC head "
                                        "(e.g. a CTC warm start's final/)")
    for f in fields(TrainConfig):  # every training setting is a flag (--steps, --lr, --ctc-warmup-steps …)
        if f.name not in ("betas", "log_every"):
            add_train_flag(tr, f.name)
    tr.add_argument("--eval", help="manifest to score during training (first --eval-limit utterances)")
    tr.add_argument("--eval-every", type=int, default=0,
                    help="score --eval every N next-token steps (0: only at the end)")
    tr.add_argument("--eval-limit", type=int, default=200, help="utterances of --eval to score")
    tr.set_defaults(func=_train, train_options={a.dest: (a.option_strings[0], a.default) for a in tr._actions
                                                if a.option_strings and a.dest != "help"})

    ev = sub.add_parser("evaluate", help="greedy-decode a manifest and print WER (ASR) or BLEU/chrF (AST)")
    ev.add_argument("--model", required=True, help="directory written by `slam train` (or its final/)")
    ev.add_argument("--manifest", required=True, help="manifest to decode and score (JSON Lines)")
    ev.add_argument("--task", default="asr", choices=TASKS, help=TASK_HELP)
    ev.add_argument("--limit", type=int, default=None, help="only the first N utterances")
    ev.add_argument("--batch-size", type=whole_number(1), help="utterances decoded at once (default: "
                                                                "slam.DECODE_WIDTH, 64)")
    ev.add_argument("--precision", default="auto", choices=DECODE_PRECISIONS,
                    help="the decoder's products while decoding: auto (bf16 on a CPU that multiplies it natively, "
                         "else fp32), bf16 or fp32")
    ev.add_argument("--hyps", help="write id/ref/hyp JSON Lines here (must not exist)")
    ev.set_defaults(func=_evaluate)

    from speechllm_redundancy.slam_pruning_cli import register as register_pruning

    register_pruning(sub)  # `slam heal`, `slam walk`


def _features(args) -> int:
    from speechllm_redundancy.features import cached_features

    for manifest in args.manifest:
        store = cached_features(args.encoder, manifest, whisper_window=args.whisper_window, limit=args.limit)
        print(f"{manifest}: {len(store)} utterances, {store.dim}-d at {store.frame_rate:g} Hz -> {store.directory}")
    return 0


def _train(args) -> int:
    import torch

    from speechllm_redundancy.slam import PROMPTS, RECOGNISER_PROMPTS, SlamConfig
    from speechllm_redundancy.training import TrainConfig, train_from_configs

    if args.profile:
        return _train_profile(args)
    if not args.train:
        raise UserError("slam train needs --train (the training manifest), or --profile to train a chapter's "
                        "model with the profile's settings.")
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    cfg = TrainConfig(**overrides)
    lora = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": 0.05} if args.lora else None
    slam_cfg = SlamConfig(encoder=args.encoder, llm=args.llm or SlamConfig.llm, k=args.k, lora=lora,
                          chat_template=not args.no_chat_template, whisper_window=args.whisper_window,
                          ctc_compress=args.ctc_compress, ctc_embed=args.ctc_embed,
                          ctc_temperature=args.ctc_temperature, prompt_vectors=args.prompt_vectors,
                          prompt_init=args.prompt_init,
                          prompts=dict(RECOGNISER_PROMPTS if args.asr_layout == "recognised" else PROMPTS))
    model, result = train_from_configs(slam_cfg, cfg, args.train, task=args.task, out_dir=args.out,
                                       eval_manifest=args.eval, eval_every=args.eval_every,
                                       eval_limit=args.eval_limit, train_limit=args.train_limit,
                                       init_from=args.init_from)
    if not is_main_process():  # the processes of one launch trained one model: the first one reports it
        return 0
    last = [h for h in result.history if "loss" in h][-1:] or [{}]
    print(f"trained {result.steps} in {result.minutes:.1f} min; last loss {last[0].get('loss', float('nan')):.3f}")
    for h in result.history:
        if any(k.startswith("eval_") for k in h):
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in h.items()}))
    print(f"model: {result.out_dir / 'final'}")
    return 0


def _trained_llms(params: dict, task: str, lora: bool) -> list[str]:
    """The decoders a chapter with parameters ``params`` trains a ``task`` model of (LoRA ones: of ``lora``)."""
    if lora:
        return list(params.get("lora_llms") or []) if task == "asr" else []
    if task != "asr" and task[len("ast-"):] not in (params.get("directions") or []):
        return []
    return list(params.get("speech_llms") or [])


def _train_profile(args) -> int:
    """`slam train --profile`: the SLAM model as a chapter gets it (``Study.slam`` on the chapter's settings),
    so it lands in the cache under the key the chapter asks for; a model already there is a cache hit."""
    from speechllm_redundancy.experiments import Settings, Study
    from speechllm_redundancy.profiles import (chapter_namespace, chapter_stems, load_profile, select_chapters,
                                               validate_profile)

    given = [flag for dest, (flag, default) in args.train_options.items()
             if dest not in PROFILE_CHOICES and getattr(args, dest) != default]
    if given:
        raise UserError(f"--profile trains with the profile's settings, so {', '.join(given)} would be ignored: "
                        "drop them, or train without --profile (--train …, and --out for a folder of your own).")
    profile = load_profile(args.profile)
    stems = select_chapters([args.chapter]) if args.chapter else chapter_stems()
    validate_profile(profile, stems)
    params = {stem: chapter_namespace(profile, stem) for stem in stems}
    trained = {stem: _trained_llms(params[stem], args.task, args.lora) for stem in stems}
    known = list(dict.fromkeys(llm for stem in stems for llm in trained[stem]))
    what = f"{'LoRA' if args.lora else 'frozen-decoder'} {args.task} SLAM model"
    where = f"chapter {stems[0]} of profile {profile.name}" if args.chapter else f"profile {profile.name}"
    if not known:
        raise UserError(f"{where} trains no {what}: choose another --task or --lora, or add the decoder to the "
                        "profile (speech_llms, lora_llms for --lora, directions for a translation task).")
    if not args.llm:
        raise UserError(f"pass --llm, the decoder of the model to train: {where} trains a {what} of "
                        f"{', '.join(known)}.")
    stem = next((s for s in stems if args.llm in trained[s]), None)
    if stem is None:
        raise UserError(f"{where} trains no {what} of {args.llm!r} (it trains that model of {', '.join(known)}): "
                        "pass one of those to --llm, or add it to the profile (speech_llms, or lora_llms for "
                        "--lora).")
    chosen = params[stem]
    study = Study(Settings.of(chosen))
    if args.task == "asr":
        run = study.slam(args.llm, lora=chosen.get("lora") if args.lora else None,
                         steps=chosen.get("lora_steps") if args.lora else None)
    else:  # the encoder chapter 4 gives the direction
        from speechllm_redundancy.chapters.translation import direction_encoder

        encoder = direction_encoder(study, chosen.get("ast_encoder"), args.task[len("ast-"):])
        run = study.slam(args.llm, args.task, encoder=encoder)
    if not is_main_process():
        return 0
    print(f"{what} of {args.llm} as chapter {stem} of profile {profile.name} trains it: "
          f"{run.result.steps} steps in {run.result.total_minutes:.1f} min (key {run.key})")
    print(f"model: {run.result.out_dir / 'final'}")
    return 0


def _model_dir(path: str) -> Path:
    from speechllm_redundancy.slam import is_saved_slam

    p = Path(path)
    for where in (p, p / "final"):
        if is_saved_slam(where):
            return where
    raise UserError(f"{p} holds no trained SLAM model (no config.json of SlamModel.save_pretrained in it "
                    "or its final/): pass the --out directory of `slam train`.")


def _evaluate(args) -> int:
    from speechllm_redundancy.evaluation import evaluate_slam
    from speechllm_redundancy.slam import SlamModel

    if args.hyps and Path(args.hyps).exists():
        raise UserError(f"{args.hyps} exists: choose a new file for --hyps (it is never overwritten).")
    model = SlamModel.from_pretrained(_model_dir(args.model))
    res = evaluate_slam(model, args.manifest, args.task, limit=args.limit, batch_size=args.batch_size,
                        progress=True, precision=args.precision)
    if not is_main_process():  # every process holds the gathered result: the first one reports and writes it
        return 0
    extra = f", chrF {res['chrf']:.2f}" if "chrf" in res else ""
    print(f"{res['metric'].upper()} {res['score']:.2f}{extra} on {res['utterances']} utterances "
          f"({res['seconds']:.1f} s decoding)")
    if args.hyps:
        from speechllm_redundancy.cache import atomic_write_text

        atomic_write_text(args.hyps, "".join(json.dumps({"id": i, "ref": r, "hyp": h}, ensure_ascii=False) + "\n"
                                             for i, r, h in zip(res["ids"], res["refs"], res["hyps"])))
    return 0
