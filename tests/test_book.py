"""The book: profiles fit the notebooks, the smoke chapters run, the book renders with -W and, served on
127.0.0.1, loads in headless Chromium with every asset found locally and nothing fetched from outside."""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import yaml

from speechllm_redundancy import book_cli, chapter_runs, profiles, rendering, vendoring
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.paths import REPO_ROOT

def write_profile(tmp_path: Path, **overrides) -> Path:
    raw = yaml.safe_load((REPO_ROOT / "profiles" / "smoke.yaml").read_text())
    raw.update(overrides)
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ------------------------------------------------------------------------------------ profiles, no kernel
@pytest.mark.parametrize("name", ["smoke", "default", "paper"])
def test_shipped_profiles_fit_every_notebook(name):
    profile = profiles.load_profile(name)
    profiles.validate_profile(profile)  # raises on any parameter a notebook does not declare
    assert set(profile.chapters) <= set(profiles.chapter_stems())
    assert profile.parameters("01_origin_of_redundancy")["corpus"] == profile.corpus


def test_toc_lists_every_chapter_and_every_page_exists():
    assert rendering.toc_chapters() == profiles.chapter_stems()
    assert len(profiles.chapter_stems()) == 5
    toc = (REPO_ROOT / "_toc.yml").read_text()
    for page in ("intro", "data", "method", "results", "paper_scale"):
        assert f"book/{page}" in toc and (REPO_ROOT / "book" / f"{page}.md").is_file()


def test_chapter_parameters_override_common():
    profile = profiles.load_profile("default")
    assert profile.parameters("04_speech_translation")["speech_llms"] == ["qwen2.5-coder-0.5b"]
    assert profile.parameters("03_asr_across_scales")["speech_llms"] == profile.common["speech_llms"]


def test_undeclared_parameter_is_an_error_naming_chapter_and_parameter(tmp_path):
    path = write_profile(tmp_path, chapters={"02_healing_dynamics": {"healing_stepz": 3}})
    with pytest.raises(UserError, match=r"02_healing_dynamics does not declare healing_stepz.*parameters"):
        profiles.validate_profile(profiles.load_profile(path))


def test_common_parameters_reach_only_the_chapters_that_declare_them(tmp_path):
    raw_common = {"device": "cpu", "healing_steps": 2}
    profile = profiles.load_profile(write_profile(tmp_path, common=raw_common, chapters={}))
    profiles.validate_profile(profile)
    assert "healing_steps" in profiles.chapter_parameters("03_asr_across_scales")
    assert profile.parameters("03_asr_across_scales")["healing_steps"] == 2
    assert "healing_steps" not in profiles.chapter_parameters("05_efficiency")
    assert "healing_steps" not in profile.parameters("05_efficiency")  # papermill would only warn
    typo = profiles.load_profile(write_profile(tmp_path, common={"whisper_windw": "trim"}, chapters={}))
    with pytest.raises(UserError, match="no chapter declares the common parameter.*whisper_windw"):
        profiles.validate_profile(typo)


def test_profile_errors(tmp_path):
    with pytest.raises(UserError, match="not found: pass one of .*smoke"):
        profiles.load_profile("no-such-profile")
    with pytest.raises(UserError, match="unknown top-level keys"):
        profiles.load_profile(write_profile(tmp_path, extra=1))
    with pytest.raises(UserError, match="do not exist"):
        profiles.validate_profile(profiles.load_profile(write_profile(tmp_path, chapters={"06_nope": {}})))
    with pytest.raises(UserError, match="not found"):
        profiles.select_chapters(["09"])
    assert profiles.select_chapters(["02"]) == ["02_healing_dynamics"]


def test_render_without_executed_chapters_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path))
    with pytest.raises(UserError, match=r"make notebooks PROFILE=smoke"):
        rendering.render(profiles.load_profile("smoke"))


def test_mathjax_fetch_errors_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path))
    monkeypatch.setattr(vendoring.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="npm is not installed.*apt-get install npm"):
        vendoring.mathjax_dir()
    (tmp_path / "vendor").mkdir()
    (tmp_path / "vendor" / f"mathjax-{vendoring.MATHJAX_VERSION}.tgz").write_bytes(b"not mathjax")
    with pytest.raises(UserError, match="sha512.*delete it"):
        vendoring.mathjax_dir()
    assert not (tmp_path / "vendor" / f"mathjax-{vendoring.MATHJAX_VERSION}").exists()


