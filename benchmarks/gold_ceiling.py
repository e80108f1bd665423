"""Gold-input ceilings: each decoder's score when handed the gold input as text, per prompt layout.

Held-out sentences: the last N utterances of each task's *training* manifest (never a test set), so the
layout is chosen without looking at the sets the book reports. Prints one table per (decoder, task),
best layout first; the first row is what `slam.PROMPTS` should hold for that task.

    python benchmarks/gold_ceiling.py                                 # default decoders, asr + both AST
    python benchmarks/gold_ceiling.py --llm smollm2-135m --task asr --limit 64
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", nargs="*", default=["smollm2-135m", "qwen2.5-coder-0.5b"],
                    help="decoders to score: zoo names, hub ids or local dirs "
                         "(default: smollm2-135m qwen2.5-coder-0.5b)")
    ap.add_argument("--task", nargs="*", default=["asr", "ast-en-de", "ast-fr-en"],
                    help="tasks to search layouts for, of asr, ast-en-de, ast-fr-en (default: all three)")
    ap.add_argument("--corpus", help="folder holding train.jsonl, en-de-train.jsonl, … (default: the default profile's)")
    ap.add_argument("--limit", type=int, default=48, help="held-out sentences per task (the manifest's last N)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    ap.add_argument("--json", help="also write the rows to this file")
    return ap


def main() -> None:
    from speechllm_redundancy.ceilings import search_layouts
    from speechllm_redundancy.data.corpus import corpus_dir
    from speechllm_redundancy.data.manifest import read_manifest
    from speechllm_redundancy.slam import load_llm

    args = build_parser().parse_args()
    torch.set_num_threads(args.threads)
    manifests = {"asr": "train.jsonl", "ast-en-de": "en-de-train.jsonl", "ast-fr-en": "fr-en-train.jsonl"}
    rows = []
    for name in args.llm:
        llm, tok = load_llm(name)
        llm.eval()
        for task in args.task:
            utts = read_manifest(f"{args.corpus or corpus_dir('profiles/default.yaml')}/{manifests[task]}")[-args.limit:]
            start = time.perf_counter()
            table = search_layouts(llm, tok, task, utts)
            print(f"\n{name} · {task} · {len(utts)} held-out sentences · {time.perf_counter() - start:.0f} s")
            print(f"{'layout':24} {table[0]['metric'].upper():>7}  first answer")
            for r in table:
                print(f"{r['name']:24} {r['score']:7.1f}  {r['example'][:70]!r}")
                rows.append({"llm": name, "task": task, **r})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
