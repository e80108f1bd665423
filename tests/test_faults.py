"""Faults and bad inputs: each is refused with a message naming the problem, the file / row / id and the fix,
before any expensive work starts and without leaving anything half-written that a later run would trust."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from redundancy_tiny import save_tiny
from slam_tiny import save_tiny_llm, tone, write_manifest_dir
from speechllm_redundancy import book
from speechllm_redundancy.cli import main as cli_main
from speechllm_redundancy.encoders import SpeechEncoder
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.training import TrainConfig, TrainingInterrupted, train
from test_book import write_profile
from test_encoders import whisper_dir  # noqa: F401 (the tiny Whisper fixture, shared)
from test_training import make, toy_data

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / "artifacts"))



def _edit_row(manifest: Path, index: int, **fields) -> None:
    """Change (or, with value None, remove) fields of one manifest row."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[index].update(fields)
    rows[index] = {k: v for k, v in rows[index].items() if v is not None}
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _latin1_text(manifest: Path, index: int) -> None:
    lines = manifest.read_bytes().splitlines(keepends=True)
    lines[index] = lines[index].replace(b"utterance number", "caf\u00e9 number".encode("latin-1"))
    manifest.write_bytes(b"".join(lines))


def _wav(samples: np.ndarray, rate: int = 16000):
    return lambda m: sf.write(m.parent / "u2.wav", samples, rate)


# Row u2 is line 3 and sits in the second shard (shard_size=2): before validation came first, the first
# shard was encoded and written before the bad row was even looked at.
ROW = r"train.jsonl:3: "
BAD_ROWS = {
    "missing audio": (lambda m: (m.parent / "u2.wav").unlink(), ROW + r"audio file \S*u2.wav is missing"),
    "unreadable audio": (lambda m: (m.parent / "u2.wav").write_bytes(b"RIFF garbage"),
                         ROW + r"audio file \S*u2.wav is unreadable"),
    "empty audio": (_wav(np.zeros(0, np.float32)),
                    ROW + r"audio file \S*u2.wav of 'u2' is empty \(0 samples\); re-record it"),
    "other sample rate": (_wav(tone(1.0)[::2], 8000),
                          ROW + r"audio file \S*u2.wav of 'u2' is 8000 Hz but the line says sample_rate "
                                r"16000; rebuild the manifest"),
    "longer than Whisper's window": (_wav(tone(31.0)), ROW + r"audio \S*u2.wav lasts 31.0 s, longer than the "
                                                             r"encoder's 30 s; split or drop it"),
    "empty transcript": (lambda m: _edit_row(m, 2, text="  "),
                         ROW + r"empty text for 'u2'; give its transcript"),
    "non-UTF-8 transcript": (lambda m: _latin1_text(m, 2),
                             ROW + r"not UTF-8 text \(byte 0xe9 .*re-save the manifest as UTF-8"),
    "duplicate id": (lambda m: _edit_row(m, 2, id="u1"),
                     ROW + r"duplicate id 'u1' \(first on line 2\); ids must be unique"),
    "translation row without translation": (lambda m: _edit_row(m, 2, src_lang="en", tgt_lang="de"),
                                            ROW + r"empty translation for 'u2' \(tgt_lang=de\); give its "
                                                  r"translation or drop the line"),
}


@pytest.mark.parametrize("fault", list(BAD_ROWS))
def test_a_bad_manifest_row_stops_the_feature_cache_before_any_encoding(fault, tmp_path, whisper_dir,
                                                                         monkeypatch):
    from speechllm_redundancy.features import cached_features

    manifest = write_manifest_dir(tmp_path / "corpus")
    spoil, message = BAD_ROWS[fault]
    spoil(manifest)

    def encode(self, waves):
        raise AssertionError("encoding started before the bad row was refused")

    monkeypatch.setattr(SpeechEncoder, "encode", encode)
    with pytest.raises(UserError, match=message):
        cached_features(whisper_dir, manifest, shard_size=2, batch_size=1, progress=False)
    assert not (tmp_path / "artifacts" / "features").exists()  # nothing half-written


