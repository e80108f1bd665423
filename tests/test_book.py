"""The book: profiles fit the notebooks, the smoke chapters run, the book renders with -W and, served on
127.0.0.1, loads in headless Chromium with every asset found locally and nothing fetched from outside."""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from speechllm_redundancy import book
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.paths import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def write_profile(tmp_path: Path, **overrides) -> Path:
    raw = yaml.safe_load((REPO_ROOT / "profiles" / "smoke.yaml").read_text())
    raw.update(overrides)
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ------------------------------------------------------------------------------------ profiles, no kernel
@pytest.mark.parametrize("name", ["smoke", "default", "paper"])
def test_shipped_profiles_fit_every_notebook(name):
    profile = book.load_profile(name)
    book.validate_profile(profile)  # raises on any parameter a notebook does not declare
    assert set(profile.chapters) <= set(book.chapter_stems())
    assert profile.parameters("01_origin_of_redundancy")["corpus"] == profile.corpus


def test_toc_lists_every_chapter_and_every_page_exists():
    assert book.toc_chapters() == book.chapter_stems()
    assert len(book.chapter_stems()) == 5
    toc = (REPO_ROOT / "_toc.yml").read_text()
    for page in ("intro", "data", "method", "results", "paper_scale"):
        assert f"book/{page}" in toc and (REPO_ROOT / "book" / f"{page}.md").is_file()


def test_chapter_parameters_override_common():
    profile = book.load_profile("default")
    assert profile.parameters("04_speech_translation")["speech_llms"] == ["qwen2.5-coder-0.5b"]
    assert profile.parameters("03_asr_across_scales")["speech_llms"] == profile.common["speech_llms"]


def test_undeclared_parameter_is_an_error_naming_chapter_and_parameter(tmp_path):
    path = write_profile(tmp_path, chapters={"02_healing_dynamics": {"healing_stepz": 3}})
    with pytest.raises(UserError, match=r"02_healing_dynamics does not declare healing_stepz.*parameters"):
        book.validate_profile(book.load_profile(path))


def test_common_parameters_reach_only_the_chapters_that_declare_them(tmp_path):
    raw_common = {"device": "cpu", "whisper_window": "trim"}
    profile = book.load_profile(write_profile(tmp_path, common=raw_common, chapters={}))
    book.validate_profile(profile)
    assert "whisper_window" in book.chapter_parameters("03_asr_across_scales")
    assert profile.parameters("03_asr_across_scales")["whisper_window"] == "trim"
    assert "whisper_window" not in book.chapter_parameters("05_efficiency")
    assert "whisper_window" not in profile.parameters("05_efficiency")  # papermill would only warn
    typo = book.load_profile(write_profile(tmp_path, common={"whisper_windw": "trim"}, chapters={}))
    with pytest.raises(UserError, match="no chapter declares the common parameter.*whisper_windw"):
        book.validate_profile(typo)


def test_profile_errors(tmp_path):
    with pytest.raises(UserError, match="not found: pass one of .*smoke"):
        book.load_profile("no-such-profile")
    with pytest.raises(UserError, match="unknown top-level keys"):
        book.load_profile(write_profile(tmp_path, extra=1))
    with pytest.raises(UserError, match="do not exist"):
        book.validate_profile(book.load_profile(write_profile(tmp_path, chapters={"06_nope": {}})))
    with pytest.raises(UserError, match="not found"):
        book.select_chapters(["09"])
    assert book.select_chapters(["02"]) == ["02_healing_dynamics"]


def test_render_without_executed_chapters_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path))
    with pytest.raises(UserError, match=r"make notebooks PROFILE=smoke"):
        book.render(book.load_profile("smoke"))


def test_mathjax_fetch_errors_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path))
    monkeypatch.setattr(book.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="npm is not installed.*apt-get install npm"):
        book.mathjax_dir()
    (tmp_path / "vendor").mkdir()
    (tmp_path / "vendor" / f"mathjax-{book.MATHJAX_VERSION}.tgz").write_bytes(b"not mathjax")
    with pytest.raises(UserError, match="sha512.*delete it"):
        book.mathjax_dir()
    assert not (tmp_path / "vendor" / f"mathjax-{book.MATHJAX_VERSION}").exists()


