"""`corpus build --profile …` and `corpus validate <manifest>`."""

from __future__ import annotations

import json
from pathlib import Path


def _build(args) -> int:
    from speechllm_redundancy.data.corpus import build_corpus

    paths = build_corpus(args.profile, out_dir=args.out, workers=args.workers)
    out = next(iter(paths.values())).parent
    summary = json.loads((out / "corpus.json").read_text())
    print(
        f"corpus {out}  (last build run: {summary['build_seconds']:.0f} s, {summary['made_this_run']} audio files made)"
    )
    print(f"{'split':<14}{'utts':>8}{'hours':>9}  OOV vs training")
    for split in paths:
        oov = summary["oov"].get(split, "")
        if isinstance(oov, dict):
            oov = f"src {oov['source']:.2%} / tgt {oov['target']:.2%}"
        elif oov != "":
            oov = f"{oov:.2%}"
        print(f"{split:<14}{summary['counts'][split]:>8}{summary['hours'][split]:>9.2f}  {oov}")
    if summary["failed"]:
        print(
            f"{summary['failed']} utterance(s) could not be synthesised and were left out, e.g. {summary['failures'][0]}"
        )
    return 0


def _validate(args) -> int:
    from speechllm_redundancy.data.manifest import validate_manifest

    for manifest in args.manifest:
        result = validate_manifest(manifest, max_seconds=args.max_seconds)
        print(f"{manifest}: ok, {result['utterances']} utterances, {result['hours']:.2f} h")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("corpus", help="build or check speech corpora (manifests + audio)")
    sub = parser.add_subparsers(dest="corpus_command", required=True)
    build = sub.add_parser("build", help="build the embedded corpus (or import real ones) for a profile")
    build.add_argument(
        "--profile", default="default", help="smoke | default | path to a profile YAML (its corpus: mapping)"
    )
    build.add_argument(
        "--out", type=Path, default=None, help="output folder (default: artifacts/corpus/<name>)"
    )
    build.add_argument("--workers", type=int, default=None, help="synthesis processes (default: all cores)")
    build.set_defaults(func=_build)
    check = sub.add_parser(
        "validate", help="check manifests: UTF-8, ids unique, text present; audio present, readable, "
        "not empty, at its stated rate, short enough"
    )
    check.add_argument("manifest", nargs="+", type=Path, help="manifest(s) to check (JSON Lines)")
    check.add_argument("--max-seconds", type=float, default=30.0, help="longest audio the encoder accepts")
    check.set_defaults(func=_validate)
