"""Profiles (`profiles/*.yaml`): which models, corpus and parameters the chapters run with.

The one reader of profile YAML: the book (`book run`), `models fetch --profile` and `corpus build
--profile` all parse a profile here, with the same rules and errors. A profile is checked against the
chapters it parameterises (`notebooks/NN_name.py`, jupytext percent format), whose `parameters` cells
say which settings each chapter takes.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from speechllm_redundancy.errors import UserError
from speechllm_redundancy.paths import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
PROFILES_DIR = REPO_ROOT / "profiles"
PROFILE_KEYS = {"description", "models", "corpus", "common", "chapters"}


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


def chapter_source(stem: str) -> Path:
    """The jupytext file of chapter `stem`."""
    return NOTEBOOKS_DIR / f"{stem}.py"


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
    """The chapter's jupytext source as an nbformat notebook."""
    import jupytext

    return jupytext.read(chapter_source(stem))


def declared_parameters(nb) -> set[str]:
    """Names assigned in the notebook's `parameters` cell (papermill's own parser)."""
    from papermill.translators import PythonTranslator

    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        return set()
    return {p.name for p in PythonTranslator.inspect(cells[0])}


def chapter_namespace(profile: Profile, stem: str) -> dict[str, Any]:
    """The parameters chapter `stem` runs with on `profile`: its `parameters` cell's defaults, overridden by
    what papermill injects after that cell (`Profile.parameters`). ``experiments.Settings.of`` of it gives
    the chapter's own settings, so a script that takes them (`slam train --profile`) asks the cache for the
    very models the chapter asks for."""
    nb = read_chapter(stem)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    defaults: dict[str, Any] = {}
    if cells:
        exec(compile(cells[0].source, str(chapter_source(stem)), "exec"), defaults)  # assignments of literals
    declared = declared_parameters(nb)
    return {**{k: v for k, v in defaults.items() if k in declared}, **profile.parameters(stem)}


def chapter_parameters(stem: str) -> set[str]:
    """The parameters chapter `stem` declares (memoised per version of its source file)."""
    source = chapter_source(stem)
    if not source.is_file():
        return set()
    return set(_declared_in(source, source.stat().st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _declared_in(source: Path, mtime_ns: int) -> frozenset[str]:
    import jupytext

    return frozenset(declared_parameters(jupytext.read(source)))


# --------------------------------------------------------------------------------------------- validation
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