def test_cli_check_and_params(capsys):
    parser = argparse.ArgumentParser()
    book.register(parser.add_subparsers())

    def main(argv):
        args = parser.parse_args(argv)
        return args.func(args)

    assert main(["book", "check", "--profile", "paper"]) == 0
    assert "fits all 5 chapters" in capsys.readouterr().out
    assert main(["book", "params", "--profile", "smoke", "--chapter", "05"]) == 0
    params = yaml.safe_load(capsys.readouterr().out)
    assert params["pruned_fractions"] == [0.0, 0.25, 0.5] and params["corpus"] == {"size": "smoke"}


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
    monkeypatch.setattr(book, "NOTEBOOKS_DIR", tmp_path / "notebooks")
    (tmp_path / "notebooks").mkdir()
    source = tmp_path / "notebooks" / "01_try.py"
    source.write_text(CHAPTER + 'raise RuntimeError("boom")\n')
    profile = book.load_profile(write_profile(tmp_path, chapters={}, common={"x": 2}))
    out = book.executed_path(profile, "01_try")
    with pytest.raises(UserError, match=r"01_try failed in cell .*RuntimeError: boom.*make notebooks"):
        book.run_chapters(profile)
    assert not out.exists() and out.with_suffix(".failed.ipynb").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind

    source.write_text(CHAPTER)
    book.run_chapters(profile)
    assert "x is 2" in out.read_text() and not out.with_suffix(".failed.ipynb").exists()
    book.run_chapters(profile)
    assert capsys.readouterr().out.count("up to date, skipped") == 1


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
    shared_mathjax = book.mathjax_dir()  # fetched once into the shared cache, then reused by every run
    root = tmp_path_factory.mktemp("artifacts")
    shutil.copytree(shared_mathjax, root / "vendor" / shared_mathjax.name)
    before = os.environ.get("SPEECHLLM_ARTIFACTS")
    os.environ["SPEECHLLM_ARTIFACTS"] = str(root)
    unknown = _Unknown()
    logging.getLogger("papermill").addHandler(unknown)
    try:
        profile = book.load_profile("smoke")
        executed = book.run_chapters(profile)
        html = book.render(profile)
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


def test_second_run_skips_up_to_date_chapters(smoke_book, capsys):
    mtimes = [p.stat().st_mtime for p in smoke_book["executed"]]
    book.run_chapters(smoke_book["profile"])
    assert capsys.readouterr().out.count("up to date, skipped") == 5
    assert [p.stat().st_mtime for p in smoke_book["executed"]] == mtimes


def test_rendered_book_has_every_page_and_local_mathjax(smoke_book):
    html = smoke_book["html"]
    for page in ("book/intro", "book/data", "book/method", "book/results", "book/paper_scale",
                 *(f"notebooks/{s}" for s in book.chapter_stems())):
        assert (html / f"{page}.html").is_file(), page
    assert (html / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()
    method = (html / "book" / "method.html").read_text()
    assert 'src="../_static/mathjax/tex-mml-chtml.js' in method and "cdn.jsdelivr" not in method


# --------------------------------------------------------------------------------------- headless browser
def _image_outputs(notebook: Path) -> int:
    nb = json.loads(notebook.read_text())
    return sum(1 for cell in nb["cells"] for out in cell.get("outputs", [])
               if any(m.startswith("image/") for m in out.get("data", {})))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture(scope="module")
def served_book(smoke_book):
    """The built HTML on 127.0.0.1:<random port>; records every request's path and status."""
    log: list[tuple[str, int]] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):
            log.append((self.path, int(code) if str(code).isdigit() else 0))

        def log_message(self, *args):  # quiet
            pass

    server = _Server(("127.0.0.1", 0), functools.partial(Handler, directory=str(smoke_book["html"])))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.browser
def test_every_page_renders_in_headless_chromium_offline(smoke_book, served_book, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (/usr/bin/chromium): `apt-get install chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright (Python) is not installed: it is in requirements.lock; run `make setup`")
    base, server_log = served_book
    html = smoke_book["html"]
    pages = sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html") if "_static" not in p.parts)
    outside, failed, bad_status = [], [], []

    def route(r):
        url = urlparse(r.request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.hostname != "127.0.0.1":
            outside.append(r.request.url)
            return r.abort()
        return r.continue_()

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context.route("**/*", route)
            page = context.new_page()
            page.on("requestfailed", lambda r: failed.append(f"{r.url} ({r.failure})"))
            page.on("response", lambda r: r.status >= 400 and bad_status.append(f"{r.url} {r.status}"))
            for rel in pages:
                page.goto(f"{base}/{rel}", wait_until="networkidle")
                assert page.title().strip(), f"{rel}: no title"
                body = page.locator("body").inner_text()
                assert len(body.strip()) > 100, f"{rel}: empty body"
                if rel.startswith("notebooks/"):
                    want = _image_outputs(book.executed_path(smoke_book["profile"], Path(rel).stem))
                    imgs = page.locator("article img, main img")
                    loaded = [imgs.nth(i).evaluate("i => i.complete && i.naturalWidth > 0")
                              for i in range(imgs.count())]
                    assert sum(loaded) >= want, f"{rel}: {sum(loaded)} figures shown, the notebook has {want}"
                scripts = page.locator("script[src]").evaluate_all("s => s.map(e => e.src)")
                assert len([u for u in scripts if "/mathjax/" in u]) <= 1, f"{rel}: MathJax parts as scripts"
                if rel == "book/method.html":  # MathJax (served locally) typeset the formulas
                    page.wait_for_selector("mjx-container", timeout=15000)
                    assert page.locator("mjx-container").count() >= 5
                if rel == "book/results.html":  # every claim's verdict glued in from its chapter
                    rows = page.locator("table").first.locator("tbody tr")
                    verdicts = [rows.nth(i).locator("td").last.inner_text().strip() for i in range(rows.count())]
                    assert len(verdicts) == 7 and all(verdicts), verdicts
        finally:
            context.close()
    problems = {"requests to outside 127.0.0.1": outside, "failed requests": failed,
                "HTTP errors": bad_status,
                "served with an error": [entry for entry in server_log if entry[1] >= 400]}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}
    assert len(server_log) > len(pages)  # pages and their assets were all served here
