"""The results file: what chapters record (statuses, baselines on the file's scale), fragments kept only for
successful executions, merged by `book run`, and the results page rendered from the merged file."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import yaml

from speechllm_redundancy import chapter_runs, profiles, report, results
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.paths import REPO_ROOT
from speechllm_redundancy.verdicts import ClaimVerdict


@pytest.fixture
def fragment(tmp_path, monkeypatch):
    """A chapter execution's fragment, as `book run` hands one to the kernel."""
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.delenv(results.FRAGMENT_ENV, raising=False)
    path = tmp_path / "01_origin_of_redundancy.results.json"
    with results.collecting(path, "01_origin_of_redundancy") as live:
        yield live
    assert os.environ.get(results.FRAGMENT_ENV) is None  # restored once the execution ends


def read(path):
    return json.loads(path.read_text())


def test_verdict_status_comes_from_the_decision_and_names_variant_and_recipe(fragment):
    report.glue_verdict(ClaimVerdict(1, np.bool_(True), "paths agree on 80 % of block sizes", "80 % agree",
                                     "frozen decoders", "cpu"))
    report.glue_verdict(ClaimVerdict(2, None, "the profile trains no LoRA model", "no LoRA model",
                                     "frozen vs LoRA decoder", "cpu"))
    report.glue_verdict(ClaimVerdict(7, False, "saved 10 % of decoding time", "10 % saved",
                                     "smollm2-135m decoder alone, cpu"))
    claims = read(fragment)["claims"]
    assert claims["1"] == {"status": "holds", "variant": "frozen decoders, cpu recipe", "summary": "80 % agree",
                           "verdict": "holds on this run (frozen decoders, cpu recipe): paths agree on 80 % "
                                      "of block sizes"}
    assert claims["2"]["status"] == "not testable"
    assert claims["2"]["verdict"].startswith("not testable on this run (frozen vs LoRA decoder, cpu recipe): ")
    assert claims["7"]["status"] == "does not hold"
    assert claims["7"]["verdict"] == "does not hold on this run (smollm2-135m decoder alone, cpu): saved 10 % " \
                                     "of decoding time"
    with pytest.raises(UserError, match="not one of the paper's claims"):
        report.glue_verdict(ClaimVerdict(8, True, "x", "x", "v"))


def test_baselines_are_stored_on_the_results_scale_and_replaced_when_recorded_again(fragment):
    ceiling = {"metric": "wer", "score": 5.0, "hyps": ["a"], "refs": ["a"]}  # ceilings.gold_ceiling's result
    results.record_baseline("smollm2-135m", "frozen decoder", "asr", {"test-other": 50.0, "test-clean": 99.0},
                            {"test-clean": 100.0, "test-other": 120.0}, ceiling, recipe="cpu")
    results.record_baseline("smollm2-135m", "frozen decoder", "asr", {"test-clean": 25.0},
                            {"test-clean": 100.0}, {"test-clean": 4.0}, recipe="cpu")
    results.record_baseline("qwen", "frozen decoder", "ast-en-de", {"en-de-test": 12.5}, {"en-de-test": 1.5},
                            recipe="cpu")
    results.record_baseline("tiny", "LoRA decoder", "asr", {"test-clean": float("inf")}, recipe="paper")
    rows = read(fragment)["baselines"]
    assert all(tuple(r) == results.ROW_KEYS for r in rows)
    assert rows == [
        {"chapter": "01_origin_of_redundancy", "model": "smollm2-135m", "variant": "frozen decoder, cpu recipe",
         "task": "asr", "set": "test-other", "metric": "wer", "score": 0.5, "chance": 1.2, "ceiling": 0.05},
        {"chapter": "01_origin_of_redundancy", "model": "smollm2-135m", "variant": "frozen decoder, cpu recipe",
         "task": "asr", "set": "test-clean", "metric": "wer", "score": 0.25, "chance": 1.0, "ceiling": 0.04},
        {"chapter": "01_origin_of_redundancy", "model": "qwen", "variant": "frozen decoder, cpu recipe",
         "task": "ast-en-de", "set": "en-de-test", "metric": "bleu", "score": 12.5, "chance": 1.5, "ceiling": None},
        {"chapter": "01_origin_of_redundancy", "model": "tiny", "variant": "LoRA decoder, paper recipe",
         "task": "asr", "set": "test-clean", "metric": "wer", "score": None, "chance": None, "ceiling": None},
    ]
    results.record_baseline("m", "v", "asr", {"dev-ood": 1.0, "test-clean": 2.0}, {"test-clean": 9, "dev-ood": 9})
    assert [r["set"] for r in read(fragment)["baselines"] if r["model"] == "m"] == ["test-clean", "dev-ood"]
    with pytest.raises(UserError, match="ceiling measured in bleu"):
        results.record_baseline("m", "v", "asr", {"s": 1.0}, ceiling={"metric": "bleu", "score": 3.0})
    with pytest.raises(UserError, match="task 'st'"):
        results.record_baseline("m", "v", "st", {"s": 1.0})