def test_cli_check_and_params(capsys):
    parser = argparse.ArgumentParser()
    book_cli.register(parser.add_subparsers())

    def main(argv):
        args = parser.parse_args(argv)
        return args.func(args)

    assert main(["book", "check", "--profile", "paper"]) == 0
    assert "fits all 5 chapters" in capsys.readouterr().out
    assert main(["book", "params", "--profile", "smoke", "--chapter", "05"]) == 0
    params = yaml.safe_load(capsys.readouterr().out)
    assert params["pruned_fractions"] == [0.0, 0.25, 0.5]
    assert params["corpus"] == {"size": "smoke", "ast_dev": 8}


CHAPTER = """# %% [markdown]
# # A chapter

# %% tags=["parameters"]
corpus = {}
x = 1

# %%
print("x is", x)
"""


def test_failed_chapter_leaves_no_executed_notebook_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setattr(profiles, "NOTEBOOKS_DIR", tmp_path / "notebooks")
    (tmp_path / "notebooks").mkdir()
    source = tmp_path / "notebooks" / "01_try.py"
    source.write_text(CHAPTER + 'raise RuntimeError("boom")\n')
    profile = profiles.load_profile(write_profile(tmp_path, chapters={}, common={"x": 2}))
    out = chapter_runs.executed_path(profile, "01_try")
    with pytest.raises(UserError, match=r"01_try failed in cell .*RuntimeError: boom.*make notebooks"):
        chapter_runs.run_chapters(profile)
    assert not out.exists() and out.with_suffix(".failed.ipynb").exists()
    # no temporary left behind (an entry's lock file stays, as everywhere in the cache)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]

    source.write_text(CHAPTER)
    chapter_runs.run_chapters(profile)
    assert "x is 2" in out.read_text() and not out.with_suffix(".failed.ipynb").exists()
    chapter_runs.run_chapters(profile)
    assert capsys.readouterr().out.count("up to date, skipped") == 1


def test_a_chapter_is_stale_only_when_its_source_parameters_or_library_change(tmp_path, monkeypatch):
    """Freshness compares hashes of what the chapter ran: touching a file changes nothing, editing it (or a
    parameter the chapter takes) makes the chapter stale, and undoing the edit makes it fresh again."""
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setattr(profiles, "NOTEBOOKS_DIR", tmp_path / "notebooks")
    library = tmp_path / "lib"
    library.mkdir()
    module = library / "module.py"
    module.write_text("ANSWER = 1\n")
    monkeypatch.setattr(chapter_runs, "LIBRARY_DIR", library)
    (tmp_path / "notebooks").mkdir()
    source = tmp_path / "notebooks" / "01_try.py"
    source.write_text(CHAPTER)
    profile = profiles.load_profile(write_profile(tmp_path, chapters={}, common={"x": 2}))
    assert chapter_runs.stale_inputs(profile, "01_try") == ["not executed (or its results not recorded)"]
    chapter_runs.run_chapters(profile)
    assert chapter_runs.inputs_path(profile, "01_try").is_file()
    assert chapter_runs.is_fresh(profile, "01_try")

    for path in (source, module, profile.path):
        later = path.stat().st_mtime + 60
        os.utime(path, (later, later))
    assert chapter_runs.is_fresh(profile, "01_try")
    unused = profiles.load_profile(write_profile(tmp_path, chapters={}, common={"x": 2, "device": "gpu"}))
    assert chapter_runs.is_fresh(unused, "01_try")  # a setting the chapter does not declare is not passed

    source.write_text(CHAPTER + 'print("and more")\n')
    assert chapter_runs.stale_inputs(profile, "01_try") == ["its source changed"]
    source.write_text(CHAPTER)
    assert chapter_runs.is_fresh(profile, "01_try")
    for common, chapters in (({"x": 3}, {}), ({"x": 2}, {"01_try": {"x": 3}})):
        changed = profiles.load_profile(write_profile(tmp_path, chapters=chapters, common=common))
        assert chapter_runs.stale_inputs(changed, "01_try") == ["its parameters changed"]
    module.write_text("ANSWER = 2\n")
    assert chapter_runs.stale_inputs(profile, "01_try") == ["the library changed"]
    module.write_text("ANSWER = 1\n")
    assert chapter_runs.is_fresh(profile, "01_try")
    (library / "new.py").write_text("")
    assert chapter_runs.stale_inputs(profile, "01_try") == ["the library changed"]


