"""The executed chapters of a profile → a rendered, fully offline HTML book (Jupyter Book 1.x).

The book's sources are staged in `artifacts/book/<profile>/`: the pages (`book/`), the executed chapters
(chapter_runs.py), the results page filled from the merged results, and MathJax (vendoring.py).
Rendering never executes anything: pages come already executed, so the build is fast and reproducible.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from speechllm_redundancy import results
from speechllm_redundancy.cache import atomic_write_text
from speechllm_redundancy.chapter_runs import (book_dir, executed_path, merged_results, results_path,
                                               stale_inputs)
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.paths import REPO_ROOT
from speechllm_redundancy.profiles import Profile
from speechllm_redundancy.vendoring import mathjax_dir

PAGES_DIR = REPO_ROOT / "book"


def toc_chapters() -> list[str]:
    """Notebook stems the table of contents lists (`notebooks/<stem>` entries of _toc.yml)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            entry = node.get("file") or node.get("root")
            if isinstance(entry, str) and entry.startswith("notebooks/"):
                found.append(Path(entry).stem)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load((REPO_ROOT / "_toc.yml").read_text()))
    return found


def stage_book(profile: Profile) -> Path:
    """Lay out the book's sources for `profile` in artifacts/book/<profile>/ (replacing what was there)."""
    missing = [s for s in toc_chapters() if not executed_path(profile, s).exists()]
    if missing:
        raise UserError(f"no executed notebook for {', '.join(missing)} with profile {profile.name}: run "
                        f"`make notebooks PROFILE={profile.name}` (python -m speechllm_redundancy book run "
                        f"--profile {profile.path}) first")
    for stem in toc_chapters():
        if stale := stale_inputs(profile, stem):
            print(f"note: {stem} is out of date ({'; '.join(stale)}); "
                  f"`make notebooks PROFILE={profile.name}` brings it up to date", file=sys.stderr)
    merged = merged_results(profile, require=toc_chapters())
    page = results.page((PAGES_DIR / "results.md").read_text(), merged)
    stage = book_dir(profile)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    if profile.description:
        config.setdefault("html", {})["announcement"] = profile.description
    atomic_write_text(stage / "_config.yml", yaml.safe_dump(config, sort_keys=False))
    shutil.copyfile(REPO_ROOT / "_toc.yml", stage / "_toc.yml")
    shutil.copytree(PAGES_DIR, stage / "book", ignore=shutil.ignore_patterns("_build", ".*"))
    # the results page, filled from results.json (which it offers for download)
    results.write(results_path(profile), merged)
    atomic_write_text(stage / "book" / "results.md", page)
    (stage / "notebooks").mkdir()
    for stem in toc_chapters():
        shutil.copyfile(executed_path(profile, stem), stage / "notebooks" / f"{stem}.ipynb")
    # Not under `_static/`: Jupyter Book would add every .js found there as a <script> to every page.
    shutil.copytree(mathjax_dir(), stage / "_vendor" / "mathjax")
    return stage


def render(profile: Profile) -> Path:
    """Build the HTML book with `jupyter-book build -W` (any warning fails); returns the html folder."""
    stage = stage_book(profile)
    print(f"rendering the {profile.name} book in {stage}", flush=True)
    build = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
             "build", str(stage), "--all", "-W", "--keep-going"]
    if subprocess.run(build, check=False).returncode != 0:
        raise UserError(f"jupyter-book build of {stage} reported warnings or errors (printed above): fix "
                        "them in the pages (book/, _config.yml, _toc.yml) or the chapters, then re-render")
    html = stage / "_build" / "html"
    print(f"book: {html / 'index.html'}\nresults: {results_path(profile)}", flush=True)
    return html


def verify_rendered(profile: Profile) -> None:
    """Open the rendered book of ``profile`` in headless Chromium (see book_check); raises if any page fails."""
    from speechllm_redundancy.book_check import verify

    html = book_dir(profile) / "_build" / "html"
    if not (html / "index.html").exists():
        raise UserError(f"no rendered book in {html}: run `make html PROFILE={profile.name}` first")
    verify(html, {stem: executed_path(profile, stem) for stem in toc_chapters()})