def test_recording_outside_book_run_does_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(results.FRAGMENT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    results.record_baseline("m", "frozen decoder", "asr", {"test-clean": 20.0})
    assert results.record_claim(ClaimVerdict(5, True, "x", "x", "v")) == "holds on this run (v): x"
    assert list(tmp_path.iterdir()) == []


def test_a_fragment_is_kept_only_when_the_execution_succeeds_with_its_minutes(tmp_path, monkeypatch):
    artifacts = tmp_path / "artifacts"
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(artifacts))
    monkeypatch.delenv(results.FRAGMENT_ENV, raising=False)

    def finished_run(where, minutes, age=0.0):
        where.mkdir(parents=True)
        (where / "result.json").write_text(json.dumps({"minutes": minutes}))
        stamp = time.time() - age
        os.utime(where / "result.json", (stamp, stamp))

    finished_run(artifacts / "slam" / "cached", 7.0, age=3600)  # trained by an earlier chapter: not counted
    path = tmp_path / "02_x.results.json"
    with pytest.raises(RuntimeError, match="cell failed"):
        with results.collecting(path, "02_x"):
            results.record_claim(ClaimVerdict(4, True, "x", "x", "v"))
            raise RuntimeError("cell failed")
    assert not path.exists() and list(tmp_path.iterdir()) == [artifacts]
    assert os.environ.get(results.FRAGMENT_ENV) is None

    with results.collecting(path, "02_x"):
        results.record_claim(ClaimVerdict(4, False, "x", "x", "v"))
        finished_run(artifacts / "slam" / "warm-start", 1.5)
        finished_run(artifacts / "slam" / "model", 2.25)
        finished_run(artifacts / "sweeps" / "asr-key" / "heal-n1-both-key", 0.5)
    saved = read(path)
    assert saved["claims"]["4"]["status"] == "does not hold"
    assert saved["minutes"]["training"] == 3.75 and saved["minutes"]["healing"] == 0.5
    assert 0 <= saved["minutes"]["execution"] < 1


def fake_fragment(chapter, claims=(), rows=(), minutes=None):
    return {"chapter": chapter, "settings": {"recipe": "cpu"}, "minutes": minutes or {"execution": 1.25},
            "claims": {str(n): {"status": status, "verdict": f"{status} on this run (v): found {n} |x| and more",
                                "variant": "v", "summary": f"found {n} |x|"} for n, status in claims},
            "baselines": [{"chapter": chapter, **row} for row in rows]}


ROW = {"model": "smollm2-135m", "variant": "frozen decoder, cpu recipe", "task": "asr", "set": "test-clean",
       "metric": "wer", "score": 0.253, "chance": 1.0, "ceiling": None}
BLEU_ROW = {**ROW, "task": "ast-en-de", "set": "en-de-test", "metric": "bleu", "score": 12.5, "chance": 1.5,
            "ceiling": 20.0}


def every_claim():
    return {"01_origin_of_redundancy": fake_fragment("01_origin_of_redundancy",
                                                     [(1, "holds"), (2, "not testable"), (3, "does not hold")],
                                                     [ROW], {"execution": 2.0, "training": 1.5, "healing": 0.0}),
            "02_healing_dynamics": fake_fragment("02_healing_dynamics", [(4, "not testable")]),
            "03_asr_across_scales": fake_fragment("03_asr_across_scales", [(5, "holds")]),
            "04_speech_translation": fake_fragment("04_speech_translation", [(6, "holds")], [BLEU_ROW]),
            "05_efficiency": fake_fragment("05_efficiency", [(7, "holds")])}


def test_merge_joins_the_chapters_and_refuses_conflicts():
    merged = results.merge(every_claim(), "smoke", "tiny models")
    assert list(merged) == ["profile", "description", "chapters", "claims", "baselines", "minutes", "settings"]
    assert list(merged["claims"]) == [str(n) for n in range(1, 8)]
    assert merged["claims"]["4"]["chapter"] == "02_healing_dynamics"
    assert merged["claims"]["6"]["claim"] == results.CLAIMS[6][1]
    assert [r["chapter"] for r in merged["baselines"]] == ["01_origin_of_redundancy", "04_speech_translation"]
    assert merged["minutes"]["01_origin_of_redundancy"]["training"] == 1.5
    assert merged["settings"]["05_efficiency"] == {"recipe": "cpu"}

    twice = every_claim()
    twice["05_efficiency"]["claims"]["1"] = twice["01_origin_of_redundancy"]["claims"]["1"]
    with pytest.raises(UserError, match="claim 1 has verdicts from both 01_origin_of_redundancy and 05_efficiency"):
        results.merge(twice, "smoke")
    odd = every_claim()
    odd["03_asr_across_scales"]["claims"]["5"]["status"] = "pending"
    with pytest.raises(UserError, match="status 'pending'"):
        results.merge(odd, "smoke")