# ------------------------------------------------------------------------ the smoke book, run and rendered
class _Unknown(logging.Handler):
    """Collects papermill's 'Passed unknown parameter' warnings (a setting the notebook would ignore)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        if "unknown parameter" in record.getMessage():
            self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    """Run every smoke chapter and render the book in a private artifacts dir."""
    shared_mathjax = vendoring.mathjax_dir()  # fetched once into the shared cache, then reused by every run
    root = tmp_path_factory.mktemp("artifacts")
    shutil.copytree(shared_mathjax, root / "vendor" / shared_mathjax.name)
    before = os.environ.get("SPEECHLLM_ARTIFACTS")
    os.environ["SPEECHLLM_ARTIFACTS"] = str(root)
    unknown = _Unknown()
    logging.getLogger("papermill").addHandler(unknown)
    try:
        profile = profiles.load_profile("smoke")
        executed = chapter_runs.run_chapters(profile)
        html = rendering.render(profile)
        yield {"profile": profile, "executed": executed, "html": html, "unknown": unknown.messages}
    finally:
        logging.getLogger("papermill").removeHandler(unknown)
        if before is None:
            os.environ.pop("SPEECHLLM_ARTIFACTS", None)
        else:
            os.environ["SPEECHLLM_ARTIFACTS"] = before


def test_smoke_chapters_execute_with_all_parameters_declared(smoke_book):
    assert smoke_book["unknown"] == []
    for path in smoke_book["executed"]:
        nb = json.loads(path.read_text())
        stem = path.stem
        assert nb["metadata"]["papermill"]["parameters"] == smoke_book["profile"].parameters(stem)
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in nb["cells"])
        assert not list(path.parent.glob("*.failed.ipynb"))


def test_smoke_results_file_and_page(smoke_book):
    """results.json holds every chapter's baselines, verdicts and minutes; the results page shows them."""
    from speechllm_redundancy import results

    merged = json.loads(chapter_runs.results_path(smoke_book["profile"]).read_text())
    assert merged["profile"] == "smoke" and merged["chapters"] == profiles.chapter_stems()
    assert list(merged["claims"]) == [str(n) for n in results.CLAIMS]
    for number, claim in merged["claims"].items():
        assert claim["chapter"] == results.CLAIMS[int(number)][0]
        assert claim["status"] in results.STATUSES and claim["verdict"].startswith(f"{claim['status']} on this run (")
        assert claim["variant"] in claim["verdict"]
        assert "paper recipe" in claim["variant"]  # smoke trains with the paper recipe (claim 7 times its model)
    rows = merged["baselines"]
    assert rows and all(tuple(r) == results.ROW_KEYS for r in rows)
    seen = {(r["chapter"][:2], r["model"], r["variant"], r["task"]) for r in rows}
    assert {("01", "tiny-qwen2", "frozen decoder, paper recipe", "asr"),
            ("01", "tiny-qwen2", "LoRA decoder, paper recipe", "asr"),
            ("02", "tiny-qwen2", "frozen decoder, paper recipe", "asr"),
            ("03", "tiny-llama", "frozen decoder, paper recipe", "asr"),
            ("04", "tiny-qwen2", "frozen decoder, paper recipe", "ast-en-de")} <= seen
    for r in rows:
        assert r["metric"] == ("wer" if r["task"] == "asr" else "bleu") and r["chance"] is not None
        assert r["score"] is None or r["score"] >= 0
    assert set(merged["minutes"]) == set(profiles.chapter_stems())
    assert all(m["execution"] > 0 for m in merged["minutes"].values())
    assert merged["minutes"]["01_origin_of_redundancy"]["training"] > 0  # a fresh cache: chapter 1 trains
    assert merged["settings"]["02_healing_dynamics"]["recipe"] == "paper"

    page = html.unescape((smoke_book["html"] / "book" / "results.html").read_text()).replace("’", "'")
    for claim in merged["claims"].values():  # each row: the status and its deciding numbers; details in the chapter
        assert claim["summary"] and claim["summary"] in page
    row = next(r for r in rows if r["metric"] == "wer" and r["score"] is not None)
    assert f"{100 * row['score']:.1f} % WER" in page and row["model"] in page
    assert (smoke_book["html"] / "_downloads").is_dir() and "results.json" in page  # offered for download


