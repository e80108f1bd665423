"""Does encoding only the needed frames change Whisper's features enough to matter?

Encodes N utterances with the Whisper encoder padded to 30 s ("full", what the model was trained on),
trimmed to whole seconds ("trim", the cheap option for CPU runs) and trimmed with 2 s of silence after the
speech ("padded"), and prints: encoder time per utterance, cosine similarity of the kept frames to the
full window's, and the WER of Whisper's *own* greedy transcripts decoded from each encoder output (its
whole window: the padded one includes the silence) — a direct check that the frames still carry the speech.

    python benchmarks/whisper_window.py [--manifest …/test-clean.jsonl] [--n 40]
"""

from __future__ import annotations

import argparse
import time

import torch


@torch.inference_mode()
def whisper_greedy(whisper, tok, frames: torch.Tensor, max_tokens: int = 100) -> str:
    """Whisper's own greedy English transcript from given encoder frames (no timestamps), KV-cached."""
    from transformers.modeling_outputs import BaseModelOutput

    prompt = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])
    ids, out = torch.tensor([prompt]), []
    enc = BaseModelOutput(last_hidden_state=frames[None])
    step = whisper(encoder_outputs=enc, decoder_input_ids=ids, use_cache=True)
    for _ in range(max_tokens):
        nxt = step.logits[0, -1].argmax().view(1, 1)
        if int(nxt) == tok.eos_token_id:
            break
        out.append(int(nxt))
        step = whisper(encoder_outputs=enc, decoder_input_ids=nxt, past_key_values=step.past_key_values,
                       use_cache=True)
    return tok.decode(out, skip_special_tokens=True)


def token_cap(wave: torch.Tensor) -> int:
    """At most ~5 tokens per second of 16 kHz audio: greedy Whisper sometimes loops, which would swamp
    the WER."""
    return int(5 * wave.numel() / 16000) + 8


@torch.inference_mode()
def full_window(enc, wave: torch.Tensor) -> torch.Tensor:
    """All 1500 output frames of the 30 s window (what Whisper's decoder normally attends to)."""
    feats = enc.feature_extractor([wave.numpy()], sampling_rate=16000, return_tensors="pt").input_features
    return enc.model(feats).last_hidden_state[0]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", help="default: the default profile's test-clean")
    ap.add_argument("--encoder", default="whisper-base",
                    help="Whisper model: zoo name, local Hugging Face directory or hub id "
                         "(default: whisper-base)")
    ap.add_argument("--n", type=int, default=40, help="utterances, the manifest's first N (default: 40)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    return ap


def main() -> None:
    from transformers import WhisperForConditionalGeneration, WhisperTokenizer

    from speechllm_redundancy.data.audio import load_audio
    from speechllm_redundancy.data.corpus import corpus_dir
    from speechllm_redundancy.data.manifest import read_manifest
    from speechllm_redundancy.encoders import PADDED_SILENCE_SECONDS, SpeechEncoder, resolve_model
    from speechllm_redundancy.evaluation import wer

    args = build_parser().parse_args()
    torch.set_num_threads(args.threads)

    args.manifest = args.manifest or str(corpus_dir("profiles/default.yaml") / "test-clean.jsonl")
    utts = read_manifest(args.manifest)[: args.n]
    waves = [load_audio(u.audio) for u in utts]
    path = resolve_model(args.encoder)
    whisper = WhisperForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    tok = WhisperTokenizer.from_pretrained(path)
    rows = {}
    trim = SpeechEncoder.from_name(args.encoder, whisper_window="trim", device="cpu")
    silence = torch.zeros(PADDED_SILENCE_SECONDS * 16000)
    for window in ("full", "padded", "trim"):
        enc = SpeechEncoder.from_name(args.encoder, whisper_window=window, device="cpu")
        enc.encode(waves[:1])
        start = time.perf_counter()
        feats = [enc.encode([w])[0] for w in waves]
        seconds = (time.perf_counter() - start) / len(waves)
        # Whisper's decoder reads what its encoder gave: all 1500 frames (full) or the trimmed window
        whole = {"full": lambda w: full_window(enc, w),
                 "padded": lambda w: trim.encode([torch.cat([w, silence])])[0],  # = padded + its silence frames
                 "trim": None}[window]
        dec_in = [whole(w) if whole else f for f, w in zip(feats, waves)]
        hyps = [whisper_greedy(whisper, tok, f, max_tokens=token_cap(w))
                for f, w in zip(dec_in, waves)]
        per_utt = torch.tensor([wer([u.text], [h]) for u, h in zip(utts, hyps)])
        rows[window] = (seconds, feats, wer([u.text for u in utts], hyps), hyps, per_utt.median().item())
    cos = {window: torch.cat([torch.nn.functional.cosine_similarity(a, b, dim=-1)
                              for a, b in zip(rows["full"][1], rows[window][1])]) for window in ("padded", "trim")}
    audio_s = sum(w.numel() for w in waves) / 16000 / len(waves)
    print(f"{len(utts)} utterances of {audio_s:.1f} s on average from {args.manifest}")
    print(f"{'window':6} {'encode s/utt':>12} {'Whisper WER %':>14} {'median utt WER %':>17}")
    for window, (seconds, _, w, _, med) in rows.items():
        print(f"{window:6} {seconds:12.3f} {w:14.2f} {med:17.2f}")
    for window, c in cos.items():
        print(f"{window} vs full: {rows['full'][0] / rows[window][0]:.1f}x faster; kept frames' cosine similarity "
              f"mean {c.mean():.3f}, 5th percentile {c.quantile(0.05):.3f}")
    for i in range(min(3, len(utts))):
        print(f"  ref   : {utts[i].text}")
        for window in rows:
            print(f"  {window:6}: {rows[window][3][i]}")


if __name__ == "__main__":
    main()
