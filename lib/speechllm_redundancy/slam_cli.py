"""`slam features|train|evaluate`: the SLAM recipe from the command line.

    python -m speechllm_redundancy slam train --encoder whisper-base --llm smollm2-135m \
        --train artifacts/corpus/default/train.jsonl --out runs/smollm2 [--lora] [--steps 1500]
    python -m speechllm_redundancy slam evaluate --model runs/smollm2 \
        --manifest artifacts/corpus/default/test-clean.jsonl --task asr
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from speechllm_redundancy.distributed import is_main_process
from speechllm_redundancy.errors import UserError

TASKS = ("asr", "ast-en-de", "ast-fr-en")


def register(subparsers) -> None:
    from speechllm_redundancy.encoders import WHISPER_WINDOWS
    from speechllm_redundancy.slam import SlamConfig
    from speechllm_redundancy.training import TrainConfig

    slam = subparsers.add_parser("slam", help="SLAM SpeechLLM: encode features, train, evaluate")
    sub = slam.add_subparsers(dest="slam_command", required=True)

    feats = sub.add_parser("features", help="compute (or find) the cached encoder features of a manifest")
    feats.add_argument("--encoder", required=True, help="zoo name, local HF dir or hub id")
    feats.add_argument("--manifest", required=True, nargs="+")
    feats.add_argument("--whisper-window", default="full", choices=WHISPER_WINDOWS)
    feats.add_argument("--limit", type=int, help="encode only the first N utterances (whole shards)")
    feats.set_defaults(func=_features)

    tr = sub.add_parser("train", help="train a SLAM model (projector, optionally LoRA); resumes if interrupted")
    tr.add_argument("--encoder", default=SlamConfig.encoder)
    tr.add_argument("--llm", default=SlamConfig.llm, help="zoo name, local HF dir (e.g. a pruned model) or hub id")
    tr.add_argument("--train", required=True, help="training manifest (JSON Lines)")
    tr.add_argument("--train-limit", type=int, help="train on (and encode) only the first N utterances")
    tr.add_argument("--task", default="asr", choices=TASKS)
    tr.add_argument("--out", help="output directory (default: the shared cache, keyed by settings and data)")
    tr.add_argument("--lora", action="store_true", help="LoRA on the decoder's q, k, v, o projections")
    tr.add_argument("--lora-r", type=int, default=8)
    tr.add_argument("--lora-alpha", type=int, default=16)
    tr.add_argument("--k", type=int, default=SlamConfig.k, help="frames concatenated per projector input")
    tr.add_argument("--whisper-window", default=SlamConfig.whisper_window, choices=WHISPER_WINDOWS)
    tr.add_argument("--no-chat-template", action="store_true")
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
        if f.name in ("betas", "log_every", "mixed_precision"):
            continue
        if isinstance(f.default, bool):
            tr.add_argument("--" + f.name.replace("_", "-"), action="store_const", const=True, help=f"default {f.default}")
            continue
        kind = float if isinstance(f.default, float) or f.name in ("max_minutes", "prompt_lr") else int
        tr.add_argument("--" + f.name.replace("_", "-"), type=kind, help=f"default {f.default}")
    tr.add_argument("--mixed-precision", choices=("auto", "no", "bf16"), help="default auto")
    tr.add_argument("--eval", help="manifest to score during training (first --eval-limit utterances)")
    tr.add_argument("--eval-every", type=int, default=0)
    tr.add_argument("--eval-limit", type=int, default=200)
    tr.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="greedy-decode a manifest and print WER (ASR) or BLEU/chrF (AST)")
    ev.add_argument("--model", required=True, help="directory written by `slam train` (or its final/)")
    ev.add_argument("--manifest", required=True)
    ev.add_argument("--task", default="asr", choices=TASKS)
    ev.add_argument("--limit", type=int, default=None, help="only the first N utterances")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--hyps", help="write id/ref/hyp JSON Lines here (must not exist)")
    ev.set_defaults(func=_evaluate)


def _features(args) -> int:
    from speechllm_redundancy.features import cached_features

    for manifest in args.manifest:
        store = cached_features(args.encoder, manifest, whisper_window=args.whisper_window, limit=args.limit)
        print(f"{manifest}: {len(store)} utterances, {store.dim}-d at {store.frame_rate:g} Hz -> {store.directory}")
    return 0


def _train(args) -> int:
    import torch

    from speechllm_redundancy.slam import PROMPTS, RECOGNISER_PROMPTS, SlamConfig
    from speechllm_redundancy.training import TrainConfig, train_slam

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    cfg = TrainConfig(**overrides)
    lora = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": 0.05} if args.lora else None
    slam_cfg = SlamConfig(encoder=args.encoder, llm=args.llm, k=args.k, lora=lora,
                          chat_template=not args.no_chat_template, whisper_window=args.whisper_window,
                          ctc_compress=args.ctc_compress, ctc_embed=args.ctc_embed,
                          ctc_temperature=args.ctc_temperature, prompt_vectors=args.prompt_vectors,
                          prompt_init=args.prompt_init,
                          prompts=dict(RECOGNISER_PROMPTS if args.asr_layout == "recognised" else PROMPTS))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, result = train_slam(slam_cfg, cfg, args.train, task=args.task, out_dir=args.out,
                               eval_manifest=args.eval, eval_every=args.eval_every, eval_limit=args.eval_limit,
                               train_limit=args.train_limit, init_from=args.init_from)
    if not is_main_process():  # the processes of one launch trained one model: the first one reports it
        return 0
    last = [h for h in result.history if "loss" in h][-1:] or [{}]
    print(f"trained {result.steps} in {result.minutes:.1f} min; last loss {last[0].get('loss', float('nan')):.3f}")
    for h in result.history:
        if any(k.startswith("eval_") for k in h):
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in h.items()}))
    print(f"model: {result.out_dir / 'final'}")
    return 0


def _model_dir(path: str) -> Path:
    p = Path(path)
    if (p / "slam.json").exists():
        return p
    if (p / "final" / "slam.json").exists():
        return p / "final"
    raise UserError(f"{p} holds no trained SLAM model (no slam.json): pass the --out directory of `slam train`.")


def _evaluate(args) -> int:
    from speechllm_redundancy.evaluation import evaluate_slam
    from speechllm_redundancy.slam import SlamModel

    if args.hyps and Path(args.hyps).exists():
        raise UserError(f"{args.hyps} exists: choose a new file for --hyps (it is never overwritten).")
    model = SlamModel.load(_model_dir(args.model))
    res = evaluate_slam(model, args.manifest, args.task, limit=args.limit, batch_size=args.batch_size,
                        progress=True)
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