def test_a_translation_row_without_translation_stops_training_and_evaluation_before_encoding(tmp_path,
                                                                                              whisper_dir):
    from speechllm_redundancy.evaluation import evaluate_slam
    from speechllm_redundancy.slam import SlamConfig
    from speechllm_redundancy.training import train_slam

    manifest = write_manifest_dir(tmp_path / "corpus")
    for i in range(5):
        _edit_row(manifest, i, translation=f"Satz {i}")
    _edit_row(manifest, 3, translation=None)  # a row of a translation manifest that lost its translation
    message = (r"train.jsonl: 1 utterance\(s\) have no translation for task 'ast-en-de' \('u3'\): give "
               r"each its `translation`, or use a manifest built for this task")
    config = SlamConfig(encoder=whisper_dir, llm=save_tiny_llm(tmp_path / "llm"))
    with pytest.raises(UserError, match=message):
        train_slam(config, TrainConfig(steps=1), manifest, task="ast-en-de", progress=False)
    model = SimpleNamespace(config=config)  # evaluate_slam must refuse before it touches the model
    with pytest.raises(UserError, match=message):
        evaluate_slam(model, manifest, task="ast-en-de")
    assert not (tmp_path / "artifacts" / "features").exists()  # no encoding was started


def test_a_profile_naming_an_unknown_model_or_chapter_is_refused_before_running(tmp_path):
    typo = book.load_profile(write_profile(tmp_path, models=["tiny-llama", "tiny-lama"]))
    with pytest.raises(UserError, match=r"custom.yaml names models that cannot be loaded: `models`: unknown "
                                        r"model name 'tiny-lama'; known names: .*tiny-llama"):
        book.validate_profile(typo)
    common = book.load_profile(write_profile(tmp_path, common={"speech_llms": ["smolm2-135m"]}))
    with pytest.raises(UserError, match=r"`common.speech_llms`: unknown model name 'smolm2-135m'"):
        book.validate_profile(common)
    chapters = {"03_asr_across_scales": {"encoder": "./nope/enc"}}
    path = book.load_profile(write_profile(tmp_path, chapters=chapters))
    with pytest.raises(UserError, match=r"`chapters.03_asr_across_scales.encoder`: no such directory: "
                                        r"./nope/enc"):
        book.validate_profile(path)
    chapter = book.load_profile(write_profile(tmp_path, chapters={"06_nope": {}}))
    with pytest.raises(UserError, match=r"names chapters \['06_nope'\] that do not exist: use notebook "
                                        r"stems"):
        book.validate_profile(chapter)


def test_pruning_zero_layers_is_refused_and_writes_nothing(tmp_path, capsys):
    src = save_tiny(tmp_path / "m", "qwen2", layers=4)
    out = tmp_path / "pruned"
    assert cli_main(["prune", "--model", str(src), "--start", "0", "--size", "0", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--size 0 removes no layer" in err and "Pass --size 1 or more" in err
    assert not out.exists()


# -- checkpoints: tensors and plain containers only --------------------------------------------------------
def _interrupted_run(out_dir: Path, evaluate=None) -> TrainConfig:
    cfg = TrainConfig(steps=4, batch_size=4, warmup_steps=1, checkpoint_every=1, log_every=1)
    with pytest.raises(TrainingInterrupted):
        train(make(), toy_data(), cfg, out_dir, progress=False, stop_after=2, evaluate=evaluate, eval_every=1)
    return cfg


def test_checkpoints_load_with_weights_only_and_resume(tmp_path):
    def evaluate(model):  # numpy scalars, as metrics often are
        return {"eval_wer": np.float32(0.5), "eval_n": np.int64(3)}

    cfg = _interrupted_run(tmp_path / "run", evaluate)
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=True)
    assert state["steps"] == {"slam": 2}
    assert isinstance(state["params"]["projector.net.0.weight"], torch.Tensor)
    resumed = train(make(), toy_data(), cfg, tmp_path / "run", progress=False, evaluate=evaluate, eval_every=1)
    straight = train(make(), toy_data(), cfg, tmp_path / "straight", progress=False, evaluate=evaluate,
                     eval_every=1)
    assert resumed.steps == straight.steps == {"slam": 4}

    def logged(history):  # the numbers a run logs, less its timings
        return [{k: v for k, v in h.items() if k != "minutes" and not isinstance(v, str)} for h in history]

    for got, want in zip(logged(resumed.history), logged(straight.history), strict=True):
        assert got == pytest.approx(want, rel=1e-3)  # numpy scalars came back as plain numbers


class _Planted:
    """What an altered checkpoint could hold: unpickling it calls a function (here: creates a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_checkpoint_holding_pickled_code_is_refused_without_running_it(tmp_path):
    cfg = _interrupted_run(tmp_path / "run")
    state_path = tmp_path / "run" / "checkpoint" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    marker = tmp_path / "code-ran"
    torch.save({**state, "history": [_Planted(marker)]}, state_path)
    with pytest.raises(UserError, match=r"checkpoint/state.pt is not a checkpoint this toolkit wrote .*"
                                        r"Unsupported global: GLOBAL \S*open was not an allowed global.*delete "
                                        r"\S*checkpoint to restart the run from step 0"):
        train(make(), toy_data(), cfg, tmp_path / "run", progress=False)
    assert not marker.exists()
