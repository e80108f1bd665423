"""Faults and bad inputs: each is refused with a message naming the problem, the file / row / id and the fix,
before any expensive work starts and without leaving anything half-written that a later run would trust."""

from __future__ import annotations

import errno
import io
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas.testing as pd_testing
import pytest
import soundfile as sf
import torch

from redundancy_tiny import save_tiny
from slam_tiny import save_tiny_llm, tone, write_manifest_dir
from speechllm_redundancy import chapter_runs, profiles
from speechllm_redundancy.cli import main as cli_main
from speechllm_redundancy.encoders import SpeechEncoder
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.training import TrainConfig, TrainingInterrupted, train
from test_book import write_profile
from test_encoders import whisper_dir  # noqa: F401 (the tiny Whisper fixture, shared)
from test_training import make, toy_data

torch.set_num_threads(2)


pytestmark = pytest.mark.usefixtures("artifacts")  # a fresh artifacts folder per test (conftest.py)



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
    from speechllm_redundancy.training import train_from_configs

    manifest = write_manifest_dir(tmp_path / "corpus")
    for i in range(5):
        _edit_row(manifest, i, translation=f"Satz {i}")
    _edit_row(manifest, 3, translation=None)  # a row of a translation manifest that lost its translation
    message = (r"train.jsonl: 1 utterance\(s\) have no translation for task 'ast-en-de' \('u3'\): give "
               r"each its `translation`, or use a manifest built for this task")
    config = SlamConfig(encoder=whisper_dir, llm=save_tiny_llm(tmp_path / "llm"))
    with pytest.raises(UserError, match=message):
        train_from_configs(config, TrainConfig(steps=1), manifest, task="ast-en-de", progress=False)
    model = SimpleNamespace(config=config)  # evaluate_slam must refuse before it touches the model
    with pytest.raises(UserError, match=message):
        evaluate_slam(model, manifest, task="ast-en-de")
    assert not (tmp_path / "artifacts" / "features").exists()  # no encoding was started


def test_a_profile_naming_an_unknown_model_or_chapter_is_refused_before_running(tmp_path):
    typo = profiles.load_profile(write_profile(tmp_path, models=["tiny-llama", "tiny-lama"]))
    with pytest.raises(UserError, match=r"custom.yaml names models that cannot be loaded: `models`: unknown "
                                        r"model name 'tiny-lama'; known names: .*tiny-llama"):
        profiles.validate_profile(typo)
    common = profiles.load_profile(write_profile(tmp_path, common={"speech_llms": ["smolm2-135m"]}))
    with pytest.raises(UserError, match=r"`common.speech_llms`: unknown model name 'smolm2-135m'"):
        profiles.validate_profile(common)
    chapters = {"03_asr_across_scales": {"encoder": "./nope/enc"}}
    path = profiles.load_profile(write_profile(tmp_path, chapters=chapters))
    with pytest.raises(UserError, match=r"`chapters.03_asr_across_scales.encoder`: no such directory: "
                                        r"./nope/enc"):
        profiles.validate_profile(path)
    per_direction = {"04_speech_translation": {"ast_encoder": {"fr-en": "tiny-whisperr"}}}
    path = profiles.load_profile(write_profile(tmp_path, chapters=per_direction))
    with pytest.raises(UserError, match=r"`chapters.04_speech_translation.ast_encoder.fr-en`: unknown model name "
                                        r"'tiny-whisperr'"):
        profiles.validate_profile(path)
    chapter = profiles.load_profile(write_profile(tmp_path, chapters={"06_nope": {}}))
    with pytest.raises(UserError, match=r"names chapters \['06_nope'\] that do not exist: use notebook "
                                        r"stems"):
        profiles.validate_profile(chapter)


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
    # the checksum record catches damage, not intent: whoever plants a file can rewrite its record as well
    (state_path.parent / "checksums.json").unlink()
    with pytest.raises(UserError, match=r"checkpoint/state.pt is not a checkpoint this toolkit wrote .*"
                                        r"Unsupported global: GLOBAL \S*open was not an allowed global.*delete "
                                        r"\S*checkpoint to restart the run from step 0"):
        train(make(), toy_data(), cfg, tmp_path / "run", progress=False)
    assert not marker.exists()


# -- damaged caches: a size + sha256 recorded at write time, checked at read time --------------------------
def _damage(path: Path, damage: str, at: int = -1) -> None:
    """"truncated": cut to half its size, as a kill during a copy or a full disk leaves a file; "altered": one
    byte flipped, the size kept (by default the last: inside the last tensor's data, so the file still
    parses)."""
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2:]
    else:
        data[at] ^= 0x01
    path.write_bytes(bytes(data))


