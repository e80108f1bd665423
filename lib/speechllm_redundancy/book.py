"""The book: a profile's parameters → executed chapters (papermill) → a rendered, fully offline HTML book.

Chapters are jupytext percent-format notebooks (`notebooks/NN_name.py`); a profile (`profiles/*.yaml`)
says which models, corpus and parameters every chapter runs with. Executed notebooks go to
`artifacts/executed/<profile>/` (never into git), each beside the results fragment its run recorded (see
results.py); the staged book, its HTML and the merged `results.json` to `artifacts/book/<profile>/`.
Rendering never executes anything: pages come already executed, so the build is fast and reproducible.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from speechllm_redundancy import results
from speechllm_redundancy.cache import atomic_path, atomic_write_text
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.paths import REPO_ROOT, artifacts_dir

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
LIBRARY_DIR = Path(__file__).resolve().parent
PROFILES_DIR = REPO_ROOT / "profiles"
PAGES_DIR = REPO_ROOT / "book"
KERNEL_NAME = "speechllm-redundancy"
PROFILE_KEYS = {"description", "models", "corpus", "common", "chapters"}

# MathJax 3 from the npm registry, checked against the registry's published integrity hash.
MATHJAX_VERSION = "3.2.2"
MATHJAX_SHA512 = "Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
# what the book loads (tex-mml-chtml.js) and what it may load lazily (extensions, fonts, menu, a11y)
MATHJAX_FILES = ("tex-mml-chtml.js", "a11y", "adaptors", "input", "output", "sre", "ui")


# ----------------------------------------------------------------------------------------------- profiles
@dataclass
class Profile:
    """A parsed `profiles/*.yaml` (see profiles/smoke.yaml for the layout)."""

    name: str
    path: Path
    description: str = ""
    models: list[str] = field(default_factory=list)
    corpus: dict[str, Any] = field(default_factory=dict)
    common: dict[str, Any] = field(default_factory=dict)
    chapters: dict[str, dict[str, Any]] = field(default_factory=dict)

    def parameters(self, stem: str) -> dict[str, Any]:
        """What papermill passes to chapter `stem`: corpus settings, the `common` entries the chapter
        declares (a chapter that trains no SLAM model has no use for `train_steps`), then its own."""
        declared = chapter_parameters(stem)
        common = {k: v for k, v in self.common.items() if k in declared}
        return {"corpus": self.corpus, **common, **(self.chapters.get(stem) or {})}


def profile_path(name_or_path: str | os.PathLike) -> Path:
    """`smoke` → profiles/smoke.yaml; an existing yaml path passes through."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path.resolve()
    elif (PROFILES_DIR / f"{name_or_path}.yaml").is_file():
        return PROFILES_DIR / f"{name_or_path}.yaml"
    known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
    raise UserError(f"profile {str(name_or_path)!r} not found: pass one of {known} or a yaml file's path")


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """Read and check the structure of a profile (not yet against the notebooks: see `validate_profile`)."""
    path = profile_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"profile {path} is not valid YAML ({err}): fix the file") from err
    if not isinstance(raw, dict):
        raise UserError(f"profile {path} must be a mapping with keys {sorted(PROFILE_KEYS)}: fix the file")
    unknown = set(raw) - PROFILE_KEYS
    if unknown:
        raise UserError(f"profile {path} has unknown top-level keys {sorted(unknown)}: "
                        f"use only {sorted(PROFILE_KEYS)} (parameters go under `common` or `chapters`)")
    for key, kind in (("models", list), ("corpus", dict), ("common", dict), ("chapters", dict)):
        if raw.get(key) is not None and not isinstance(raw[key], kind):
            raise UserError(f"profile {path}: `{key}` must be a {kind.__name__}: fix the file")
    chapters = raw.get("chapters") or {}
    for stem, params in chapters.items():
        if params is not None and not isinstance(params, dict):
            raise UserError(f"profile {path}: chapters.{stem} must be a mapping of parameters: fix the file")
    return Profile(name=path.stem, path=path, description=str(raw.get("description") or ""),
                   models=[str(m) for m in raw.get("models") or []], corpus=dict(raw.get("corpus") or {}),
                   common=dict(raw.get("common") or {}),
                   chapters={stem: dict(params or {}) for stem, params in chapters.items()})


