"""How well does a Whisper model's own decoder hear each synthetic voice of the corpus?

Every SpeechLLM here reads a *frozen* Whisper encoder, so a voice the encoder hears badly caps what any
projector and decoder built on it can reach: if Whisper's own decoder gets 40 % WER on a voice, a SLAM
model's WER on that voice is no evidence about pruning the decoder. This decodes the first N utterances
of each manifest with Whisper's own greedy decoder over its full 30 s window (what it was trained on,
`whisper_window.full_window` + `whisper_window.whisper_greedy`) and prints the WER per synthesis engine
(espeak, flite, piper) or per voice (e.g. espeak:en-us, accents merged over their variants), with an
"all" row and two reference/hypothesis pairs per group.

    python benchmarks/voice_intelligibility.py                          # default test-clean + dev-ood
    python benchmarks/voice_intelligibility.py --by voice --n 128
    python benchmarks/voice_intelligibility.py --manifest …/test-other.jsonl --encoder whisper-small
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # whisper_window, also when the tests load this file by path
    sys.path.insert(0, HERE)

from whisper_window import full_window, token_cap, whisper_greedy  # noqa: E402

from speechllm_redundancy.errors import UserError  # noqa: E402

SPLITS = ("test-clean", "dev-ood")
EXAMPLES = 2  # reference/hypothesis pairs printed per group


def group_of(speaker: str, by: str) -> str:
    """The engine ("espeak" of "espeak:en-us+m4") or the voice without its variant ("espeak:en-us")."""
    return speaker.split(":")[0] if by == "engine" else speaker.split("+")[0]


def load_utterances(manifests: list[str], n: int) -> list:
    """The first ``n`` utterances of each manifest; UserError for a missing manifest or a row without a
    speaker (checked before any model loads)."""
    from speechllm_redundancy.data.manifest import read_manifest

    utts = []
    for manifest in manifests:
        if not Path(manifest).is_file():
            raise UserError(f"manifest {manifest} does not exist: build the corpus: make data "
                            "(or pass --manifest)")
        rows = read_manifest(manifest)[:n]
        missing = [u.id for u in rows if not u.speaker]
        if missing:
            listed = ", ".join(map(repr, missing[:3])) + (", …" if len(missing) > 3 else "")
            raise UserError(f"{manifest}: {len(missing)} row(s) without a speaker ({listed}); this benchmark "
                            "groups by the synthetic voice, so it needs the corpus's manifests (make data)")
        utts += rows
    return utts


def transcribe(whisper, tok, encoder, utts) -> list[str]:
    """Whisper's own greedy transcript of each utterance, decoded from all 1500 frames of its 30 s window."""
    from speechllm_redundancy.data.audio import load_audio

    hyps = []
    for u in tqdm(utts, desc="whisper greedy", unit="utt"):
        wave = load_audio(u.audio)
        hyps.append(whisper_greedy(whisper, tok, full_window(encoder, wave), max_tokens=token_cap(wave)))
    return hyps


def wer_by_group(utts, hyps: list[str], by: str) -> dict[str, tuple[int, float]]:
    """{group: (utterances, corpus WER %)}, groups sorted, then "all" over every utterance."""
    from speechllm_redundancy.evaluation import wer

    groups: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        groups.setdefault(group_of(u.speaker, by), []).append(i)
    rows = {g: (len(idx), wer([utts[i].text for i in idx], [hyps[i] for i in idx]))
            for g, idx in sorted(groups.items())}
    rows["all"] = (len(utts), wer([u.text for u in utts], hyps))
    return rows


def report(utts, hyps: list[str], by: str) -> list[str]:
    """The table (one row per group, then "all") and up to two reference/hypothesis pairs per group."""
    rows = wer_by_group(utts, hyps, by)
    width = max(len(by), *map(len, rows))
    lines = [f"{by:{width}} {'utterances':>10} {'Whisper WER %':>14}"]
    lines += [f"{g:{width}} {n:10d} {w:14.1f}" for g, (n, w) in rows.items()]
    for g in rows:
        if g == "all":
            continue
        lines.append(f"{g}:")
        pairs = [(u.text, h) for u, h in zip(utts, hyps) if group_of(u.speaker, by) == g][:EXAMPLES]
        for ref, hyp in pairs:
            lines += [f"  ref: {ref}", f"  hyp: {hyp}"]
    return lines


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", action="append",
                    help="a manifest to decode (repeatable); default: the default profile's "
                         + " and ".join(f"{s}.jsonl" for s in SPLITS))
    ap.add_argument("--encoder", default="whisper-base",
                    help="Whisper model: zoo name, local Hugging Face directory or hub id "
                         "(default: whisper-base)")
    ap.add_argument("--n", type=int, default=64, help="utterances per manifest, its first N (default: 64)")
    ap.add_argument("--by", choices=("engine", "voice"), default="engine",
                    help="group by synthesis engine (espeak, flite, piper) or by voice without its variant "
                         "(espeak:en-us, …); default: engine")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> None:
    from transformers import WhisperForConditionalGeneration, WhisperTokenizer

    from speechllm_redundancy.data.corpus import corpus_dir
    from speechllm_redundancy.encoders import SpeechEncoder, resolve_model

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    manifests = args.manifest or [str(corpus_dir("profiles/default.yaml") / f"{s}.jsonl") for s in SPLITS]
    utts = load_utterances(manifests, args.n)
    path = resolve_model(args.encoder)
    whisper = WhisperForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    tok = WhisperTokenizer.from_pretrained(path)
    encoder = SpeechEncoder.from_name(args.encoder, whisper_window="full", device="cpu")
    hyps = transcribe(whisper, tok, encoder, utts)
    print(f"{len(utts)} utterances from {', '.join(manifests)}; "
          f"{args.encoder}'s own greedy decoding, 30 s window")
    print("\n".join(report(utts, hyps, args.by)))


if __name__ == "__main__":
    main()