# what each damage is called in the message naming the file
PROBLEM = {"truncated": r"\d+ bytes, \d+ when written",
           "altered": r"its sha256 differs from the one recorded"}


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_a_damaged_feature_shard_is_encoded_again_with_a_warning_naming_it(damage, tmp_path, whisper_dir,
                                                                             monkeypatch):
    from speechllm_redundancy.features import cached_features

    manifest = write_manifest_dir(tmp_path / "corpus")
    store = cached_features(whisper_dir, manifest, shard_size=2, batch_size=1, progress=False)
    original = {u: store[u].clone() for u in store}
    _damage(store.directory / "shard-00001.safetensors", damage)
    encoded = []
    real = SpeechEncoder.encode
    monkeypatch.setattr(SpeechEncoder, "encode",
                        lambda self, waves: encoded.append(len(waves)) or real(self, waves))
    with pytest.warns(UserWarning, match=rf"shard-00001.safetensors is damaged \({PROBLEM[damage]}.*\): "
                                         r"deleted it, computing it again"):
        again = cached_features(whisper_dir, manifest, shard_size=2, batch_size=1, progress=False)
    assert sum(encoded) == 2  # the two utterances of that shard, nothing else
    assert sorted(again) == sorted(original)
    assert all(torch.equal(again[u], original[u]) for u in original)


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_a_damaged_walk_point_is_recomputed_with_a_warning_naming_it(damage, tmp_path):
    from speechllm_redundancy.sweep import walk_path
    from test_sweep import LayerCountScore

    slam, score = make(init=0.3), LayerCountScore()
    first = walk_path(slam, {1: 2}, [1], ["a"], score, tmp_path, progress=False)
    point = next(tmp_path.glob("point-n1-*.json"))
    text = point.read_text()
    if damage == "truncated":
        _damage(point, damage)
    else:
        altered = text.replace('"a": 0.1', '"a": 0.7', 1)
        assert altered != text and json.loads(altered)  # still valid JSON, a plausible score
        point.write_text(altered)
    calls = len(score.calls)
    with pytest.warns(UserWarning, match=rf"{point.name} is damaged \({PROBLEM[damage]}.*\): deleted it, "
                                         r"computing it again"):
        again = walk_path(slam, {1: 2}, [1], ["a"], score, tmp_path, progress=False)
    assert len(score.calls) == calls + 1  # that point, scored again; the baseline stayed cached
    assert again.score.tolist() == first.score.tolist()
    assert json.loads(point.read_text()) == json.loads(text)


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_a_damaged_final_slam_model_is_refused_naming_the_file_and_the_fix(damage, tmp_path):
    cfg = TrainConfig(steps=2, batch_size=4, warmup_steps=1)
    train(make(), toy_data(), cfg, tmp_path / "run", progress=False)
    _damage(tmp_path / "run" / "final" / "model.safetensors", damage)
    with pytest.raises(UserError, match=rf"final/model.safetensors is damaged \({PROBLEM[damage]}.*\): "
                                        r"delete \S*run to train it again"):
        train(make(), toy_data(), cfg, tmp_path / "run", progress=False)
    with pytest.raises(UserError, match=rf"model.safetensors is damaged \({PROBLEM[damage]}.*\): delete "
                                        r"\S*final and save the model again"):
        make().load_weights(tmp_path / "run" / "final")


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_fix(damage, tmp_path):
    cfg = _interrupted_run(tmp_path / "run")
    state_path = tmp_path / "run" / "checkpoint" / "state.pt"
    _damage(state_path, damage, at=state_path.stat().st_size // 2)
    with pytest.raises(UserError, match=rf"checkpoint/state.pt is damaged \({PROBLEM[damage]}.*\): delete "
                                        r"\S*checkpoint to restart the run from step 0"):
        train(make(), toy_data(), cfg, tmp_path / "run", progress=False)


def _cut_short_without_a_record(entry: Path, name: str) -> None:
    """Entry ``entry`` as written before checksum records existed, its file ``name`` then cut in half."""
    from speechllm_redundancy.cache import RECORD

    (entry / RECORD).unlink()
    _damage(entry / name, "truncated", at=(entry / name).stat().st_size // 2)


def test_a_truncated_checkpoint_from_before_checksum_records_is_refused_naming_the_file(tmp_path):
    """A checkpoint written before entries carried size and sha256 records cannot be checked against them;
    cut short, torch's reader fails, and that too is the toolkit's message, not torch's."""
    cfg = _interrupted_run(tmp_path / "run")
    _cut_short_without_a_record(tmp_path / "run" / "checkpoint", "state.pt")
    with pytest.raises(UserError, match=r"checkpoint/state.pt is not a checkpoint this toolkit wrote .*damaged"
                                        r".*delete \S*checkpoint to restart the run from step 0"):
        train(make(), toy_data(), cfg, tmp_path / "run", progress=False)


def test_a_truncated_slam_model_from_before_checksum_records_is_refused_naming_the_file(tmp_path):
    """The same for a saved SLAM model from before records: its weights file cut short is the toolkit's
    message naming the file, not safetensors' error."""
    from speechllm_redundancy.slam import SlamModel

    model = make()
    saved = model.save_pretrained(tmp_path / "model")
    _cut_short_without_a_record(saved, "model.safetensors")
    with pytest.raises(UserError, match=r"model/model.safetensors cannot be read \(.*\): the file is damaged"):
        SlamModel.from_pretrained(saved, llm=model.llm, tokenizer=model.tokenizer)


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_a_damaged_converted_model_is_built_again_with_a_warning_naming_the_file(damage):
    from speechllm_redundancy.zoo import resolve

    path = Path(resolve("tiny-llama"))
    weights = path / "model.safetensors"
    original = weights.read_bytes()
    _damage(weights, damage)
    with pytest.warns(UserWarning, match=rf"model.safetensors is damaged \({PROBLEM[damage]}.*\): building "
                                         r"tiny-llama again"):
        assert Path(resolve("tiny-llama")) == path
    assert weights.read_bytes() == original


# -- a full disk: the write fails part-way; nothing half-written stays, the user is told what to do ---------
class _FullDisk:
    """The disk below ``root`` fills up during the ``nth`` write of a file named ``fills_in``: that write puts
    out half its bytes, then it and every later write below ``root`` fail with ENOSPC, until ``free()``.
    Intercepted where the bytes leave: files opened for writing (``io.open``, which ``Path.write_text``
    uses), and ``torch.save`` / safetensors' ``save_file``, which write from C++ / Rust past any Python file
    object (their bytes are made in memory here, then written as far as they fit)."""

    def __init__(self, monkeypatch, root: Path, fills_in: str, nth: int = 1):
        import safetensors.torch

        self.root, self.fills_in, self.nth = root.resolve(), fills_in, nth
        self.full = self.freed = False
        real_open, real_save, real_save_file = io.open, torch.save, safetensors.torch.save_file

        def open_(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            return _Metered(handle, self, self._fills(file)) if self._watches(file, mode) else handle

        def save(obj, f, *args, **kwargs):
            if not self._watches(f, "wb"):
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            with open_(f, "wb") as handle:
                handle.write(buffer.getvalue())

        def save_file(tensors, filename, metadata=None):
            if not self._watches(filename, "wb"):
                return real_save_file(tensors, filename, metadata)
            with open_(filename, "wb") as handle:
                handle.write(safetensors.torch.save(tensors, metadata))

        monkeypatch.setattr(io, "open", open_)
        monkeypatch.setattr(torch, "save", save)
        monkeypatch.setattr(safetensors.torch, "save_file", save_file)

    def free(self) -> None:
        """Space again: writes go through untouched."""
        self.freed = True

    def _watches(self, file, mode: str) -> bool:
        return (not self.freed and isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+")
                and self.root in Path(file).resolve().parents)

    def _fills(self, file) -> bool:
        """Whether the disk fills while ``file`` (being opened) is written."""
        if Path(file).name != self.fills_in or self.full:
            return False
        self.nth -= 1
        return self.nth == 0

    def fit(self, fills: bool, size: int) -> int:
        """How many of ``size`` bytes fit; the write that ``fills`` the disk gets half of them out."""
        if self.full:
            return 0
        if fills:
            self.full = True
            return size // 2
        return size


class _Metered:
    """A file opened for writing on a ``_FullDisk``."""

    def __init__(self, handle, disk: _FullDisk, fills: bool):
        self._handle, self._disk, self._fills = handle, disk, fills

    def write(self, data):
        fit = self._disk.fit(self._fills, len(data))
        if fit < len(data):
            self._handle.write(data[:fit])
            self._handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()

    def __getattr__(self, name):
        return getattr(self._handle, name)


def _temporaries(root: Path) -> list[Path]:
    """What a writer's temporaries (``.<name>.<random>.tmp``) left below ``root``."""
    from speechllm_redundancy.cache import TEMPORARY

    return [p for p in root.rglob("*") if TEMPORARY.match(p.name)]


NO_SPACE = r": no space left on device while writing it; nothing was stored\. Free space on that disk, or "
BIGGER = {"the cache": "set SPEECHLLM_ARTIFACTS to a folder on a bigger disk",
          "elsewhere": "write it to a bigger disk"}


@pytest.mark.parametrize("where", ["the cache", "elsewhere"])
@pytest.mark.parametrize("fills_in", ["the value", "its checksum record"])
def test_a_disk_filling_up_while_a_json_entry_is_written_stores_nothing_and_says_what_to_do(
        fills_in, where, tmp_path, artifacts, monkeypatch):
    from speechllm_redundancy.cache import cached_json, verify_entry

    entry = (artifacts if where == "the cache" else tmp_path / "mine") / "points" / "point-n3.json"
    value = {"n": 3, "scores": {f"set{i}": round(i / 7, 6) for i in range(40)}}
    record = f".{entry.name}.sha256.json"
    disk = _FullDisk(monkeypatch, tmp_path, entry.name if fills_in == "the value" else record)
    with pytest.raises(UserError, match=rf"^{re.escape(str(entry))}{NO_SPACE}{BIGGER[where]}, then run "
                                        r"again\.$"):
        cached_json(entry, lambda: value)
    assert disk.full  # it filled part-way through the write
    assert [p.name for p in entry.parent.iterdir()] == [f".{entry.name}.lock"]  # no entry, record, temporary

    disk.free()
    assert cached_json(entry, lambda: value) == value
    assert verify_entry(entry)  # whole, and sealed
    straight = tmp_path / "straight" / entry.name
    assert cached_json(straight, lambda: value) == value
    assert entry.read_bytes() == straight.read_bytes()
    assert cached_json(entry, lambda: pytest.fail("computed again")) == value  # a hit from now on


def test_a_disk_filling_up_inside_an_entry_written_as_one_names_that_entry(tmp_path, monkeypatch):
    """As ``slam heal`` saves its output: a model and a record written into the temporary of one folder."""
    from speechllm_redundancy.cache import atomic_path, atomic_write_json

    out = tmp_path / "healed"
    _FullDisk(monkeypatch, tmp_path, "heal.json")
    with pytest.raises(UserError, match=rf"^{re.escape(str(out))}{NO_SPACE}"), atomic_path(out) as tmp:
        tmp.mkdir()
        atomic_write_json(tmp / "heal.json", {"start": 3}, seal=True)
    assert not out.exists() and _temporaries(tmp_path) == []


def test_a_disk_filling_up_while_features_are_encoded_keeps_the_whole_shards_and_resumes(
        tmp_path, whisper_dir, artifacts, monkeypatch):
    from speechllm_redundancy.cache import verify_entry
    from speechllm_redundancy.features import cached_features, features_dir

    manifest = write_manifest_dir(tmp_path / "corpus")  # five utterances: shards of 2, 2 and 1
    out = features_dir(whisper_dir, manifest, "full", 2)
    disk = _FullDisk(monkeypatch, artifacts, "shard-00001.safetensors")
    with pytest.raises(UserError, match=rf"^{re.escape(str(out / 'shard-00001.safetensors'))}{NO_SPACE}"
                                        rf"{BIGGER['the cache']}"):
        cached_features(whisper_dir, manifest, shard_size=2, batch_size=1, progress=False)
    assert disk.full
    assert _entries(out) == ["shard-00000.safetensors"]  # the shard stored before the disk filled; no index
    assert verify_entry(out / "shard-00000.safetensors")
    assert _temporaries(artifacts) == []

    disk.free()
    encoded = []
    real = SpeechEncoder.encode
    monkeypatch.setattr(SpeechEncoder, "encode",
                        lambda self, waves: encoded.append(len(waves)) or real(self, waves))
    resumed = cached_features(whisper_dir, manifest, shard_size=2, batch_size=1, progress=False)
    assert sum(encoded) == 3  # the shards missing, not the one stored
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / "straight"))
    straight = cached_features(whisper_dir, manifest, shard_size=2, batch_size=1, progress=False)
    assert straight.directory != resumed.directory and sorted(straight) == sorted(resumed)
    assert all(torch.equal(resumed[u], straight[u]) for u in straight)


def _rerun_trains_alike(monkeypatch, cfg, run_dir, straight_dir) -> int:
    """Train into the interrupted ``run_dir`` again and, beside it, straight into ``straight_dir``; both end
    with the same weights and losses. Returns how many forward passes the re-run needed."""
    from speechllm_redundancy.slam import SlamModel

    forwards = []
    real = SlamModel.forward
    monkeypatch.setattr(SlamModel, "forward", lambda self, *a, **k: forwards.append(1) or real(self, *a, **k))
    resumed_model, straight_model = make(), make()
    resumed = train(resumed_model, toy_data(), cfg, run_dir, progress=False)
    rerun_forwards = len(forwards)
    straight = train(straight_model, toy_data(), cfg, straight_dir, progress=False)
    for (name, p), (_, q) in zip(straight_model.trainable_parameters().items(),
                                 resumed_model.trainable_parameters().items(), strict=True):
        assert torch.equal(p, q), name
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    return rerun_forwards


def test_a_disk_filling_up_while_a_checkpoint_is_saved_keeps_the_last_one_and_resumes_to_the_same_weights(
        tmp_path, artifacts, monkeypatch):
    from speechllm_redundancy.cache import verify_entry

    cfg = TrainConfig(steps=4, batch_size=4, warmup_steps=1, checkpoint_every=1, log_every=1)
    run_dir = artifacts / "run"
    disk = _FullDisk(monkeypatch, artifacts, "state.pt", nth=3)  # the checkpoint of step 3
    with pytest.raises(UserError, match=rf"^{re.escape(str(run_dir / 'checkpoint'))}{NO_SPACE}"
                                        rf"{BIGGER['the cache']}"):
        train(make(), toy_data(), cfg, run_dir, progress=False)
    assert disk.full
    assert _entries(run_dir) == ["checkpoint"]  # no result.json, no final/: not a finished run
    assert verify_entry(run_dir / "checkpoint", hash_limit=None)  # step 2's, whole
    assert torch.load(run_dir / "checkpoint" / "state.pt", weights_only=True)["steps"] == {"slam": 2}
    assert _temporaries(artifacts) == []

    disk.free()
    # the re-run does steps 3 and 4, from step 2's checkpoint
    assert _rerun_trains_alike(monkeypatch, cfg, run_dir, tmp_path / "straight") == 2


def test_a_disk_filling_up_while_the_trained_model_is_saved_leaves_no_final_model_and_saves_it_on_rerun(
        tmp_path, artifacts, monkeypatch):
    from safetensors.torch import load_file

    cfg = TrainConfig(steps=2, batch_size=4, warmup_steps=1, checkpoint_every=1)
    run_dir = artifacts / "run"
    disk = _FullDisk(monkeypatch, artifacts, "model.safetensors")  # in SlamModel.save_pretrained
    with pytest.raises(UserError, match=rf"^{re.escape(str(run_dir / 'final'))}{NO_SPACE}"
                                        rf"{BIGGER['the cache']}"):
        train(make(), toy_data(), cfg, run_dir, progress=False)
    assert disk.full
    assert _entries(run_dir) == ["checkpoint"]  # no final/, no result.json: not a finished run
    assert _temporaries(artifacts) == []

    disk.free()
    # the checkpoint held every step: only the save was left to do
    assert _rerun_trains_alike(monkeypatch, cfg, run_dir, tmp_path / "straight") == 0
    saved, want = (load_file(d / "final" / "model.safetensors") for d in (run_dir, tmp_path / "straight"))
    assert saved.keys() == want.keys() and all(torch.equal(saved[k], want[k]) for k in want)
    make().load_weights(run_dir / "final")  # whole and sealed: it loads


# -- two runs at once: one lock per cache entry ------------------------------------------------------------
def _slow_json_entry(path: str, counter: str, out: str, barrier) -> None:
    """A run asking for a JSON entry whose computation takes a second (each computation logged)."""
    from speechllm_redundancy.cache import cached_json

    def compute():
        with open(counter, "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        return {"computed_by": os.getpid()}

    barrier.wait()
    Path(out).write_text(json.dumps(cached_json(path, compute)))


def test_two_processes_asking_for_one_json_entry_compute_it_once(tmp_path):
    ctx = multiprocessing.get_context("fork")  # the child runs only the cache code: no torch after the fork
    barrier = ctx.Barrier(2)
    entry, counter = tmp_path / "cache" / "value.json", tmp_path / "computations.log"
    got = [tmp_path / f"got{i}" for i in range(2)]
    runs = [ctx.Process(target=_slow_json_entry, args=(str(entry), str(counter), str(out), barrier))
            for out in got]
    for run in runs:
        run.start()
    for run in runs:
        run.join(60)
        assert run.exitcode == 0
    assert len(counter.read_text().splitlines()) == 1  # computed once
    values = [json.loads(out.read_text()) for out in got]
    assert values[0] == values[1] == json.loads(entry.read_text())
    assert sorted(p.name for p in entry.parent.iterdir() if not p.name.startswith(".")) == ["value.json"]


def test_a_killed_lock_holder_does_not_block_the_next_run(tmp_path):
    from speechllm_redundancy.cache import entry_lock

    script = textwrap.dedent("""
        import sys, time
        from speechllm_redundancy.cache import entry_lock
        with entry_lock(sys.argv[1]):
            print("locked", flush=True)
            time.sleep(120)
    """)
    entry = tmp_path / "entry.json"
    holder = subprocess.Popen([sys.executable, "-c", script, str(entry)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        waited = threading.Event()

        def take():
            with entry_lock(entry):
                waited.set()

        taker = threading.Thread(target=take)
        taker.start()
        assert not waited.wait(0.5)  # held by the other process
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    taker.join(10)
    assert waited.is_set()  # the kernel dropped the dead holder's lock
    assert not entry.exists()  # the lock file is not the entry


def test_two_runs_asking_for_one_feature_set_encode_it_once(tmp_path, whisper_dir, monkeypatch):
    from speechllm_redundancy.features import cached_features

    manifest = write_manifest_dir(tmp_path / "corpus")
    encoded = []
    real = SpeechEncoder.encode

    def slow(self, waves):
        encoded.append(len(waves))
        time.sleep(0.2)  # the other run starts while this one encodes
        return real(self, waves)

    monkeypatch.setattr(SpeechEncoder, "encode", slow)
    # loaded here: two from_pretrained at once in one process race on transformers' global init patches
    encoder = SpeechEncoder.from_name(whisper_dir)
    barrier, stores = threading.Barrier(2), [None, None]

    def run(i):
        barrier.wait()
        stores[i] = cached_features(encoder, manifest, shard_size=2, batch_size=1, progress=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sum(encoded) == 5  # every utterance once
    assert stores[0].directory == stores[1].directory
    assert all(torch.equal(stores[0][u], stores[1][u]) for u in stores[0])


def test_two_runs_training_into_one_directory_train_it_once(tmp_path, monkeypatch):
    import speechllm_redundancy.training as training

    cfg = TrainConfig(steps=3, batch_size=4, warmup_steps=1, checkpoint_every=1)
    data, models = toy_data(), [make(), make()]  # built here: the threads only train
    saves = []
    real = training._save_checkpoint
    monkeypatch.setattr(training, "_save_checkpoint", lambda *a: saves.append(a[3]) or real(*a))
    barrier, results = threading.Barrier(2), [None, None]

    def run(i):
        barrier.wait()
        results[i] = train(models[i], data, cfg, tmp_path / "run", progress=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(saves) == 3  # one run trained (a checkpoint per step); the other waited and took its result
    assert results[0].steps == results[1].steps == {"slam": 3}
    assert torch.equal(models[0].projector.net[0].weight, models[1].projector.net[0].weight)


# -- killed part-way (SIGKILL: no exception handler, no finally) and run again -----------------------------
TESTS = Path(__file__).resolve().parent


def _start(script: str, artifacts: Path, log: Path, *args) -> subprocess.Popen:
    """Run ``script`` in a fresh interpreter on ``artifacts`` (tests/ importable), stderr to ``log``. The
    stage is slowed inside the script only, so the kill lands mid-stage without sleeps in the library."""
    env = {**os.environ, "SPEECHLLM_ARTIFACTS": str(artifacts),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)


def _kill_when(run: subprocess.Popen, ready, what: str, log: Path, timeout: float = 120.0) -> None:
    """SIGKILL ``run`` as soon as ``ready()`` holds; fail if it ended (or stalled) before that: a kill after
    the stage finished would prove nothing."""
    deadline = time.monotonic() + timeout
    while not ready():
        if run.poll() is not None or time.monotonic() > deadline:
            run.kill()
            run.wait()
            pytest.fail(f"no kill: the run ended (rc {run.returncode}) or stalled before {what}:\n"
                        f"{log.read_text()[-3000:]}")
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    run.wait(30)
    assert run.returncode == -signal.SIGKILL  # killed, not finished


def _entries(directory: Path) -> list[str]:
    """What a reader can look up in a cache directory: everything but the dot-named bookkeeping (records,
    locks, and the temporaries a killed writer leaves behind)."""
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


ENCODE_SLOWLY = """
    import sys, time
    from speechllm_redundancy.encoders import SpeechEncoder
    from speechllm_redundancy.features import cached_features

    real = SpeechEncoder.encode
    SpeechEncoder.encode = lambda self, waves: time.sleep(0.4) or real(self, waves)
    cached_features(sys.argv[1], sys.argv[2], shard_size=1, batch_size=1, progress=False)
"""


def test_a_feature_encoding_killed_midway_resumes_at_the_first_missing_shard(tmp_path, whisper_dir,
                                                                              monkeypatch):
    from speechllm_redundancy.cache import verify_entry
    from speechllm_redundancy.features import FeatureStore, cached_features, features_dir

    durations = (0.7, 1.3, 2.2, 0.4, 1.9, 0.9, 1.1, 0.6)
    manifest = write_manifest_dir(tmp_path / "corpus", durations=durations)
    out = features_dir(whisper_dir, manifest, "full", 1)  # one utterance per shard: 8 shards
    log = tmp_path / "killed.log"
    run = _start(ENCODE_SLOWLY, tmp_path / "artifacts", log, whisper_dir, manifest)
    _kill_when(run, lambda: (out / "shard-00002.safetensors").exists(), "its third shard", log)

    stored = _entries(out)
    assert "index.json" not in stored  # the store is not finished, and nothing says it is
    assert 3 <= len(stored) < len(durations) and all(s.startswith("shard-") for s in stored)
    assert all(verify_entry(out / s) for s in stored)  # every shard that is there is whole (sealed)
    with pytest.raises(UserError, match="is not a finished feature cache"):
        FeatureStore(out)

    encoded = []
    real = SpeechEncoder.encode
    monkeypatch.setattr(SpeechEncoder, "encode",
                        lambda self, waves: encoded.append(len(waves)) or real(self, waves))
    resumed = cached_features(whisper_dir, manifest, shard_size=1, batch_size=1, progress=False)
    assert sum(encoded) == len(durations) - len(stored)  # only the shards the kill left missing

    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / "straight"))
    straight = cached_features(whisper_dir, manifest, shard_size=1, batch_size=1, progress=False)
    assert straight.directory != resumed.directory and sorted(straight) == sorted(resumed)
    assert all(torch.equal(resumed[u], straight[u]) for u in straight)


TRAIN_SLOWLY = """
    import json, sys, time
    import torch
    from speechllm_redundancy.slam import SlamModel
    from speechllm_redundancy.training import TrainConfig, train
    from test_training import make, toy_data

    torch.set_num_threads(2)
    real = SlamModel.forward
    SlamModel.forward = lambda self, *a, **k: time.sleep(0.3) or real(self, *a, **k)
    train(make(dropout=0.1), toy_data(), TrainConfig(**json.loads(sys.argv[2])), sys.argv[1], progress=False)
"""
# dropout and SpecAugment masks: a resume must replay each step's random draws, not just its batch
KILLED_TRAINING = dict(steps=10, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=3, log_every=1,
                       time_masks=2, time_mask_width=3)


def test_a_training_killed_between_checkpoints_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    from speechllm_redundancy.cache import verify_entry
    from speechllm_redundancy.slam import SlamModel

    cfg = TrainConfig(**KILLED_TRAINING)
    run_dir, log = tmp_path / "run", tmp_path / "killed.log"
    run = _start(TRAIN_SLOWLY, tmp_path / "artifacts", log, run_dir, json.dumps(KILLED_TRAINING))
    _kill_when(run, lambda: (run_dir / "checkpoint").exists(), "its first checkpoint", log)

    assert _entries(run_dir) == ["checkpoint"]  # no result.json, no final/: not a finished run
    assert verify_entry(run_dir / "checkpoint", hash_limit=None)  # the checkpoint there is whole
    saved = torch.load(run_dir / "checkpoint" / "state.pt", weights_only=True)["steps"]["slam"]
    assert saved in (3, 6, 9)

    forwards = []
    real = SlamModel.forward
    monkeypatch.setattr(SlamModel, "forward", lambda self, *a, **k: forwards.append(1) or real(self, *a, **k))
    resumed_model = make(dropout=0.1)
    resumed = train(resumed_model, toy_data(), cfg, run_dir, progress=False)
    assert resumed.steps == {"slam": 10} and len(forwards) == 10 - saved  # from the checkpoint, not step 0

    straight_model = make(dropout=0.1)
    straight = train(straight_model, toy_data(), cfg, tmp_path / "straight", progress=False)
    # exact on CPU: the same steps replay the same batches, masks and dropout in the same float order
    for (name, p), (_, q) in zip(straight_model.trainable_parameters().items(),
                                 resumed_model.trainable_parameters().items(), strict=True):
        assert torch.equal(p, q), name
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


class ProjectorScore:
    """A stand-in metric that reads the weights healing changes (and the layers kept): a walk point scored
    after a resumed heal equals one after a heal that never stopped only if the resume was exact."""

    def __init__(self, delay: float = 0.0):
        self.calls, self.delay = [], delay

    def __call__(self, model, name):
        from speechllm_redundancy.layers import num_decoder_layers

        self.calls.append(name)
        time.sleep(self.delay)
        weight = model.projector.net[0].weight.detach().double()
        return {"a": 1.0, "b": 2.0}[name] * (num_decoder_layers(model.llm) + float(weight.abs().mean()))


HEALING = dict(steps=6, batch_size=8, lr=5e-3, warmup_steps=1, checkpoint_every=2)

WALK_SLOWLY = """
    import json, sys, time
    import torch
    from speechllm_redundancy.slam import SlamModel
    from speechllm_redundancy.sweep import walk_path
    from speechllm_redundancy.training import TrainConfig
    from test_faults import ProjectorScore
    from test_training import make, toy_data

    torch.set_num_threads(2)
    real = SlamModel.forward
    SlamModel.forward = lambda self, *a, **k: time.sleep(0.2) or real(self, *a, **k)
    walk_path(make(init=0.3), {1: 2, 2: 1}, [1, 2], ["a", "b"], ProjectorScore(delay=0.2), sys.argv[1],
              strategy="both", heal_data=toy_data(), heal_config=TrainConfig(**json.loads(sys.argv[2])),
              progress=False)
"""


def test_a_pruning_walk_killed_mid_heal_resumes_the_heal_and_scores_only_the_missing_point(tmp_path,
                                                                                           monkeypatch):
    from speechllm_redundancy.slam import SlamModel
    from speechllm_redundancy.sweep import walk_path

    walk, log = tmp_path / "walk", tmp_path / "killed.log"
    run = _start(WALK_SLOWLY, tmp_path / "artifacts", log, walk, json.dumps(HEALING))
    _kill_when(run, lambda: any(walk.glob("point-n1-*.json")) and any(walk.glob("heal-n2-*/checkpoint")),
               "healing n = 2 had a checkpoint", log)

    points = [p for p in _entries(walk) if p.startswith("point-")]
    assert [p.split("-")[1] for p in points] == ["n0", "n1"]  # n = 2 is not scored: no file claims it is
    heal_dir = next(walk.glob("heal-n2-*"))
    assert _entries(heal_dir) == ["checkpoint"]  # the heal is unfinished and says so
    saved = torch.load(heal_dir / "checkpoint" / "state.pt", weights_only=True)["steps"]["slam"]
    assert saved in (2, 4)

    forwards, score = [], ProjectorScore()
    real = SlamModel.forward
    monkeypatch.setattr(SlamModel, "forward", lambda self, *a, **k: forwards.append(1) or real(self, *a, **k))
    resumed = walk_path(make(init=0.3), {1: 2, 2: 1}, [1, 2], ["a", "b"], score, walk, strategy="both",
                        heal_data=toy_data(), heal_config=TrainConfig(**HEALING), progress=False)
    assert score.calls == ["a", "b"]  # n = 2 only: n = 0 and 1 are the points stored before the kill
    assert len(forwards) == HEALING["steps"] - saved  # the heal went on from its checkpoint

    straight = walk_path(make(init=0.3), {1: 2, 2: 1}, [1, 2], ["a", "b"], ProjectorScore(),
                         tmp_path / "straight", strategy="both", heal_data=toy_data(),
                         heal_config=TrainConfig(**HEALING), progress=False)
    pd_testing.assert_frame_equal(resumed, straight)  # exact: scores of the same weights


TOY_CHAPTER = """# %% [markdown]
# # A chapter that computes cached points, then records them

# %% tags=["parameters"]
corpus = {}
points = 5
delay = 0.6

# %%
import time

from speechllm_redundancy import results
from speechllm_redundancy.cache import cached_json
from speechllm_redundancy.paths import artifact_path


def point(i):
    def compute():
        with open(artifact_path("computed.log"), "a") as log:
            log.write(f"{i}\\n")
        time.sleep(delay)
        return {"score": round(10 + i * i / 3, 6)}

    return cached_json(artifact_path("points", f"point-{i}.json"), compute)


scores = {f"set{i}": point(i)["score"] for i in range(points)}
print(scores)

# %%
results.record_baseline("toy", "frozen decoder", "asr", scores)
"""

BOOK_RUN = """
    import sys
    from pathlib import Path
    from speechllm_redundancy import profiles
    from speechllm_redundancy.cli import main

    profiles.NOTEBOOKS_DIR = Path(sys.argv[1])
    sys.exit(main(["book", "run", "--profile", sys.argv[2]]))
"""


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _executed(profile, stem) -> tuple[list, dict]:
    """What a chapter's run showed and recorded, less what differs from run to run (timings, ids)."""
    nb = json.loads(chapter_runs.executed_path(profile, stem).read_text())
    outputs = [c["outputs"] for c in nb["cells"] if c["cell_type"] == "code"]
    fragment = json.loads(chapter_runs.fragment_path(profile, stem).read_text())
    return outputs, {k: v for k, v in fragment.items() if k != "minutes"}


def _toy_book(tmp_path, monkeypatch, chapter: str, points: int, delay: float):
    """A notebooks folder holding one toy chapter (``chapter``'s source), its profile, and the kernel
    installed here (not raced for by the runs the test starts). Returns (notebooks folder, profile)."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "01_toy.py").write_text(chapter)
    monkeypatch.setattr(profiles, "NOTEBOOKS_DIR", notebooks)
    common = {"points": points, "delay": delay}
    profile = profiles.load_profile(write_profile(tmp_path, chapters={}, common=common))
    chapter_runs.ensure_kernel()
    return notebooks, profile


def test_a_chapter_run_killed_midway_leaves_no_executed_chapter_and_reruns_to_the_same_outputs(tmp_path,
                                                                                               monkeypatch):
    """`book run` on a toy chapter (five cached points, then a recorded result): papermill, its kernel, the
    atomic executed notebook and results fragment are what a real chapter runs through; a smoke chapter
    (a minute or more each time on this CPU) would add only the stages the tests above kill."""
    if sys.platform != "linux":
        pytest.skip("finds the kernel through /proc")
    notebooks, profile = _toy_book(tmp_path, monkeypatch, TOY_CHAPTER, points=5, delay=0.6)
    artifacts, log = tmp_path / "artifacts", tmp_path / "killed.log"
    run = _start(BOOK_RUN, artifacts, log, notebooks, profile.path)
    kernels = []

    def mid_chapter():
        kernels[:] = _children(run.pid) or kernels
        return (artifacts / "points" / "point-1.json").exists()

    _kill_when(run, mid_chapter, "its kernel stored two points", log)
    assert kernels  # the kernel ran as a child of the killed `book run`
    deadline = time.monotonic() + 20
    while any(map(_alive, kernels)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, kernels))  # orphaned, it noticed and exited: it writes nothing more

    out = chapter_runs.executed_path(profile, "01_toy")
    assert not out.exists() and not chapter_runs.fragment_path(profile, "01_toy").exists()
    assert _entries(out.parent) == []  # only the dot-named temporaries of the killed writers
    assert not chapter_runs.is_fresh(profile, "01_toy")
    stored = _entries(artifacts / "points")
    assert 2 <= len(stored) < 5
    computed = (artifacts / "computed.log").read_text().split()

    chapter_runs.run_chapters(profile)
    recomputed = (artifacts / "computed.log").read_text().split()[len(computed):]
    assert sorted(recomputed) == sorted({str(i) for i in range(5)} - {p[6:-5] for p in stored})
    resumed = _executed(profile, "01_toy")

    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / "straight"))
    chapter_runs.run_chapters(profile)
    assert resumed == _executed(profile, "01_toy")



# -- two runs at once on one chapter, or on one corpus: the second waits, then takes the first's ----------
COUNTED_CHAPTER = TOY_CHAPTER.replace("# %%\nimport time\n", """# %%
from speechllm_redundancy.paths import artifact_path

with open(artifact_path("executions.log"), "a") as log:
    log.write("executed\\n")

# %%
import time
""", 1)


def test_a_chapter_run_waiting_for_another_run_of_it_does_not_execute_it_again(tmp_path, monkeypatch,
                                                                                artifacts, capsys):
    notebooks, profile = _toy_book(tmp_path, monkeypatch, COUNTED_CHAPTER, points=4, delay=1.0)
    log, executions = tmp_path / "first.log", artifacts / "executions.log"
    first = _start(BOOK_RUN, artifacts, log, notebooks, profile.path)
    deadline = time.monotonic() + 120
    while not executions.exists():  # the first run is executing the chapter (four more seconds of it)
        if first.poll() is not None or time.monotonic() > deadline:
            first.kill()
            pytest.fail(f"the first run ended or stalled before executing the chapter:\n{log.read_text()}")
        time.sleep(0.02)

    chapter_runs.run_chapters(profile)  # not up to date yet: it waits for the first run's lock
    assert first.wait(120) == 0, log.read_text()[-3000:]
    said = capsys.readouterr()
    assert "waiting for another run to finish" in said.err  # it did find the chapter being executed
    assert "up to date, executed by another run meanwhile" in said.out
    assert executions.read_text().split() == ["executed"]  # once: by the first run
    assert chapter_runs.is_fresh(profile, "01_toy")
    assert json.loads(chapter_runs.results_path(profile).read_text()) == chapter_runs.merged_results(profile)


def _build_tiny_corpus(out: str, counter: str, barrier) -> None:
    """A run building the tiny corpus of test_data_corpus, its synthesiser a stub writing a tenth of a
    second of silence slowly (each synthesis logged)."""
    from speechllm_redundancy.cache import atomic_path
    from speechllm_redundancy.data import synth
    from speechllm_redundancy.data.corpus import build_corpus
    from test_data_corpus import TINY, make_pools

    def synthesize(job):
        if Path(job.out).exists():  # as the real one
            return None
        with open(counter, "a") as log:
            log.write(f"{job.out}\n")
        time.sleep(0.05)
        with atomic_path(job.out) as tmp:
            sf.write(tmp, np.zeros(1600, dtype=np.float32), 16000)
        return None

    synth.synthesize, synth.check_tools = synthesize, lambda engines: None  # this child's only
    barrier.wait()
    build_corpus(TINY, out, workers=1, pools=make_pools())


def test_two_processes_building_one_corpus_synthesise_each_utterance_once(tmp_path):
    ctx = multiprocessing.get_context("fork")  # the children run the corpus code only: no torch after fork
    barrier = ctx.Barrier(2)
    out, counter = tmp_path / "corpus" / "tiny", tmp_path / "synthesised.log"
    runs = [ctx.Process(target=_build_tiny_corpus, args=(str(out), str(counter), barrier)) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(120)
        assert run.exitcode == 0
    made = counter.read_text().splitlines()
    audio = {str(out / json.loads(row)["audio"]) for manifest in out.glob("*.jsonl")
             for row in manifest.read_text().splitlines()}
    assert len(made) == len(set(made))  # none twice
    assert set(made) == audio and len(audio) > 20
    assert json.loads((out / "corpus.json").read_text())["made_this_run"] == len(audio)  # written once


# -- leftovers of killed runs: stale temporaries are swept ---------------------------------------------------
DAY = 86400


def _age(path: Path, seconds: float) -> Path:
    """Set back the mtime of ``path`` and everything below it by ``seconds``."""
    then = time.time() - seconds
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.utime(p, (then, then))
    return path


def _temporary(parent: Path, entry: str, *, folder: bool = True, suffix: str = "abcd1234") -> Path:
    """What a writer killed inside ``atomic_path(parent / entry)`` leaves: ``.<entry>.<random>.tmp``."""
    tmp = parent / f".{entry}.{suffix}.tmp"
    parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp.mkdir()
        (tmp / entry).write_bytes(b"half written")
    else:
        tmp.write_bytes(b"half written")
    return tmp


LOCK_HOLDER = """
    import sys, time
    from speechllm_redundancy.cache import entry_lock
    with entry_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
"""


def test_sweep_stale_removes_old_unlocked_temporaries_only(tmp_path):
    from speechllm_redundancy.cache import atomic_write_json, entry_lock, sweep_stale

    root = tmp_path / "artifacts"
    points, shards = root / "points", root / "features" / "abc"
    atomic_write_json(points / "p.json", {"score": 1}, seal=True)  # a real entry, with its record and lock
    with entry_lock(points / "p.json"):
        pass
    (root / "slam" / "key" / "final").mkdir(parents=True)
    (root / "slam" / "key" / "final" / "model.safetensors").write_bytes(b"weights")
    for p in [*root.rglob("*"), root]:  # entries as old as the temporaries: age alone never condemns one
        _age(p, 3 * DAY)
    stale = [_age(_temporary(points, "q.json"), 2 * DAY),
             _age(_temporary(points, "r.json", folder=False), 2 * DAY),
             _age(_temporary(root / "models", "tiny-qwen2", suffix="src-abcd1234"), 2 * DAY)]
    fresh = _temporary(points, "s.json")
    touched = _age(_temporary(points, "t.json"), 2 * DAY)
    (touched / "t.json").write_bytes(b"still being written")  # a live writer touches what it writes
    held = _age(_temporary(points, "u.json"), 2 * DAY)
    inside_held = _age(_temporary(shards, "shard-00001.safetensors"), 2 * DAY)
    entries = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and ".tmp" not in str(p)}

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LOCK_HOLDER), str(points / "u.json")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # another run writing u.json
        with entry_lock(shards):  # a feature encoding in progress: its shards' temporaries lie inside it
            removed = sweep_stale(root)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    assert sorted(removed) == sorted(stale) and not any(p.exists() for p in stale)
    assert all(p.exists() for p in (fresh, touched, held, inside_held))
    assert {p: p.read_bytes() for p in entries} == entries  # entries, records and locks untouched
    assert (points / ".p.json.sha256.json") in entries and (points / ".p.json.lock") in entries
    assert (root / "slam" / "key" / "final" / "model.safetensors") in entries

    assert sorted(sweep_stale(root)) == sorted([held, inside_held])  # their runs ended: now they are stale
    assert fresh.exists() and touched.exists()
    assert sweep_stale(tmp_path / "nowhere") == []


def test_a_book_run_sweeps_stale_temporaries_before_running(tmp_path, monkeypatch, artifacts):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "01_toy.py").write_text(TOY_CHAPTER)
    monkeypatch.setattr(profiles, "NOTEBOOKS_DIR", notebooks)
    profile = profiles.load_profile(write_profile(tmp_path, chapters={}, common={"points": 5, "delay": 0.6}))
    stale = _age(_temporary(artifacts / "executed" / profile.name, "01_toy.ipynb"), 2 * DAY)
    fresh = _temporary(artifacts / "points", "point-0.json")

    class Stop(Exception):
        pass

    def stop():
        raise Stop

    monkeypatch.setattr(chapter_runs, "ensure_kernel", stop)  # the sweep is all this test is about
    with pytest.raises(Stop):
        chapter_runs.run_chapters(profile)
    assert not stale.exists() and fresh.exists()
