"""WER (or BLEU) against training minutes for SLAM recipe variants, side by side in one run, with the
decoder's gold-input ceiling and the CTC warm start alone beside them.

Each variant trains through the cache (`training.train_from_configs`), starting from one shared CTC warm
start (`training.ctc_warm_start`), so a rerun prints the stored curves at once and an interrupted one resumes.
Evaluation time is not counted as training time; minutes include the shared warm start.

    python benchmarks/slam_training.py                                  # SmolLM2-135M: the cpu recipe's two models
    python benchmarks/slam_training.py --llm qwen2.5-coder-0.5b --variants frozen-recognised
    python benchmarks/slam_training.py --variants frozen frozen-mean lora-fixed --ctc-steps 900 --steps 200
    python benchmarks/slam_training.py --task ast-fr-en --llm qwen2.5-coder-0.5b --train fr-en-train \\
        --eval fr-en-test --final-sets fr-en-test

Variants (the cpu recipe's models are `frozen-recognised` and `lora-fixed`; the others are what was tried beside them):
  frozen-read  p·E input (T=1), no training after the warm start (the previous cpu recipe's frozen model)
  frozen-hard  the LLM reads the embeddings of the CTC labels, no training after the warm start
  frozen-prompt       p·E input, 8 trained soft-prompt vectors before the speech (prompt tuning), all else fixed
  frozen-recognised   the cpu recipe's frozen model: the CTC labels' embeddings in the RECOGNISED_COPY layout,
                      8 trained soft-prompt vectors (prompt tuning), all else fixed
  frozen       p·E input, projector trained further with next-token + CTC loss, decoder frozen
  frozen-mean  the mean projected frame per CTC segment, projector trained (the previous cpu recipe)
  frozen-noaux p·E input, projector trained with the next-token loss only
  lora         LoRA (r 8) on q, k, v, o and the projector, next-token loss, lr 5e-4
  lora-ctc     the same with the CTC loss beside it, lr 1e-3
  lora-fixed   LoRA only, the warm start's projector kept fixed, lr 5e-4
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch


def _variants() -> dict:
    from speechllm_redundancy.training import RECIPES

    cpu = RECIPES["cpu"]
    return {**VARIANTS,
            "frozen-prompt": ({"ctc_embed": "soft", **cpu["prompt_tuning"]}, cpu["frozen_train"]),
            "frozen-recognised": ({**cpu["frozen_slam"], **cpu["prompt_tuning"]}, cpu["frozen_train"])}


VARIANTS = {
    "frozen": ({"ctc_embed": "soft"}, {"ctc_weight": 1.0}),
    "lora": ({"ctc_embed": "soft", "lora": {"r": 8, "alpha": 16, "dropout": 0.05}}, {"lr": 5e-4}),
    "lora-ctc": ({"ctc_embed": "soft", "lora": {"r": 8, "alpha": 16, "dropout": 0.05}}, {"ctc_weight": 1.0}),
    "lora-fixed": ({"ctc_embed": "soft", "lora": {"r": 8, "alpha": 16, "dropout": 0.05}},
                   {"lr": 5e-4, "freeze_projector": True}),
    "frozen-read": ({"ctc_embed": "soft"}, {"steps": 0}),
    "frozen-hard": ({"ctc_embed": "hard"}, {"steps": 0}),
    "frozen-mean": ({"ctc_embed": "mean"}, {"ctc_weight": 0.0}),
    "frozen-noaux": ({"ctc_embed": "soft"}, {"ctc_weight": 0.0}),
}


def _value(text: str):
    """A --set value: JSON where it parses (numbers, true, null, lists), else the string (mixed_precision=no)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser() -> argparse.ArgumentParser:
    from speechllm_redundancy.slam import SlamConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--llm", default=SlamConfig.llm,
                    help=f"decoder: zoo name, local dir or hub id (default: {SlamConfig.llm})")
    ap.add_argument("--encoder", default=SlamConfig.encoder,
                    help="frozen speech encoder: zoo name, local dir or hub id "
                         f"(default: {SlamConfig.encoder})")
    ap.add_argument("--task", default="asr",
                    help="task trained and scored, e.g. asr or ast-fr-en (default: asr)")
    ap.add_argument("--corpus", default=None, help="corpus folder (default: the default profile's)")
    ap.add_argument("--train", default="train", help="training split of the corpus")
    ap.add_argument("--eval", default="test-clean", help="split scored during training")
    ap.add_argument("--warm-start", help="split the CTC warm start spells (default: --train)")
    ap.add_argument("--train-limit", type=int, help="train on (and encode) only the first N utterances")
    variants = _variants()
    ap.add_argument("--variants", nargs="*", default=["frozen-recognised", "lora-fixed"],
                    choices=list(variants),
                    help="recipe variants to train, described below (default: frozen-recognised lora-fixed)")
    ap.add_argument("--ctc-steps", type=int, default=900,
                    help="steps of the shared CTC warm start (default: 900)")
    ap.add_argument("--steps", type=int, default=200, help="next-token steps after the warm start")
    ap.add_argument("--final-sets", nargs="*", default=["test-clean", "test-other", "dev-ood"],
                    help="splits of the corpus scored at the end")
    ap.add_argument("--eval-every", type=int, default=50,
                    help="score --eval every N next-token steps, for the curves (default: 50)")
    ap.add_argument("--eval-limit", type=int, default=64, help="utterances per evaluation (during and at the end)")
    ap.add_argument("--whisper-window", default="padded", choices=("full", "padded", "trim"),
                    help="Whisper features: the utterance only, + 2 s of silence, or the 30 s window")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="TrainConfig overrides for every variant, e.g. lr=5e-4 batch_size=16")
    return ap