def test_results_page_shows_each_verdicts_status_and_summary_and_the_baseline_numbers():
    """A claim's row: its status and deciding numbers, the whole verdict left to the chapter it links to."""
    template = (REPO_ROOT / "book" / "results.md").read_text()
    text = results.page(template, results.merge(every_claim(), "smoke"))
    assert "<!-- results.json" not in text
    assert "| 2 | LoRA on the decoder lowers" in text
    # a pipe cannot end the cell
    assert "| **not testable**: found 2 \\|x\\| | {doc}`ch. 1 <../notebooks/01_origin_of_redundancy>` |" in text
    assert "and more" not in text
    assert "{doc}`ch. 4 <../notebooks/04_speech_translation>`" in text
    assert "| 25.3 % WER | 100.0 % WER | – |" in text
    assert "| 12.50 BLEU | 1.50 BLEU | 20.00 BLEU |" in text
    assert "| all chapters | 7.00 | 1.50 | 0.00 |" in text  # five chapters' minutes, summed

    partial = every_claim()
    del partial["02_healing_dynamics"]
    with pytest.raises(UserError, match=r"no verdict with a summary on claim\(s\) 4 .*re-run 02_healing_dynamics"):
        results.page(template, results.merge(partial, "smoke"))
    unsummarised = every_claim()  # recorded before verdicts had summaries
    del unsummarised["03_asr_across_scales"]["claims"]["5"]["summary"]
    with pytest.raises(UserError, match=r"claim\(s\) 5 .*re-run 03_asr_across_scales"):
        results.page(template, results.merge(unsummarised, "smoke"))
    with pytest.raises(UserError, match="no `<!-- results.json: minutes -->` line"):
        results.page(template.replace(results.marker("minutes"), ""), results.merge(every_claim(), "smoke"))


CHAPTER = """# %% tags=["parameters"]
corpus = {{}}
x = 1

# %%
from speechllm_redundancy.report import glue_verdict, settings_table
from speechllm_redundancy.results import record_baseline
from speechllm_redundancy.verdicts import ClaimVerdict

record_baseline("m", "frozen decoder", "asr", {{"test-clean": 20.0 + x}}, {{"test-clean": 100.0}}, recipe="paper")
glue_verdict(ClaimVerdict({claim}, x > 1, f"x is {{x}}", f"x {{x}}", "frozen decoder", "paper"))
settings_table(dict(x=x))
"""


def test_book_run_merges_what_each_chapter_recorded(tmp_path, monkeypatch):
    """Through papermill and a real kernel: the kernel finds its fragment, `book run` merges them."""
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setattr(profiles, "NOTEBOOKS_DIR", tmp_path / "notebooks")
    (tmp_path / "notebooks").mkdir()
    for stem, claim in (("01_a", 1), ("02_b", 4)):
        (tmp_path / "notebooks" / f"{stem}.py").write_text(CHAPTER.format(claim=claim))
    raw = yaml.safe_load((REPO_ROOT / "profiles" / "smoke.yaml").read_text())
    raw.update(chapters={}, common={"x": 2})
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    profile = profiles.load_profile(tmp_path / "p.yaml")
    chapter_runs.run_chapters(profile)

    merged = read(chapter_runs.results_path(profile))
    assert merged["chapters"] == ["01_a", "02_b"]
    assert {n: c["status"] for n, c in merged["claims"].items()} == {"1": "holds", "4": "holds"}
    assert merged["claims"]["4"]["verdict"] == "holds on this run (frozen decoder, paper recipe): x is 2"
    assert [(r["chapter"], r["score"]) for r in merged["baselines"]] == [("01_a", 0.22), ("02_b", 0.22)]
    assert merged["settings"]["02_b"] == {"x": 2}
    assert all(m["execution"] > 0 and m["training"] == 0 for m in merged["minutes"].values())

    # a chapter that recorded nothing (executed before results were recorded) is not up to date
    chapter_runs.fragment_path(profile, "02_b").unlink()
    assert chapter_runs.is_fresh(profile, "01_a") and not chapter_runs.is_fresh(profile, "02_b")
    with pytest.raises(UserError, match="02_b .*recorded no results.*make notebooks"):
        chapter_runs.merged_results(profile, require=["01_a", "02_b"])
