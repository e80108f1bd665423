"""Running a profile's chapters with papermill, each only when what it would run has changed.

Executed notebooks go to `artifacts/executed/<profile>/` (never into git), each beside the results
fragment its run recorded (results.py) and the record of its inputs: the hashes of the chapter's source
and of the library's sources, and the parameters it ran with. A chapter whose inputs are those recorded is
up to date and skipped; its models and points being cached, re-running a stale one is cheap. The merged
`results.json` goes to `artifacts/book/<profile>/`, where the book is staged (rendering.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from speechllm_redundancy import profiles, results
from speechllm_redundancy.cache import atomic_path, atomic_write_json, entry_lock, file_sha256, sweep_stale
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.paths import artifacts_dir
from speechllm_redundancy.profiles import Profile, chapter_source, chapter_stems, select_chapters

LIBRARY_DIR = Path(__file__).resolve().parent
KERNEL_NAME = "speechllm-redundancy"


# ------------------------------------------------------------------------------ where a profile's runs go
def executed_path(profile: Profile, stem: str) -> Path:
    return artifacts_dir() / "executed" / profile.name / f"{stem}.ipynb"


def fragment_path(profile: Profile, stem: str) -> Path:
    """What the chapter's last successful execution recorded (results.py), beside its executed notebook."""
    return executed_path(profile, stem).with_suffix(".results.json")


def inputs_path(profile: Profile, stem: str) -> Path:
    """What the chapter's executed notebook was run from (`run_inputs`), beside it."""
    return executed_path(profile, stem).with_suffix(".inputs.json")


def book_dir(profile: Profile) -> Path:
    """Where the book of ``profile`` is staged; its HTML is in ``_build/html`` below."""
    return artifacts_dir() / "book" / profile.name


def results_path(profile: Profile) -> Path:
    return book_dir(profile) / "results.json"


# -------------------------------------------------------------------------------------------- freshness
def library_digest() -> str:
    """A hash of the library's sources (their contents, so a touched but unchanged file changes nothing):
    a chapter run on other code may say what the code no longer does (a verdict's wording, a chance level)."""
    digest = hashlib.sha256()
    for path in sorted(LIBRARY_DIR.rglob("*.py")):
        digest.update(f"{path.relative_to(LIBRARY_DIR).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def run_inputs(profile: Profile, stem: str) -> dict[str, Any]:
    """What a run of chapter `stem` depends on: its source, the parameters the profile gives it (as
    papermill passes them: corpus, the declared `common` entries, its own block) and the library."""
    return {"chapter": file_sha256(chapter_source(stem)),
            "parameters": json.loads(json.dumps(profile.parameters(stem))),
            "library": library_digest()}


def stale_inputs(profile: Profile, stem: str) -> list[str]:
    """Why the executed chapter is out of date (empty: it is up to date)."""
    if not executed_path(profile, stem).exists() or not fragment_path(profile, stem).exists():
        return ["not executed (or its results not recorded)"]
    try:
        ran = json.loads(inputs_path(profile, stem).read_text())
    except (OSError, ValueError):
        return ["no record of what it ran"]
    now = run_inputs(profile, stem)
    names = {"chapter": "its source", "parameters": "its parameters", "library": "the library"}
    return [f"{names[key]} changed" for key in names if ran.get(key) != now[key]]


def is_fresh(profile: Profile, stem: str) -> bool:
    """Executed, and from the chapter source, parameters and library sources there are now."""
    return not stale_inputs(profile, stem)


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


def _runnable_chapter(stem: str):
    """The chapter as a notebook set to run on this environment's kernel."""
    nb = profiles.read_chapter(stem)
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python (speechllm-redundancy)",
                                 "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    return nb


def run_chapter(profile: Profile, stem: str, kernel: str, force: bool = True) -> bool:
    """Execute one chapter with papermill; the executed notebook appears only if every cell succeeded, and
    the record of its inputs (taken before it ran) only once the notebook and its results are in place.

    Runs under the chapter's locks: a second run of it waits for the first. Unless ``force``, it then
    checks again, and returns False without executing when the first made the chapter up to date."""
    import papermill

    out = executed_path(profile, stem)
    failed = out.with_suffix(".failed.ipynb")
    # the locks mark the notebook's and fragment's temporaries as live for `sweep_stale` (a cell may run for
    # days without touching them), and make a second run of the same chapter wait for this one
    with entry_lock(out), entry_lock(fragment_path(profile, stem)):
        if not force and is_fresh(profile, stem):  # executed by another run while this one waited
            return False
        inputs = run_inputs(profile, stem)
        inputs_path(profile, stem).unlink(missing_ok=True)
        with atomic_path(out) as tmp, results.collecting(fragment_path(profile, stem), stem):
            try:
                papermill.execute_notebook(_runnable_chapter(stem), str(tmp),
                                           parameters=profile.parameters(stem), kernel_name=kernel,
                                           language="python", cwd=str(profiles.NOTEBOOKS_DIR),
                                           progress_bar=True)
            except papermill.PapermillExecutionError as err:
                if tmp.exists():
                    shutil.copyfile(tmp, failed)
                raise UserError(f"chapter {stem} failed in cell {err.exec_count}: {err.ename}: "
                                f"{err.evalue}. The partly executed notebook is {failed}. Fix the cause and "
                                f"re-run `make notebooks PROFILE={profile.name}` (finished chapters are "
                                f"kept)") from err
        failed.unlink(missing_ok=True)
        # under the locks: a run waiting for them finds the chapter up to date once it has them
        atomic_write_json(inputs_path(profile, stem), inputs)
    return True


def run_chapters(profile: Profile, chapters: list[str] | None = None, force: bool = False) -> list[Path]:
    """Run the chosen chapters (all by default), skipping those already executed and up to date."""
    stems = select_chapters(chapters)
    profiles.validate_profile(profile, stems)
    swept = sweep_stale(artifacts_dir())  # what killed runs left; a run in progress holds or touches its own
    if swept:
        print(f"removed {len(swept)} temporaries of killed runs, untouched for a day: "
              f"{', '.join(str(p) for p in swept[:5])}{' …' if len(swept) > 5 else ''}", flush=True)
    kernel = ensure_kernel()
    outputs = []
    for i, stem in enumerate(stems, 1):
        prefix = f"[{i}/{len(stems)}] {stem} ({profile.name})"
        if not force and is_fresh(profile, stem):
            print(f"{prefix}: up to date, skipped ({executed_path(profile, stem)})", flush=True)
        else:
            print(f"{prefix}: running…", flush=True)
            start = time.perf_counter()
            if run_chapter(profile, stem, kernel, force=force):
                print(f"{prefix}: done in {time.perf_counter() - start:.1f} s", flush=True)
            else:
                print(f"{prefix}: up to date, executed by another run meanwhile "
                      f"({executed_path(profile, stem)})", flush=True)
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
