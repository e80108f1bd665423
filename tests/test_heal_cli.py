"""`slam heal` and `slam walk`: the library's healing and pruning walk from the command line (tiny random models;
the two-process launch of `slam heal` is in test_distributed.py)."""

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch

from slam_tiny import save_tiny_llm, save_tiny_whisper, write_manifest_dir
from speechllm_redundancy.cli import main

torch.set_num_threads(2)
TEXTS = ("a cat sat", "the dog sat on the mat", "one bird and two dogs fly", "fish", "cat dog bird", "birds fly over")
DURATIONS = (0.7, 1.3, 2.2, 0.4, 1.9, 1.1)


pytestmark = pytest.mark.usefixtures("artifacts")  # a fresh artifacts folder per test (conftest.py)


def save_slam(directory: Path, whisper: str, llm: str, loud: float = 1.0) -> Path:
    """An untrained SLAM model saved as `slam train` saves one; ``loud`` scales the projector's output, so a
    random decoder answers each utterance differently."""
    from speechllm_redundancy.slam import SlamConfig, SlamModel

    torch.manual_seed(0)
    model = SlamModel(SlamConfig(encoder=whisper, llm=llm, encoder_dim=32, k=2, projector_hidden=64))
    with torch.no_grad():
        model.projector.net[-1].weight.mul_(loud)
    return model.save_pretrained(directory)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Whisper and 3-layer decoder, a manifest of six utterances and a SLAM model of the two."""
    root = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as patch:  # saving hashes the decoder: its memo goes here, not to artifacts/
        patch.setenv("SPEECHLLM_ARTIFACTS", str(root / "artifacts"))
        whisper, llm = save_tiny_whisper(root / "whisper"), save_tiny_llm(root / "llm")
        return {"whisper": whisper, "manifest": str(write_manifest_dir(root / "corpus", DURATIONS, TEXTS)),
                "model": str(save_slam(root / "model", whisper, llm, loud=40.0))}


def heal_args(tiny, out: Path, *block: str, strategy: str = "both", train: bool = True) -> list[str]:
    """`slam heal` of the tiny model: 3 steps in batches of 3, bf16 off (auto picks it on some CPUs)."""
    return ["slam", "heal", "--model", tiny["model"], *block, "--strategy", strategy, "--steps", "3",
            "--batch-size", "3", "--lr", "1e-2", "--mixed-precision", "no",
            *(["--train", tiny["manifest"]] if train else []), "--out", str(out)]


def test_heal_from_the_command_line_is_the_librarys_heal_saved_as_a_slam_model(tiny, tmp_path, capsys):
    """The folder `slam heal` writes loads like any SLAM model (the pruned decoder, the receiving layer's
    LoRA, the healed projector) and is the model ``healing.heal`` returns for the same block, strategy,
    settings and data: the same tensors, the same transcripts; `slam evaluate` reads it."""
    from speechllm_redundancy.data.manifest import read_manifest
    from speechllm_redundancy.features import cached_features
    from speechllm_redundancy.healing import heal, healing_config
    from speechllm_redundancy.layers import num_decoder_layers
    from speechllm_redundancy.slam import SlamModel
    from speechllm_redundancy.training import make_data

    out = tmp_path / "healed"
    assert main(heal_args(tiny, out, "--start", "1", "--size", "1")) == 0
    assert f"model: {out / 'final'}" in capsys.readouterr().out
    record = json.loads((out / "heal.json").read_text())
    assert (record["start"], record["size"], record["layers"], record["healed"]) == (1, 1, 3, True)

    slam = SlamModel.from_pretrained(tiny["model"])
    store = cached_features(tiny["whisper"], tiny["manifest"], progress=False)
    data = make_data(store, read_manifest(tiny["manifest"]), "asr", tiny["manifest"])
    config = healing_config(3, batch_size=3, lr=1e-2, mixed_precision="no")
    torch.manual_seed(config.seed)
    healed, _ = heal(slam, 1, 1, "both", data, config, tmp_path / "library", progress=False)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = SlamModel.from_pretrained(out / "final")
    assert not [w for w in caught if "differs" in str(w.message)]  # it reads the decoder it was saved with
    assert loaded.config.llm == str((out / "decoder").resolve()) and num_decoder_layers(loaded.llm) == 2
    mine, theirs = loaded.state_dict(), healed.state_dict()
    assert mine.keys() == theirs.keys() and any("lora_A.healing" in k for k in mine)
    assert not torch.equal(mine["projector.net.0.weight"], slam.projector.net[0].weight)  # it healed
    assert all(torch.equal(mine[k], theirs[k]) for k in mine), [k for k in mine if not torch.equal(mine[k], theirs[k])]
    features = [store[u.id] for u in read_manifest(tiny["manifest"])]
    hyps = loaded.generate(features, max_new_tokens=6)
    assert hyps == healed.generate(features, max_new_tokens=6) and len(set(hyps)) > 1
    assert main(["slam", "evaluate", "--model", str(out), "--manifest", tiny["manifest"]]) == 0
    assert "WER" in capsys.readouterr().out


def test_heal_by_fraction_removes_the_block_of_the_optimal_path(tiny, tmp_path):
    """--fraction 0.34 of 3 layers is one layer, the block l*(1) of the model's speech-derived path; strategy
    none saves the pruned model as it is (no adapters)."""
    from speechllm_redundancy.slam import SlamModel
    from speechllm_redundancy.sweep import speech_angles

    out = tmp_path / "pruned"
    assert main(heal_args(tiny, out, "--fraction", "0.34", "--path-manifest", tiny["manifest"], "--path-limit", "4",
                          strategy="none")) == 0
    record = json.loads((out / "heal.json").read_text())
    path = speech_angles(SlamModel.from_pretrained(tiny["model"]), tiny["manifest"], "measured again", limit=4,
                         progress=False).optimal_path()
    assert (record["start"], record["size"], record["healed"]) == (path[1], 1, False)
    loaded = SlamModel.from_pretrained(out / "final")
    assert loaded.llm.config.num_hidden_layers == 2 and loaded.llm.config.pruned_layers == [path[1]]
    assert not hasattr(loaded.llm, "peft_config")


def walk_args(tiny, out: Path) -> list[str]:
    """A walk of one level (a third of the layers) without healing and with the projector healed."""
    return ["slam", "walk", "--model", tiny["model"], "--fractions", "0.34", "--strategy", "none", "projector",
            "--steps", "2", "--batch-size", "3", "--mixed-precision", "no", "--train", tiny["manifest"],
            "--path-manifest", tiny["manifest"], "--path-limit", "4", "--eval", f"toy={tiny['manifest']}",
            "--limit", "3", "--max-new-tokens", "4", "--out", str(out)]


def test_walk_writes_every_level_and_walking_again_is_served_from_the_cache(tiny, tmp_path, capsys, monkeypatch):
    from speechllm_redundancy import angles, evaluation, training

    out = tmp_path / "walk"
    assert main(walk_args(tiny, out)) == 0
    printed = capsys.readouterr().out
    assert "WER (%) per pruning level" in printed and "removable fraction" in printed
    rows = list(csv.DictReader((out / "walk.csv").open()))
    assert sorted((r["strategy"], int(r["n"]), r["set"]) for r in rows) == [
        ("none", 0, "toy"), ("none", 1, "toy"), ("projector", 0, "toy"), ("projector", 1, "toy")]
    record = json.loads((out / "walk.json").read_text())
    assert record["levels"] == [1] and set(record["removable"]) == {"none", "projector"}
    assert [(p["strategy"], p["n"], p["score"]) for p in record["points"]] == [
        (r["strategy"], int(r["n"]), pytest.approx(float(r["score"]))) for r in rows]

    for module, name in ((evaluation, "evaluate_slam"), (training, "_set_up_phase"), (angles, "measure_angles")):
        monkeypatch.setattr(module, name, lambda *a, _name=name, **k: pytest.fail(f"walked again: {_name}"))
    assert main(walk_args(tiny, out)) == 0  # its own earlier output is replaced
    assert capsys.readouterr().out == printed
    assert list(csv.DictReader((out / "walk.csv").open())) == rows


@pytest.mark.parametrize("command, args, message", [
    ("heal", ["--start", "1", "--size", "1", "--strategy", "everything"], "invalid choice: 'everything'"),
    ("heal", ["--fraction", "1.5"], "'1.5' is not a fraction strictly between 0 and 1"),
    ("walk", ["--fractions", "0.25", "0", "--path-manifest", "m.jsonl", "--eval", "m.jsonl"],
     "'0' is not a fraction strictly between 0 and 1"),
    ("heal", ["--start", "1", "--size", "0"], "'0': give a whole number >= 1"),
    ("walk", ["--path-manifest", "m.jsonl", "--eval", "m.jsonl", "--grad-accum", "0"], "'0': give a whole number >= 1"),
    ("walk", ["--path-manifest", "m.jsonl", "--eval", "m.jsonl", "--precision", "half"], "invalid choice: 'half'"),
    ("evaluate", ["--manifest", "m.jsonl", "--precision", "fp16"], "invalid choice: 'fp16'"),
])
def test_bad_flags_are_refused_naming_the_flag_and_what_it_takes(tiny, tmp_path, capsys, command, args, message):
    out = ["--out", str(tmp_path / "out")] if command != "evaluate" else []
    with pytest.raises(SystemExit) as exit_:
        main(["slam", command, "--model", tiny["model"], *out, *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err
    if "choice" in message:  # and the choices
        choices = ("none", "decoder", "projector", "both") if "--strategy" in args else ("auto", "fp32", "bf16")
        assert all(f"'{s}'" in err for s in choices)


def test_the_healing_flags_are_slam_trains_own_with_its_help_and_checks(capsys):
    """One declaration serves `slam train` and the healing runs of `slam heal|walk`: the same help; the same
    refusal of a batch of no utterances; defaults filled in where healing needs them, left unset in `train`
    (which tells what a user gave from what a profile fills in)."""
    import argparse

    from speechllm_redundancy.cli import build_parser

    parser = build_parser()
    slam = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["slam"]
    commands = next(a for a in slam._actions if isinstance(a, argparse._SubParsersAction)).choices
    flags = {name: {a.option_strings[0]: a for a in commands[name]._actions if a.option_strings}
             for name in ("train", "heal", "walk")}
    for flag in ("--batch-size", "--grad-accum", "--lr", "--seed", "--mixed-precision"):
        assert flags["heal"][flag].help == flags["walk"][flag].help == flags["train"][flag].help, flag
        assert flags["train"][flag].default is None and flags["heal"][flag].default is not None, flag
    with pytest.raises(SystemExit):
        main(["slam", "train", "--train", "m.jsonl", "--batch-size", "0"])
    assert "'0': give a whole number >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("block, options, message", [
    (["--start", "1", "--size", "1"], {}, "exists and is not empty, and is not an output of `slam heal`"),
    (["--start", "1", "--size", "1"], {"train": False}, "pass --train"),
    (["--size", "1"], {}, "say which layers to remove: --start and --size"),
    (["--fraction", "0.3", "--start", "1"], {}, "--fraction chooses the block"),
    (["--fraction", "0.3"], {}, "--fraction needs --path-manifest"),
    (["--start", "2", "--size", "2"], {}, "does not fit a 3-layer decoder"),
    (["--start", "2", "--size", "1"], {"strategy": "decoder"}, "no receiving layer"),
])
def test_bad_requests_are_user_errors_that_name_the_fix(tiny, tmp_path, capsys, block, options, message):
    out = tmp_path / "out"
    if "not empty" in message:  # a folder of the user's: refused, untouched
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
    assert main(heal_args(tiny, out, *block, **options)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or [p.name for p in out.iterdir()] == ["mine.txt"]


def test_walk_refuses_unnamed_or_missing_evaluation_sets(tiny, tmp_path, capsys):
    base = ["slam", "walk", "--model", tiny["model"], "--path-manifest", tiny["manifest"]]
    assert main([*base, "--eval", tiny["manifest"], f"{Path(tiny['manifest']).stem}={tiny['manifest']}"]) == 2
    assert "names set 'train' twice" in capsys.readouterr().err
    assert main([*base, "--eval", str(tmp_path / "nothing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("flags, precision", [([], "auto"), (["--precision", "fp32"], "fp32"),
                                              (["--precision", "bf16"], "bf16")])
def test_evaluate_and_walk_decode_at_the_precision_asked_for(tiny, tmp_path, monkeypatch, flags, precision):
    """`--precision` reaches the decoder in `slam evaluate` and in every set `slam walk` decodes."""
    from speechllm_redundancy import evaluation

    seen = []

    def record(*args, precision="auto", **kwargs):
        seen.append(precision)
        return {"metric": "wer", "score": 50.0, "utterances": 6, "seconds": 0.1, "ids": [], "refs": [], "hyps": []}

    monkeypatch.setattr(evaluation, "evaluate_slam", record)
    assert main(["slam", "evaluate", "--model", tiny["model"], "--manifest", tiny["manifest"], *flags]) == 0
    assert main([*walk_args(tiny, tmp_path / "walk"), *flags]) == 0
    assert len(seen) > 2 and set(seen) == {precision}