def test_rendered_chapters_show_no_stderr_warnings_or_machine_paths(smoke_book):
    """Progress bars and library warnings stay in the executed notebooks, out of the pages a reader sees."""
    executed = "".join(p.read_text() for p in smoke_book["executed"])
    assert "TqdmWarning" in executed  # what the pages must not show is really there to hide
    for page in (smoke_book["html"] / "notebooks").glob("*.html"):
        text = page.read_text()
        assert "TqdmWarning" not in text and "FutureWarning" not in text, page.name
        assert ".venv" not in text and "site-packages" not in text, page.name


def test_second_run_skips_up_to_date_chapters(smoke_book, capsys):
    mtimes = [p.stat().st_mtime for p in smoke_book["executed"]]
    chapter_runs.run_chapters(smoke_book["profile"])
    assert capsys.readouterr().out.count("up to date, skipped") == 5
    assert [p.stat().st_mtime for p in smoke_book["executed"]] == mtimes


def test_rendered_book_has_every_page_and_local_mathjax(smoke_book):
    html = smoke_book["html"]
    for page in ("book/intro", "book/data", "book/method", "book/results", "book/paper_scale",
                 *(f"notebooks/{s}" for s in profiles.chapter_stems())):
        assert (html / f"{page}.html").is_file(), page
    assert (html / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()
    method = (html / "book" / "method.html").read_text()
    assert 'src="../_static/mathjax/tex-mml-chtml.js' in method and "cdn.jsdelivr" not in method


# --------------------------------------------------------------------------------------- headless browser
def _needs_chromium():
    from speechllm_redundancy.book_check import CHROMIUM

    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (/usr/bin/chromium): `apt-get install chromium`")


@pytest.mark.browser
def test_every_page_renders_in_headless_chromium_offline(smoke_book, capsys):
    """What `make book` ends with (`book verify`): every page, its figures, MathJax, the verdicts."""
    _needs_chromium()
    rendering.verify_rendered(smoke_book["profile"])
    assert "pages load in headless Chromium" in capsys.readouterr().out


@pytest.mark.browser
def test_browser_check_reports_outside_requests_missing_assets_and_figures(tmp_path):
    """The check is not a formality: a page that reaches outside, misses an asset and shows fewer figures
    than its notebook has fails it, each problem named."""
    from speechllm_redundancy.book_check import check_rendered

    _needs_chromium()
    html = tmp_path / "html"
    (html / "notebooks").mkdir(parents=True)
    text = "<p>" + "words " * 40 + "</p>"
    (html / "index.html").write_text(f"<html><head><title>t</title></head><body>{text}"
                                     '<img src="https://example.com/x.png"><img src="missing.png"></body></html>')
    (html / "notebooks" / "ch.html").write_text(f"<html><head><title>c</title></head><body><main>{text}"
                                                "</main></body></html>")
    notebook = tmp_path / "ch.ipynb"
    notebook.write_text(json.dumps({"cells": [{"outputs": [{"data": {"image/png": "AAAA"}}]}]}))
    problems = check_rendered(html, {"ch": notebook})
    assert problems["requests to outside 127.0.0.1"] == ["https://example.com/x.png"]
    assert any("missing.png" in path for path, status in problems["served with an error"])
    assert problems["pages"] == ["notebooks/ch.html: 0 figures shown, the notebook has 1"]


def test_verify_without_a_rendered_book_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path))
    with pytest.raises(UserError, match="make html PROFILE=smoke"):
        rendering.verify_rendered(profiles.load_profile("smoke"))