# ----------------------------------------------------------------------------------------------- chapters
def chapter_stems() -> list[str]:
    """The chapters, in book order: notebooks/NN_*.py."""
    return sorted(p.stem for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.py"))


def select_chapters(requested: list[str] | None) -> list[str]:
    """Chapters by exact stem or unique prefix (`01` → 01_origin_of_redundancy); all when none requested."""
    stems = chapter_stems()
    if not requested:
        return stems
    chosen = []
    for want in requested:
        hits = [s for s in stems if s == want] or [s for s in stems if s.startswith(want)]
        if len(hits) != 1:
            raise UserError(f"chapter {want!r} {'is ambiguous' if hits else 'not found'}: "
                            f"pass one of {', '.join(stems)} (or a unique prefix such as 01)")
        chosen.append(hits[0])
    return chosen


def read_chapter(stem: str):
    """The chapter's jupytext source as an nbformat notebook, set to run on this environment's kernel."""
    import jupytext

    nb = jupytext.read(NOTEBOOKS_DIR / f"{stem}.py")
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python (speechllm-redundancy)",
                                 "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    return nb


def declared_parameters(nb) -> set[str]:
    """Names assigned in the notebook's `parameters` cell (papermill's own parser)."""
    from papermill.translators import PythonTranslator

    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        return set()
    return {p.name for p in PythonTranslator.inspect(cells[0])}


def chapter_parameters(stem: str) -> set[str]:
    """The parameters chapter `stem` declares (memoised per version of its source file)."""
    source = NOTEBOOKS_DIR / f"{stem}.py"
    if not source.is_file():
        return set()
    return set(_declared_in(stem, source.stat().st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _declared_in(stem: str, mtime_ns: int) -> frozenset[str]:
    return frozenset(declared_parameters(read_chapter(stem)))


def validate_profile(profile: Profile, stems: list[str] | None = None) -> None:
    """Every chapter the profile names exists and declares every parameter the profile gives it, and
    every `common` parameter is declared by at least one chapter.

    Papermill would only log a warning for an undeclared parameter and run on with the notebook's default:
    a silently ignored setting (a typo, say). Here it is an error, raised before anything runs.
    """
    known = chapter_stems()
    unknown = sorted(set(profile.chapters) - set(known))
    if unknown:
        raise UserError(f"profile {profile.path} names chapters {unknown} that do not exist: "
                        f"use notebook stems from notebooks/ ({', '.join(known)})")
    _check_model_names(profile)
    problems = []
    for stem in stems or known:
        declared = declared_parameters(read_chapter(stem))
        if not declared:
            problems.append(f"{stem} has no cell tagged `parameters`")
            continue
        missing = sorted({"corpus", *(profile.chapters.get(stem) or {})} - declared)
        if missing:
            problems.append(f"{stem} does not declare {', '.join(missing)}")
    unused = sorted(k for k in profile.common if not any(k in chapter_parameters(s) for s in known))
    if unused:
        problems.append(f"no chapter declares the common parameter(s) {', '.join(unused)}")
    if problems:
        raise UserError(f"profile {profile.path} does not fit the notebooks: {'; '.join(problems)}. "
                        "Fix: declare each parameter (with a default) in the notebook's `parameters` cell, "
                        "or remove it from the profile")


def profile_model_names(profile: Profile) -> list[tuple[str, str]]:
    """(where, name) of every model the profile names: its `models` list and the parameters called
    `encoder`, `*_encoder` or `*_llms` (the notebooks' convention for model names) — a list, or a mapping
    (e.g. one encoder per translation direction) whose values are names."""
    found = [("models", m) for m in profile.models]
    sections = [("common", profile.common), *((f"chapters.{s}", p) for s, p in profile.chapters.items())]
    for prefix, params in sections:
        for key, value in params.items():
            if key == "encoder" or key.endswith(("_encoder", "_llms")):
                if isinstance(value, dict):
                    found += [(f"{prefix}.{key}.{k}", str(v)) for k, v in value.items() if v is not None]
                    continue
                values = value if isinstance(value, list) else [value]
                found += [(f"{prefix}.{key}", str(v)) for v in values if v is not None]
    return found


def _check_model_names(profile: Profile) -> None:
    """A misspelt model fails here, before any chapter runs, not when the chapter that uses it loads it."""
    from speechllm_redundancy.zoo.fetch import reference_kind

    bad = []
    for where, name in profile_model_names(profile):
        try:
            reference_kind(name)
        except UserError as err:
            bad.append(f"`{where}`: {err}")
    if bad:
        raise UserError(f"profile {profile.path} names models that cannot be loaded: {' | '.join(bad)}")


# --------------------------------------------------------------------------------------------- execution
def ensure_kernel() -> str:
    """A Jupyter kernel spec that runs *this* Python (the venv's), installed into the venv if needed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def current() -> str | None:
        try:
            return KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv[0]
        except NoSuchKernel:
            return None

    if current() == sys.executable:
        return KERNEL_NAME
    from ipykernel.kernelspec import install

    try:
        install(kernel_name=KERNEL_NAME, display_name="Python (speechllm-redundancy)", prefix=sys.prefix)
    except PermissionError:
        install(kernel_name=KERNEL_NAME, display_name="Python (speechllm-redundancy)", user=True)
    found = current()
    if found != sys.executable:
        raise UserError(f"the Jupyter kernel {KERNEL_NAME!r} runs {found}, not this environment's "
                        f"{sys.executable} "
                        f"(another kernel spec of that name comes first): remove it with "
                        f"`jupyter kernelspec remove {KERNEL_NAME}` and re-run")
    return KERNEL_NAME


def executed_path(profile: Profile, stem: str) -> Path:
    return artifacts_dir() / "executed" / profile.name / f"{stem}.ipynb"


def fragment_path(profile: Profile, stem: str) -> Path:
    """What the chapter's last successful execution recorded (results.py), beside its executed notebook."""
    return executed_path(profile, stem).with_suffix(".results.json")


def results_path(profile: Profile) -> Path:
    return book_dir(profile) / "results.json"


def library_mtime() -> float:
    """When the library was last edited: a chapter executed before that may say what the code no longer does
    (a verdict's wording, a chance level), so it is re-run — cheaply, its models and points being cached."""
    return max(p.stat().st_mtime for p in LIBRARY_DIR.rglob("*.py"))


def is_fresh(profile: Profile, stem: str) -> bool:
    """Executed after the last edit of its source, its profile and the library, with the parameters the
    profile gives now."""
    out = executed_path(profile, stem)
    if not out.exists() or not fragment_path(profile, stem).exists():
        return False
    source = NOTEBOOKS_DIR / f"{stem}.py"
    if out.stat().st_mtime < max(source.stat().st_mtime, profile.path.stat().st_mtime, library_mtime()):
        return False
    try:
        ran_with = json.loads(out.read_text())["metadata"]["papermill"]["parameters"]
    except (KeyError, ValueError):
        return False
    return ran_with == json.loads(json.dumps(profile.parameters(stem)))


def run_chapter(profile: Profile, stem: str, kernel: str) -> Path:
    """Execute one chapter with papermill; the executed notebook appears only if every cell succeeded."""
    import papermill

    out = executed_path(profile, stem)
    failed = out.with_suffix(".failed.ipynb")
    with atomic_path(out) as tmp, results.collecting(fragment_path(profile, stem), stem):
        try:
            papermill.execute_notebook(read_chapter(stem), str(tmp), parameters=profile.parameters(stem),
                                       kernel_name=kernel, language="python", cwd=str(NOTEBOOKS_DIR),
                                       progress_bar=True)
        except papermill.PapermillExecutionError as err:
            if tmp.exists():
                shutil.copyfile(tmp, failed)
            raise UserError(f"chapter {stem} failed in cell {err.exec_count}: {err.ename}: {err.evalue}. "
                            f"The partly executed notebook is {failed}. Fix the cause and re-run "
                            f"`make notebooks PROFILE={profile.name}` (finished chapters are kept)") from err
    failed.unlink(missing_ok=True)
    return out


def run_chapters(profile: Profile, chapters: list[str] | None = None, force: bool = False) -> list[Path]:
    """Run the chosen chapters (all by default), skipping those already executed and up to date."""
    stems = select_chapters(chapters)
    validate_profile(profile, stems)
    kernel = ensure_kernel()
    outputs = []
    for i, stem in enumerate(stems, 1):
        prefix = f"[{i}/{len(stems)}] {stem} ({profile.name})"
        if not force and is_fresh(profile, stem):
            print(f"{prefix}: up to date, skipped ({executed_path(profile, stem)})", flush=True)
        else:
            print(f"{prefix}: running…", flush=True)
            start = time.perf_counter()
            run_chapter(profile, stem, kernel)
            print(f"{prefix}: done in {time.perf_counter() - start:.1f} s", flush=True)
        outputs.append(executed_path(profile, stem))
    print(f"results: {results.write(results_path(profile), merged_results(profile))}", flush=True)
    return outputs


def merged_results(profile: Profile, require: list[str] | None = None) -> dict:
    """The results file of ``profile``: the fragments of its executed chapters merged; every chapter in
    ``require`` must have one."""
    missing = [s for s in require or [] if not fragment_path(profile, s).exists()]
    if missing:
        raise UserError(f"{', '.join(missing)} (profile {profile.name}) recorded no results (executed before "
                        f"results were recorded, or by hand): re-run `make notebooks PROFILE={profile.name}`")
    fragments = {s: json.loads(fragment_path(profile, s).read_text()) for s in chapter_stems()
                 if fragment_path(profile, s).exists()}
    return results.merge(fragments, profile.name, profile.description)


# ----------------------------------------------------------------------------------------------- MathJax
def mathjax_dir() -> Path:
    """MathJax 3's browser files, fetched once from the npm registry (`npm pack`) into artifacts/vendor/.

    A tarball placed at artifacts/vendor/mathjax-<version>.tgz is used instead of the registry (offline
    machines). Either way the tarball must match the registry's published sha512.
    """
    target = artifacts_dir() / "vendor" / f"mathjax-{MATHJAX_VERSION}"
    if (target / "tex-mml-chtml.js").exists():
        return target
    tarball = target.with_name(f"mathjax-{MATHJAX_VERSION}.tgz")
    with tempfile.TemporaryDirectory() as tmp:
        if not tarball.exists():
            tarball = Path(tmp) / tarball.name
            _npm_pack(f"mathjax@{MATHJAX_VERSION}", Path(tmp))
        digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if digest != MATHJAX_SHA512:
            raise UserError(f"{tarball} has sha512 {digest}, expected {MATHJAX_SHA512}: delete it and re-run "
                            "to fetch MathJax again from the npm registry")
        with tarfile.open(tarball) as archive:
            archive.extractall(tmp, filter="data")
        with atomic_path(target) as out:
            out.mkdir()
            for name in MATHJAX_FILES:
                src = Path(tmp) / "package" / "es5" / name
                (shutil.copytree if src.is_dir() else shutil.copyfile)(src, out / name)
            shutil.copyfile(Path(tmp) / "package" / "LICENSE", out / "LICENSE")
    return target


def _npm_pack(spec: str, dest: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise UserError("npm is not installed, and the book serves MathJax itself (no CDN): install it "
                        "(`apt-get install npm`, done by `make setup`) or put mathjax-"
                        f"{MATHJAX_VERSION}.tgz into {artifacts_dir() / 'vendor'}")
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false",
           "npm_config_audit": "false"}
    done = subprocess.run([npm, "pack", spec, "--silent"], check=False, cwd=dest, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"could not fetch {spec} from the npm registry ({done.stderr.strip()[-300:]}): make "
                        f"the registry reachable, or put mathjax-{MATHJAX_VERSION}.tgz into "
                        f"{artifacts_dir() / 'vendor'}")


# ---------------------------------------------------------------------------------------------- rendering
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


def book_dir(profile: Profile) -> Path:
    """Where the book of ``profile`` is staged; its HTML is in ``_build/html`` below."""
    return artifacts_dir() / "book" / profile.name


def verify_rendered(profile: Profile) -> None:
    """Open the rendered book of ``profile`` in headless Chromium (see book_check); raises if any page fails."""
    from speechllm_redundancy.book_check import verify

    html = book_dir(profile) / "_build" / "html"
    if not (html / "index.html").exists():
        raise UserError(f"no rendered book in {html}: run `make html PROFILE={profile.name}` first")
    verify(html, {stem: executed_path(profile, stem) for stem in toc_chapters()})


def stage_book(profile: Profile) -> Path:
    """Lay out the book's sources for `profile` in artifacts/book/<profile>/ (replacing what was there)."""
    missing = [s for s in toc_chapters() if not executed_path(profile, s).exists()]
    if missing:
        raise UserError(f"no executed notebook for {', '.join(missing)} with profile {profile.name}: run "
                        f"`make notebooks PROFILE={profile.name}` (python -m speechllm_redundancy book run "
                        f"--profile {profile.path}) first")
    for stem in toc_chapters():
        if not is_fresh(profile, stem):
            print(f"note: {stem} was executed before its source, profile or the library last changed; "
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


# -------------------------------------------------------------------------------------- inside notebooks
class Verdict(str):
    """A str whose repr is itself, so `{glue:text}` pastes it into a page without quotes."""

    def __repr__(self) -> str:
        return str(self)


def settings_table(settings: dict[str, Any]):
    """The "This run" table each chapter ends with: every setting it ran with, values as text (and, under
    `book run`, in the results file)."""
    import pandas as pd

    results.record_settings(settings)
    return pd.Series({name: str(value) for name, value in settings.items()}, name="value").to_frame()


def glue_verdict(claim: int, holds: bool | None, finding: str, *, variant: str,
                 recipe: str | None = None) -> None:
    """Publish a chapter's verdict on one of the paper's claims: ``holds`` is the chapter's decision (None:
    not testable), ``finding`` the numbers behind it, ``variant`` and ``recipe`` what it was computed on.
    The verdict reads "<status> on this run (<variant>, <recipe> recipe): <finding>"; it goes to the results
    file (the results page renders from it) and is glued as `claim_<n>`."""
    from myst_nb import glue

    text = results.record_claim(claim, holds, finding, variant=variant, recipe=recipe)
    glue(f"claim_{claim}", Verdict(text), display=False)


# --------------------------------------------------------------------------------------------------- CLI
def register(subparsers) -> None:
    book = subparsers.add_parser("book", help="run the chapters (papermill), render the book (Jupyter Book)")
    sub = book.add_subparsers(dest="book_command", required=True)

    def with_profile(parser):
        parser.add_argument("--profile", required=True, help="profile name (smoke, default, paper) or yaml")
        return parser

    run = with_profile(sub.add_parser("run", help="execute the chapters into artifacts/executed/<profile>/"))
    run.add_argument("--chapter", action="append", help="only this chapter (stem or prefix: 01); repeatable")
    run.add_argument("--force", action="store_true", help="re-run chapters that are already up to date")
    run.set_defaults(func=_run)

    render_cmd = with_profile(sub.add_parser("render", help="build the HTML into artifacts/book/<profile>/"))
    render_cmd.set_defaults(func=_render)

    verify_cmd = with_profile(sub.add_parser("verify", help="open every rendered page in headless Chromium, "
                                                         "offline: figures shown, nothing fetched from outside"))
    verify_cmd.set_defaults(func=_verify)

    check = with_profile(sub.add_parser("check", help="check a profile against the notebooks; runs nothing"))
    check.set_defaults(func=_check)

    params = with_profile(sub.add_parser("params", help="a chapter's parameters as YAML (papermill -f)"))
    params.add_argument("--chapter", required=True, help="chapter stem or prefix such as 01")
    params.set_defaults(func=_params)


def _run(args) -> int:
    run_chapters(load_profile(args.profile), args.chapter, args.force)
    return 0


def _render(args) -> int:
    render(load_profile(args.profile))
    return 0


def _verify(args) -> int:
    verify_rendered(load_profile(args.profile))
    return 0


def _check(args) -> int:
    profile = load_profile(args.profile)
    validate_profile(profile)
    print(f"profile {profile.name} ({profile.path}) fits all {len(chapter_stems())} chapters")
    return 0


def _params(args) -> int:
    profile = load_profile(args.profile)
    (stem,) = select_chapters([args.chapter])
    print(yaml.safe_dump(profile.parameters(stem), sort_keys=False), end="")
    return 0
