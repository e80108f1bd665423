"""Manifests, the validator's error messages, and audio loading (resampling, downmixing)."""

import argparse
import json
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from speechllm_redundancy.data.audio import load_audio, write_wav
from speechllm_redundancy.data.manifest import (Utterance, read_manifest, targets, validate_manifest,
                                                write_manifest)
from speechllm_redundancy.errors import UserError


def _tone(seconds, rate=16000, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.fixture
def corpus_dir(tmp_path):
    (tmp_path / "audio").mkdir()
    for name, seconds in (("a", 1.0), ("b", 0.5)):
        sf.write(tmp_path / "audio" / f"{name}.wav", _tone(seconds), 16000, subtype="PCM_16")
    return tmp_path


def _line(**row):
    base = {"id": "a", "audio": "audio/a.wav", "duration": 1.0, "sample_rate": 16000, "text": "hello there"}
    return json.dumps({**base, **row})


def test_roundtrip_keeps_paths_relative_and_fields(corpus_dir):
    utts = [
        Utterance("a", str(corpus_dir / "audio" / "a.wav"), 1.0, 16000, "hello there"),
        Utterance(
            "b", str(corpus_dir / "audio" / "b.wav"), 0.5, 16000, "guten tag", "en", "de", "good day", "spk1"
        ),
    ]
    path = write_manifest(corpus_dir / "m.jsonl", utts)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows[0]["audio"] == "audio/a.wav" and rows[1]["translation"] == "good day"
    back = read_manifest(path)
    assert back == utts
    assert validate_manifest(path) == {"utterances": 2, "hours": pytest.approx(1.5 / 3600)}


def test_target_is_the_transcript_or_the_translation():
    asr = Utterance("a", "a.wav", 1.0, 16000, "hello there")
    ast = Utterance("b", "b.wav", 1.0, 16000, "guten tag", "de", "en", "good day")
    assert asr.target("asr") == "hello there" and ast.target("ast-de-en") == "good day"
    assert ast.target("asr") == "guten tag"  # a translation row's transcript is its source sentence
    with pytest.raises(UserError, match=r"^1 utterance\(s\) have no translation for task 'ast-en-de' \('a'\)"):
        asr.target("ast-en-de")
    blank = Utterance("c", "c.wav", 1.0, 16000, "hi", "en", "de", " ")
    with pytest.raises(UserError, match=r"^m.jsonl: 2 utterance\(s\) have no translation .*\('a', 'c'\)"):
        targets([asr, ast, blank], "ast-en-de", "m.jsonl")


@pytest.mark.parametrize(
    "lines, message",
    [
        ([_line(audio="audio/missing.wav")], "m.jsonl:1: audio file .*missing.wav is missing"),
        ([_line(), _line(id="b", text="  ")], "m.jsonl:2: empty text for 'b'"),
        ([_line(), _line(audio="audio/b.wav")], "m.jsonl:2: duplicate id 'a' \\(first on line 1\\)"),
        ([_line(), "{not json"], "m.jsonl:2: not valid JSON"),
        ([json.dumps({"id": "a", "audio": "audio/a.wav"})], "m.jsonl:1: missing field\\(s\\) text"),
        ([_line(audio="audio/bad.wav")], "m.jsonl:1: audio file .*bad.wav is unreadable"),
        ([_line(tgt_lang="de", translation="")], "m.jsonl:1: empty translation"),
    ],
)
def test_validator_names_file_line_and_problem(corpus_dir, lines, message):
    (corpus_dir / "audio" / "bad.wav").write_bytes(b"RIFF garbage, not audio")
    path = corpus_dir / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=message):
        validate_manifest(path)


def test_validator_rejects_audio_too_long_for_the_encoder(corpus_dir):
    path = corpus_dir / "m.jsonl"
    path.write_text(_line() + "\n")
    assert validate_manifest(path, max_seconds=2.0)["utterances"] == 1
    with pytest.raises(
        UserError, match=r"m.jsonl:1: audio .*a.wav lasts 1.0 s, longer than the encoder's 0.5 s"
    ):
        validate_manifest(path, max_seconds=0.5)


def test_read_manifest_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "m.jsonl").write_text('{"id": "a", "audio": "x.wav", "text": "t", "colour": 1}\n')
    with pytest.raises(UserError, match=r"m.jsonl:1: unknown field\(s\) colour"):
        read_manifest(tmp_path / "m.jsonl")


def test_load_audio_resamples_and_downmixes(tmp_path):
    sf.write(tmp_path / "st.wav", _tone(1.0, rate=44100, channels=2), 44100, subtype="PCM_16")
    sf.write(tmp_path / "mono.flac", _tone(0.5), 16000)
    wave = load_audio(tmp_path / "st.wav")
    assert wave.ndim == 1 and wave.dtype == torch.float32 and abs(len(wave) - 16000) <= 1
    assert 0.25 < float(wave.abs().max()) < 0.35  # the tone survives downmix + resampling
    assert len(load_audio(tmp_path / "mono.flac")) == 8000
    with pytest.raises(UserError, match="does not exist"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "bad.wav").write_bytes(b"nonsense")
    with pytest.raises(UserError, match="unreadable"):
        load_audio(tmp_path / "bad.wav")


def test_write_wav_is_atomic(tmp_path, monkeypatch):
    from speechllm_redundancy.data import audio

    def broken_write(path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"RIFF half")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(sf, "write", broken_write)
    with pytest.raises(KeyboardInterrupt):
        audio.write_wav(tmp_path / "x.wav", np.zeros(10))
    assert list(tmp_path.iterdir()) == []  # no half-written file left to pass as complete


def _cli(argv):
    """Run `corpus …` through this area's own parser registration (and the CLI's error handling)."""
    from speechllm_redundancy.data import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def test_cli_validate_exit_codes(corpus_dir, capsys):
    good, bad = corpus_dir / "good.jsonl", corpus_dir / "bad.jsonl"
    good.write_text(_line() + "\n")
    bad.write_text(_line(audio="audio/none.wav") + "\n")
    assert _cli(["corpus", "validate", str(good)]) == 0
    assert "ok, 1 utterances" in capsys.readouterr().out
    assert _cli(["corpus", "validate", str(bad)]) == 2
    assert "bad.jsonl:1: audio file" in capsys.readouterr().err
    write_wav(corpus_dir / "audio" / "long.wav", _tone(3.0))
    good.write_text(_line(audio="audio/long.wav") + "\n")
    assert _cli(["corpus", "validate", str(good), "--max-seconds", "2"]) == 2
