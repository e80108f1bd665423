"""benchmarks/voice_intelligibility.py: WER grouped by synthesis engine or voice (hand-made hypotheses
with known errors), clear errors for a missing manifest or a row without a speaker, and one run of
``main`` on a tiny random Whisper (with a tiny tokenizer) over two tiny manifests: one table row per
engine, with the right counts."""

import dataclasses
import json
import re

import pytest
import torch

from benchmark_scripts import ROOT, load_benchmark
from slam_tiny import save_tiny_whisper, write_manifest_dir

from speechllm_redundancy.data.manifest import Utterance, read_manifest, write_manifest
from speechllm_redundancy.errors import UserError

torch.set_num_threads(1)  # tiny models: a second thread only spins on a busy CPU

pytestmark = pytest.mark.usefixtures("artifacts")  # a fresh artifacts folder per test (conftest.py)

ROW = re.compile(r"^(\S+) +(\d+) +(\d+\.\d)$")


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("voice_intelligibility")


def utt(i: int, speaker: str, text: str) -> Utterance:
    return Utterance(id=f"u{i}", audio=f"u{i}.wav", duration=1.0, sample_rate=16000, text=text,
                     speaker=speaker)


# reference, hypothesis, speaker: 0/3, 1/4, 1/2 and 3/4 word errors
CASES = [("the cat sat", "the cat sat", "espeak:en-us+m4"),
         ("a dog ran home", "a dog ran", "espeak:en-gb+f2"),
         ("fish bird", "fish bat", "flite:slt"),
         ("red blue green yellow", "red", "piper:en_US-joe-medium")]


def test_wer_by_group_by_engine_and_by_voice(bench):
    utts = [utt(i, spk, ref) for i, (ref, _, spk) in enumerate(CASES)]
    hyps = [hyp for _, hyp, _ in CASES]
    engine = bench.wer_by_group(utts, hyps, "engine")
    assert list(engine) == ["espeak", "flite", "piper", "all"]
    assert engine["espeak"] == (2, pytest.approx(100 * 1 / 7))  # corpus WER over the group, not a mean
    assert engine["flite"] == (1, pytest.approx(50.0))
    assert engine["piper"] == (1, pytest.approx(75.0))
    assert engine["all"] == (4, pytest.approx(100 * 5 / 13))
    voice = bench.wer_by_group(utts, hyps, "voice")
    assert list(voice) == ["espeak:en-gb", "espeak:en-us", "flite:slt", "piper:en_US-joe-medium", "all"]
    assert voice["espeak:en-gb"] == (1, pytest.approx(25.0)) and voice["espeak:en-us"] == (1, 0.0)
    assert voice["all"] == engine["all"]
    lines = bench.report(utts, hyps, "engine")
    assert [m.group(1) for m in map(ROW.match, lines) if m] == ["espeak", "flite", "piper", "all"]
    assert lines.count("  ref: the cat sat") == 1 and "  hyp: red" in lines


def test_missing_manifest_and_missing_speaker_are_user_errors(bench, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(UserError, match=r"test-clean\.jsonl does not exist: build the corpus: make data"):
        bench.main([])  # the default profile's corpus, not built in this fresh artifacts folder
    manifest = write_manifest_dir(tmp_path / "corpus", durations=(0.5, 0.5))  # rows without a speaker
    with pytest.raises(UserError, match=r"2 row\(s\) without a speaker \('u0', 'u1'\)"):
        bench.load_utterances([str(manifest)], 64)


def save_tiny_whisper_with_tokenizer(directory) -> str:
    """``save_tiny_whisper`` plus a 64-token Whisper tokenizer (letters and the prompt's special tokens),
    so the random model's ids decode and its prompt ids fit its vocabulary."""
    from transformers import WhisperTokenizer

    save_tiny_whisper(directory)
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    plain = ["Ġ"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    plain += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    plain += [str(d) for d in range(64 - len(plain) - len(specials))]
    vocab = {t: i for i, t in enumerate(plain + specials)}
    assert len(vocab) == 64
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    WhisperTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt")).save_pretrained(directory)
    return str(directory)


def with_speakers(manifest, speakers) -> str:
    utts = [dataclasses.replace(u, speaker=s) for u, s in zip(read_manifest(manifest), speakers)]
    return str(write_manifest(manifest, utts))


def test_main_prints_one_row_per_engine(bench, tmp_path, capsys):
    whisper = save_tiny_whisper_with_tokenizer(tmp_path / "whisper")
    first = with_speakers(write_manifest_dir(tmp_path / "a"),  # 5 rows; --n 4 leaves out the last (flite)
                          ["espeak:en-us+m4", "flite:slt", "espeak:en-gb+f2", "piper:en_US-joe-medium",
                           "flite:kal"])
    second = with_speakers(write_manifest_dir(tmp_path / "b", durations=(0.6, 1.1)),
                           ["piper:en_US-joe-medium", "espeak:en-us+f3"])
    bench.main(["--manifest", first, "--manifest", second, "--encoder", whisper, "--n", "4",
                "--threads", "1"])
    out = capsys.readouterr().out
    rows = {m.group(1): int(m.group(2)) for m in map(ROW.match, out.splitlines()) if m}
    assert rows == {"espeak": 3, "flite": 1, "piper": 2, "all": 6}, out
    assert out.startswith(f"6 utterances from {first}, {second}")
    assert out.count("  ref: utterance number") == 5  # two examples a group: espeak 2, flite 1, piper 2
    assert out.count("  hyp: ") == 5
