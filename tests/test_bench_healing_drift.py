"""benchmarks/healing_drift.py: on a tiny model of the cpu recipe's frozen layout, the labels it measures are
what the decoder reads; unhealed (0 steps) and decoder-only healing leave them exactly as they were while
projector healing moves the projector under a fixed CTC head; its healing runs are the walks' (same cache
folders); without a cached model it trains nothing and says what to run; --tiny prints the last line."""

import argparse
import re
from dataclasses import replace

import pytest
import torch

from benchmark_scripts import load_benchmark

torch.set_num_threads(1)  # tiny models: a second thread only spins on a busy CPU

pytestmark = pytest.mark.usefixtures("artifacts")  # a fresh artifacts folder per test (conftest.py)

LAST_LINE = re.compile(r"healing drift: (unhealed|\d+ \w+ steps): CTC WER \d+\.\d% -> \d+\.\d%, labels "
                       r"changed in \d+% of utterances \(\d+\.\d% token edits\), SLAM WER \d+\.\d%(; .+)?")


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("healing_drift")


def tiny_args(**kw):
    return argparse.Namespace(**{"seed": 0, "limit": 8, "max_new_tokens": 6, "tiny_ctc_steps": 60,
                                 "tiny_lr": 5e-3, **kw})


def test_labels_are_what_the_decoder_reads_and_edits_are_counted(bench):
    subject = bench.tiny_subject(tiny_args())
    model, feats = subject.model, subject.features
    labels = bench.label_sequences(model, feats)
    table = model.llm.get_input_embeddings().weight
    with torch.inference_mode():
        read = model.ctc.compress(model.projector(feats), table, "hard")
    assert all(torch.equal(r, table[ids]) for r, ids in zip(read, labels))  # the hard labels' embeddings
    assert [model.tokenizer.decode(ids).strip() for ids in labels] == bench.ctc_transcripts(model, feats)
    assert bench.wer(subject.refs, bench.ctc_transcripts(model, feats)) < 50  # the warm start spells them
    assert bench.token_edit_rate([[1, 2, 3], [4]], [[1, 3], [4]]) == pytest.approx(25.0)
    assert bench.token_edit_rate(labels, labels) == 0.0
    # a moved projector moves the labels, and the measure sees it
    moved = bench.prune_slam(model, 0, 1)
    with torch.no_grad():
        moved.projector.net[-1].bias += 3 * torch.randn_like(moved.projector.net[-1].bias)
    assert bench.token_edit_rate(labels, bench.label_sequences(moved, feats)) > 0


def test_unhealed_and_decoder_healing_leave_the_labels_projector_healing_moves_the_projector(bench):
    subject = bench.tiny_subject(tiny_args())
    out = bench.measure(subject, 0.2, ["projector", "decoder"], [0, 4], progress=False)
    rows = {(r["strategy"], r["steps"]): r for r in out["rows"]}
    assert list(rows) == [("none", 0), ("projector", 4), ("decoder", 4)]
    assert out["n"] == 1 and out["start"] + out["n"] < out["layers"]  # decoder healing has a receiving layer
    for key in (("none", 0), ("decoder", 4)):  # the projector never moved: no drift at all
        r = rows[key]
        assert r["projector_change"] == 0 and r["changed"] == 0 and r["token_edits"] == 0, key
        assert (r["ctc_wer"], r["segments"]) == (out["original"]["ctc_wer"], out["original"]["segments"]), key
    healed = rows[("projector", 4)]
    assert healed["projector_change"] > 0  # it trained the projector …
    assert all(r["ctc_head_fixed"] for r in rows.values())  # … under a CTC head that stayed as it was
    lines = bench.report(subject, 0.2, out)
    assert LAST_LINE.fullmatch(lines[-1]), lines[-1]
    assert "4 projector+ctc1 steps" in lines[-1] and "4 decoder steps" in lines[-1]  # the chapters' anchor


