"""Whisper feature encoding speed: the feature cache at fp32 (as before issue 16) against bf16, in one run.

Both paths encode the same utterances through ``features._encode_shard`` (what ``cached_features`` runs per
shard: utterances of one padded length batched together, ``--batch-size`` at most, frames stored as fp16);
only the encoder's ``precision`` differs:
  fp32   ``SpeechEncoder(precision="fp32")``: the encoder as it ran before (today's ~7 utterances/s)
  new    ``precision="auto"``: bf16 matrix products where the CPU has native bf16 (else fp32 again)
The stored (fp16) features must agree within bf16 rounding: per utterance ‖new − fp32‖ / ‖fp32‖ ≤
``REL_TOL`` and a mean frame cosine ≥ ``COS_TOL`` (else the worst utterance is printed and the run exits
non-zero). Audio is read before timing; times exclude a short untimed warm-up.

    python benchmarks/bench_encoding.py                               # whisper-base, trim, default train set
    python benchmarks/bench_encoding.py --manifest test-clean.jsonl --limit 64 --window padded
    python benchmarks/bench_encoding.py --tiny                        # tiny random Whisper (the test)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from speechllm_redundancy.encoders import SAMPLE_RATE, WHISPER_WINDOWS, SpeechEncoder
from speechllm_redundancy.features import _encode_shard

REL_TOL = 0.10  # per-utterance relative error (bf16 rounding: median 1.2 %, ≤ 5.2 % on 128 utterances)
COS_TOL = 0.99  # per-utterance mean frame cosine (measured ≥ 0.9976); misplaced frames give ≪ 0.9


class _Quiet:
    def update(self, n: int) -> None:
        pass


def encode_all(encoder: SpeechEncoder, utts, waves: dict, batch_size: int) -> tuple[dict, float, float]:
    """The fp16 frames ``cached_features`` would store for ``utts`` (one shard), and the wall-clock and CPU
    seconds taken (CPU time, with one thread, is the steadier measure on a busy machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = _encode_shard(encoder, utts, waves.__getitem__, batch_size, _Quiet())
    return out, time.perf_counter() - wall, time.process_time() - cpu


def agreement(new: dict, ref: dict) -> dict[str, tuple[float, float, float]]:
    """Utterance id → (relative error, mean frame cosine, worst frame cosine) of ``new`` against ``ref``."""
    out = {}
    for u, r in ref.items():
        a, b = new[u].float(), r.float()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        out[u] = (((a - b).norm() / b.norm()).item(), cos.mean().item(), cos.min().item())
    return out


def worst(agree: dict) -> str | None:
    """The utterance whose features are furthest from the fp32 ones, if beyond tolerance (None: all agree)."""
    u = max(agree, key=lambda k: (agree[k][0] > REL_TOL or agree[k][1] < COS_TOL, agree[k][0]))
    return u if agree[u][0] > REL_TOL or agree[u][1] < COS_TOL else None


def tiny_inputs(n: int, directory: Path):
    """A tiny random Whisper (the tests') saved in ``directory`` and n tones of 0.5–4 s."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from slam_tiny import save_tiny_whisper, tone

    g = np.random.default_rng(0)
    seconds = g.uniform(0.5, 4.0, n)
    return save_tiny_whisper(directory), [(f"tone{i}", torch.from_numpy(tone(s, 150 + 20 * i, i)))
                                          for i, s in enumerate(seconds)]


def manifest_inputs(manifest: str, limit: int):
    """(id, waveform) of the manifest's first ``limit`` utterances."""
    from speechllm_redundancy.data.audio import load_audio
    from speechllm_redundancy.data.manifest import read_manifest

    return [(u.id, load_audio(u.audio)) for u in read_manifest(manifest)[:limit]]


class _Utt:
    """What ``_encode_shard`` reads of a manifest row."""

    def __init__(self, uid: str):
        self.id = self.audio = uid


def run(encoders: dict[str, SpeechEncoder], items, batch_size: int, repeats: int = 1) -> dict:
    """Path name → (stored features, best wall seconds, best CPU seconds over ``repeats``), the paths
    alternating each round."""
    utts, waves = [_Utt(u) for u, _ in items], dict(items)
    for enc in encoders.values():  # warm-up: one short batch each (and the bf16 weights packed)
        _encode_shard(enc, utts[:1], waves.__getitem__, batch_size, _Quiet())
    result: dict = {}
    for _ in range(repeats):
        for name, enc in encoders.items():
            feats, wall, cpu = encode_all(enc, utts, waves, batch_size)
            best = result.get(name, (None, float("inf"), float("inf")))
            result[name] = (feats, min(wall, best[1]), min(cpu, best[2]))
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="whisper-base", help="zoo name, local HF directory or hub id")
    parser.add_argument("--manifest", help="default: the default profile's train.jsonl")
    parser.add_argument("--limit", type=int, help="utterances (default 128; 12 with --tiny)")
    parser.add_argument("--window", default="trim", choices=WHISPER_WINDOWS,
                        help="Whisper input: the full 30 s window, the utterance + 2 s (padded) or the "
                             "utterance only (trim, the default)")
    parser.add_argument("--batch-size", type=int, default=16, help="cached_features' batch (its default)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of both paths; the best time counts")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Whisper on tones (the test)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            args.encoder, items = tiny_inputs(args.limit or 12, Path(tmp) / "whisper")
        else:
            from speechllm_redundancy.data.corpus import corpus_dir

            manifest = args.manifest or str(corpus_dir("profiles/default.yaml") / "train.jsonl")
            items = manifest_inputs(manifest, args.limit or 128)
        encoders = {p: SpeechEncoder.from_name(args.encoder, whisper_window=args.window, device="cpu",
                                               precision="fp32" if p == "fp32" else "auto")
                    for p in ("fp32", "new")}
        result = run(encoders, items, args.batch_size, args.repeats)
    agree = agreement(result["new"][0], result["fp32"][0])
    bad = worst(agree)
    if bad is not None:
        rel, cos, low = agree[bad]
        print(f"features differ beyond bf16 tolerance at {bad}: relative error {rel:.4f} (≤ {REL_TOL}), "
              f"mean frame cosine {cos:.5f} (≥ {COS_TOL}), worst frame {low:.3f}")
        return 1
    audio = sum(w.numel() for _, w in items) / SAMPLE_RATE / len(items)
    rate = {p: len(items) / wall for p, (_, wall, _) in result.items()}
    print(f"\n{Path(args.encoder).name} ({args.window} window): {len(items)} utterances of {audio:.1f} s on "
          f"average, {torch.get_num_threads()} CPU threads, batches of ≤ {args.batch_size} by padded length")
    print(f"{'path':>5} | {'precision':>9} {'seconds':>8} {'utt/s':>7} {'× fp32':>7} | "
          f"{'CPU s':>7} {'× fp32':>7}")
    for p, enc in encoders.items():
        _, wall, cpu = result[p]
        print(f"{p:>5} | {enc.precision:>9} {wall:>8.2f} {rate[p]:>7.2f} {rate[p] / rate['fp32']:>6.1f}× | "
              f"{cpu:>7.2f} {result['fp32'][2] / cpu:>6.1f}×")
    rels = [a[0] for a in agree.values()]
    print(f"stored features agree within bf16 tolerance: relative error max {max(rels):.4f} "
          f"(mean {np.mean(rels):.4f}), mean frame cosine ≥ {min(a[1] for a in agree.values()):.5f}, "
          f"worst frame {min(a[2] for a in agree.values()):.3f}")
    print(f"encoding speed-up: {rate['new'] / rate['fp32']:.1f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
