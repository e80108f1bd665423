"""WER vs training minutes for the SLAM recipe on this machine (issue 4's target: test-clean ≤ 30 %
within 30 minutes of CPU training, decoder frozen).

Trains through the cached recipe (`training.train_slam`): a rerun with the same settings prints the
stored curve at once, an interrupted one resumes. Evaluation time is not counted as training time.

    python benchmarks/slam_training.py                        # the default recipe, SmolLM2-135M, frozen
    python benchmarks/slam_training.py --lora                 # + LoRA on q, k, v, o
    python benchmarks/slam_training.py --llm qwen2.5-coder-0.5b
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import torch


def main() -> None:
    from speechllm_redundancy.evaluation import evaluate_slam
    from speechllm_redundancy.paths import artifacts_dir
    from speechllm_redundancy.slam import SlamConfig
    from speechllm_redundancy.training import TrainConfig, train_slam

    corpus = artifacts_dir() / "corpus" / "default"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", default=SlamConfig.llm)
    ap.add_argument("--encoder", default=SlamConfig.encoder)
    ap.add_argument("--train", default=str(corpus / "train.jsonl"))
    ap.add_argument("--eval", default=str(corpus / "test-clean.jsonl"))
    ap.add_argument("--train-limit", type=int, help="train on (and encode) only the first N utterances")
    ap.add_argument("--final-sets", nargs="*", default=["test-clean", "test-other", "dev-ood"],
                    help="splits of the corpus scored in full at the end")
    ap.add_argument("--final-limit", type=int, default=100, help="utterances per final set (0 = all)")
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--no-chat-template", action="store_true")
    ap.add_argument("--k", type=int, default=SlamConfig.k)
    ap.add_argument("--ctc-compress", action="store_true",
                    help="feed the LLM one vector per CTC label run (needs ctc_warmup_steps > 0)")
    ap.add_argument("--whisper-window", default="trim", choices=("trim", "full"),
                    help="Whisper encoders: encode only the utterance (trim, the CPU default) or the 30 s window")
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--eval-limit", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="TrainConfig overrides, e.g. steps=1200 lr=5e-4 ctc_warmup_steps=600")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value) if value[:1] in "0123456789-[{tfn" else value
    cfg = TrainConfig(**overrides)
    lora = {"r": 8, "alpha": 16, "dropout": 0.05} if args.lora else None
    slam_cfg = SlamConfig(encoder=args.encoder, llm=args.llm, k=args.k, lora=lora,
                          chat_template=not args.no_chat_template, whisper_window=args.whisper_window,
                          ctc_compress=args.ctc_compress)
    model, result = train_slam(slam_cfg, cfg, args.train, out_dir=None, eval_manifest=args.eval,
                               eval_every=args.eval_every, eval_limit=args.eval_limit,
                               train_limit=args.train_limit)
    print(json.dumps({"slam": asdict(slam_cfg), "train": asdict(cfg)}))
    print(f"{'phase':6} {'step':>6} {'minutes':>8} {'loss':>7} {'WER %':>7}")
    last_loss = {}
    for h in result.history:
        if "loss" in h:
            last_loss[h["phase"]] = h["loss"]
        score = h.get("eval_wer", h.get("eval_ctc_wer"))
        if score is not None:
            kind = "" if "eval_wer" in h else " (CTC greedy)"
            print(f"{h['phase']:6} {h['step']:6d} {h['minutes']:8.1f} {last_loss.get(h['phase'], float('nan')):7.3f} "
                  f"{score:7.2f}{kind}")
    for split in args.final_sets:
        manifest = corpus / f"{split}.jsonl"
        if manifest.exists():
            res = evaluate_slam(model, manifest, "asr", limit=args.final_limit or None)
            print(f"{split}: WER {res['score']:.2f} % on {res['utterances']} utterances "
                  f"({res['seconds']:.0f} s decoding)")
    print(f"run directory: {result.out_dir}")


if __name__ == "__main__":
    main()