def test_ctc_weights_heal_the_projector_once_per_weight_beside_the_chapters_run(bench):
    """Each weight is its own healing run (its own cache folder: the weight is in the run's key), only for
    strategies that train the projector; weight 0 heals without the anchor, and the table names the others."""
    subject = bench.tiny_subject(tiny_args())
    out = bench.measure(subject, 0.2, ["projector", "decoder"], [4], ctc_weights=[0, 1, 1], progress=False)
    rows = [(r["strategy"], r["steps"], r["ctc_weight"]) for r in out["rows"]]
    assert rows == [("projector", 4, 0.0), ("projector", 4, 1.0), ("decoder", 4, 0.0)]
    plain, anchored = out["rows"][0], out["rows"][1]
    assert plain["projector_change"] > 0 and anchored["projector_change"] > 0
    assert plain["projector_change"] != anchored["projector_change"]  # two runs, not one loaded twice
    lines = bench.report(subject, 0.2, out)
    assert any(line.split("|")[0].split() == ["projector+ctc1", "4"] for line in lines)
    assert "4 projector+ctc1 steps" in lines[-1] and "4 projector steps" in lines[-1]
    assert LAST_LINE.fullmatch(lines[-1].replace("+ctc1", "")), lines[-1]


def test_healing_runs_are_the_walks(bench, monkeypatch, tmp_path):
    """``Study.walk`` heals in ``Study.walk_dir`` under ``sweep.healing_dir`` keyed by the run alone: the
    folder the benchmark loads chapter 2's healing runs from, whatever the walk's decoding budget."""
    from speechllm_redundancy import sweep
    from speechllm_redundancy.experiments import Settings, SlamRun, Study
    from speechllm_redundancy.training import TrainResult

    subject = bench.tiny_subject(tiny_args())
    seen = []
    monkeypatch.setattr(sweep, "heal", lambda slam, start, n, strategy, d, cfg, out_dir, **kw: (
        seen.append(out_dir) or slam, None))
    monkeypatch.setattr(sweep, "manifest_evaluator", lambda *a, **kw: lambda model, name: 1.0)
    run = SlamRun("tiny", "asr", subject.model, TrainResult(tmp_path / "run-key", data=subject.heal_data),
                  "train")
    for limit in (5, 6):  # two decoding budgets: two points, one healing folder
        study = Study(Settings(eval_limit=limit, max_new_tokens=7, healing_steps=3),
                      manifests={"test-clean": tmp_path / "t.jsonl"})
        study._walk(run, {1: 2}, [1], "projector", sets=["test-clean"])
    expected = sweep.healing_dir(study.walk_dir(run), run.key, 1, 2, "projector", study.heal_config(), run.data)
    assert seen == [expected, expected]
    # decoder healing moves no labels: its run is keyed without the CTC anchor, as before the anchor existed
    study._walk(run, {1: 2}, [1], "decoder", sets=["test-clean"])
    plain = replace(study.heal_config(), ctc_weight=0.0)
    assert seen[-1] == sweep.healing_dir(study.walk_dir(run), run.key, 1, 2, "decoder", plain, run.data)


def test_without_a_cached_model_it_trains_nothing_and_says_what_to_run(bench, monkeypatch, tmp_path, capsys):
    from speechllm_redundancy import training
    from speechllm_redundancy.errors import UserError

    calls = []
    monkeypatch.setattr(training, "train", lambda *a, **kw: calls.append(a[3]) or "trained")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "result.json").write_text("{}")
    with bench.refuse_training("the model", "run chapter 1"):
        assert training.train(None, None, None, tmp_path / "done") == "trained"  # a cached run loads
        with pytest.raises(UserError, match="the model is not in the cache .* run chapter 1"):
            training.train(None, None, None, tmp_path / "missing")
    assert calls == [tmp_path / "done"]
    assert bench.main(["--quiet"]) == 2  # a fresh artifacts folder: no corpus, no model
    err = capsys.readouterr().err
    assert "make book" in err and "--chapter 01" in err and "--train-missing" in err
    assert bench.main(["--quiet", "--profile", "smoke"]) == 2
    assert "recipe 'paper'" in capsys.readouterr().err


def test_tiny_run_prints_the_table_and_the_last_line(bench, capsys):
    assert bench.main(["--tiny", "--quiet", "--steps", "0", "--limit", "6", "--max-new-tokens", "6"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "labels changed" in lines[3] and lines[4].split("|")[0].split() == ["none", "0"]
    assert LAST_LINE.fullmatch(lines[-1]), lines[-1]
    assert lines[-1].startswith("healing drift: unhealed:")
    assert "labels changed in 0% of utterances (0.0% token edits)" in lines[-1]