def main() -> None:
    from speechllm_redundancy.ceilings import gold_ceiling
    from speechllm_redundancy.data.corpus import corpus_dir
    from speechllm_redundancy.data.manifest import read_manifest
    from speechllm_redundancy.evaluation import evaluate_slam, score
    from speechllm_redundancy.slam import SlamConfig, SlamModel
    from speechllm_redundancy.training import CtcWarmup, TrainConfig, ctc_warm_start, train_from_configs

    args = build_parser().parse_args()
    variants = _variants()
    torch.set_num_threads(args.threads)
    corpus = args.corpus or str(corpus_dir("profiles/default.yaml"))
    path = lambda split: f"{corpus}/{split}.jsonl"  # noqa: E731
    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}

    warm = ctc_warm_start(args.encoder, args.llm, path(args.warm_start or args.train), steps=args.ctc_steps,
                          whisper_window=args.whisper_window, train_limit=args.train_limit)
    base = SlamModel.from_pretrained(warm.out_dir / "final")
    rows = {}  # variant → list of (minutes, score)
    finals = {}
    eval_utts = read_manifest(path(args.eval))[: args.eval_limit]
    ceiling = gold_ceiling(base.llm, base.tokenizer, args.task, eval_utts)
    if args.task == "asr":
        from speechllm_redundancy.features import cached_features

        store = cached_features(args.encoder, path(args.eval), whisper_window=args.whisper_window,
                                limit=args.eval_limit)
        ctc_hyps = CtcWarmup(base).transcribe([store[u.id] for u in eval_utts])
        ctc_alone = score("asr", [u.text for u in eval_utts], ctc_hyps)[1]
    del base
    for name in args.variants:
        slam_over, train_over = variants[name]
        cfg = replace(SlamConfig(encoder=args.encoder, llm=args.llm, whisper_window=args.whisper_window,
                                 ctc_compress=True),
                      **slam_over)
        tcfg = TrainConfig(**{"steps": args.steps, **train_over, **overrides})
        model, result = train_from_configs(cfg, tcfg, path(args.train), task=args.task,
                                           train_limit=args.train_limit, eval_manifest=path(args.eval),
                                           eval_every=args.eval_every, eval_limit=args.eval_limit,
                                           init_from=warm.out_dir / "final")
        curve = [(warm.minutes, None)]
        curve += [(warm.minutes + h["minutes"], h[k]) for h in result.history for k in ("eval_wer", "eval_bleu") if k in h]
        finals[name] = {s: evaluate_slam(model, path(s), args.task, limit=args.eval_limit)["score"]
                        for s in dict.fromkeys([*args.final_sets, *([args.eval] if tcfg.steps == 0 else [])])}
        if tcfg.steps == 0:
            curve.append((warm.minutes, finals[name][args.eval]))
        rows[name] = curve
        finals[name]["minutes"] = warm.minutes + result.minutes
        print(f"{name}: {result.out_dir}", flush=True)

    metric = "WER %" if args.task == "asr" else "BLEU"
    print(json.dumps({"llm": args.llm, "task": args.task, "ctc_steps": args.ctc_steps, "overrides": overrides,
                      "variants": {v: {"slam": variants[v][0], "train": {"steps": args.steps, **variants[v][1]}}
                                   for v in args.variants}}))
    print(f"\n{args.llm} · {args.task} · {metric} on the first {len(eval_utts)} utterances of {args.eval}")
    print(f"gold-input ceiling (the transcript/source as text, same layout): {ceiling['score']:.1f}")
    if args.task == "asr":
        print(f"CTC warm start alone ({args.ctc_steps} steps, {warm.minutes:.1f} min, greedy CTC): {ctc_alone:.1f}")
    print(f"\n{'minutes':>8} " + " ".join(f"{v:>14}" for v in rows))
    points = sorted({round(m, 2) for c in rows.values() for m, s in c if s is not None})
    for m in points:
        cells = []
        for v, c in rows.items():
            hit = [s for mm, s in c if s is not None and round(mm, 2) == m]
            cells.append(f"{hit[0]:14.1f}" if hit else f"{'':>14}")
        print(f"{m:8.1f} " + " ".join(cells))
    print(f"\nfinal ({metric}, first {args.eval_limit} utterances per set)")
    print(f"{'variant':14} {'minutes':>8} " + " ".join(f"{s:>12}" for s in args.final_sets))
    for v, f in finals.items():
        print(f"{v:14} {f['minutes']:8.1f} " + " ".join(f"{f[s]:12.1f}" for s in args.final_sets))


if __name__ == "__main__":
    main()
