"""The results file, artifacts/book/<profile>/results.json: each chapter's baselines, verdicts and minutes.

The chapters quote their numbers in prose for readers; a script that checks the project's targets (WER,
BLEU against chance and against the gold-input ceiling, training minutes) or compares two runs needs the
same numbers as data, decided once, by the chapter. While `book run` executes a chapter, ``collecting``
gives it a fresh *fragment* (its path in ``FRAGMENT_ENV``) that ``record_baseline`` and
``report.glue_verdict`` fill; the fragment is kept, beside the executed notebook, only when every cell
succeeded. ``merge`` joins the fragments into results.json and ``page`` fills the results page from it
when the book is rendered. Outside `book run` (an interactive notebook) recording does nothing.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from speechllm_redundancy.cache import atomic_path, atomic_write_text
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.paths import artifacts_dir
from speechllm_redundancy.verdicts import ClaimVerdict

FRAGMENT_ENV = "SPEECHLLM_RESULTS_FRAGMENT"
STATUSES = ("holds", "does not hold", "not testable")
ROW_KEYS = ("chapter", "model", "variant", "task", "set", "metric", "score", "chance", "ceiling")

# The paper's claims: the chapter that tests each, and what it says (the results page's first column).
CLAIMS = {
    1: ("01_origin_of_redundancy",
        "Text-only and speech (SLAM) angular-distance maps are nearly identical; their optimal paths "
        "coincide."),
    2: ("01_origin_of_redundancy",
        "LoRA on the decoder lowers the distances of the pruned blocks but does not raise pruning "
        "tolerance."),
    3: ("01_origin_of_redundancy",
        "The smallest distances lie in deeper blocks; blocks that include the final layer have the largest."),
    4: ("02_healing_dynamics",
        "Without healing WER degrades sharply; decoder-only healing helps; joint decoder + projector healing "
        "is best; projector-only is about as good as none."),
    5: ("03_asr_across_scales", "Larger decoders tolerate more pruning."),
    6: ("04_speech_translation",
        "The ASR-derived pruning path applied to speech translation gives nearly the same BLEU as the "
        "AST-derived path."),
    7: ("05_efficiency",
        "Removing 40 % of Llama-3.1-8B's decoder layers gave a 35 % wall-clock speed-up and cut peak GPU "
        "memory from 15.72 to 10.37 GiB."),
}


# ------------------------------------------------------------------------------- what a chapter records
def status_of(holds: bool | None) -> str:
    """The chapter's decision as a status: True holds, False does not hold, None not testable."""
    if holds is None:
        return "not testable"
    return "holds" if holds else "does not hold"


def under(variant: str, recipe: str | None = None) -> str:
    """What a number or verdict was computed under: the model variant, then the SLAM training recipe."""
    return f"{variant}, {recipe} recipe" if recipe else variant


def verdict_text(holds: bool | None, finding: str, variant: str, recipe: str | None = None) -> str:
    """'<status> on this run (<variant>, <recipe> recipe): <finding>' — the status leads, so the words a
    reader sees and the status in results.json come from the same decision."""
    return f"{status_of(holds)} on this run ({under(variant, recipe)}): {finding}"


def record_claim(verdict: ClaimVerdict) -> str:
    """Record a chapter's verdict on one of the paper's claims (see ``report.glue_verdict``): its status, its
    text (``verdict_text``), what it was computed on and its summary (the results page's cell); returns
    the text."""
    if verdict.claim not in CLAIMS:
        raise UserError(f"claim {verdict.claim!r} is not one of the paper's claims: use 1…{len(CLAIMS)} "
                        "(results.CLAIMS).")
    text = verdict_text(verdict.holds, verdict.finding, verdict.variant, verdict.recipe)
    entry = {"status": status_of(verdict.holds), "verdict": text,
             "variant": under(verdict.variant, verdict.recipe), "summary": verdict.summary}

    def add(fragment):
        fragment["claims"][str(verdict.claim)] = entry

    _update(add)
    return text


def metric_of(task: str) -> str:
    """The paper's metric of a task: WER for ``asr``, BLEU for ``ast-<src>-<tgt>``."""
    if task == "asr":
        return "wer"
    if task.startswith("ast-"):
        return "bleu"
    raise UserError(f"task {task!r}: use asr or ast-<src>-<tgt>.")


def record_baseline(model: str, variant: str, task: str, scores: Mapping[str, float],
                    chance: Mapping[str, float] | None = None, ceiling: Any = None, *,
                    recipe: str | None = None) -> None:
    """Record an unpruned model's score on each evaluation set, with the chance level of each set and the
    gold-input ceiling of its decoder (``ceilings.gold_ceiling``: the decoder handed the gold input as
    text), where the chapter has them.

    Scores come on the library's scale (WER in %, BLEU in points) and are stored as the results file
    states them: WER as a fraction (0.25 for 25 %), BLEU in points. ``ceiling`` is one score or
    ``gold_ceiling``'s result for every set, or a mapping set → either; None where not computed.
    """
    metric = metric_of(task)
    if isinstance(ceiling, Mapping) and "score" not in ceiling:
        ceilings = dict(ceiling)
    else:
        ceilings = {name: ceiling for name in scores}
    chance = chance or {}
    names = [n for n in chance if n in scores] + [n for n in scores if n not in chance]  # the sets as listed
    rows = [{"model": str(model), "variant": under(variant, recipe), "task": task, "set": str(name),
             "metric": metric, "score": _reported(metric, scores[name]),
             "chance": _reported(metric, chance.get(name)),
             "ceiling": _reported(metric, _ceiling_score(ceilings.get(name), metric))}
            for name in names]

    def add(fragment):  # a row recorded again (same model, variant, task, set) replaces the old one
        def same(r):
            return (r["model"], r["variant"], r["task"], r["set"])

        new = {same(r) for r in rows}
        kept = [r for r in fragment["baselines"] if same(r) not in new]
        fragment["baselines"] = kept + [{"chapter": fragment["chapter"], **r} for r in rows]

    _update(add)


def record_settings(settings: Mapping[str, Any]) -> None:
    """Record the settings a chapter ran with (its "This run" table) as JSON values."""
    plain = json.loads(json.dumps(dict(settings), default=str))

    def add(fragment):
        fragment["settings"] = plain

    _update(add)


def _reported(metric: str, value) -> float | None:
    """A library score as the results file states it (WER % → fraction); None for missing or non-finite."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    return value / 100 if metric == "wer" else value


def _ceiling_score(value, metric: str):
    if isinstance(value, Mapping):  # gold_ceiling's result: {metric, score, hyps, refs}
        if value.get("metric", metric) != metric:
            raise UserError(f"ceiling measured in {value.get('metric')}, the baseline in {metric}: pass the "
                            "gold-input ceiling of the same task.")
        return value.get("score")
    return value


def _update(change) -> bool:
    """Apply ``change`` to this execution's fragment, if `book run` gave it one (else do nothing)."""
    path = os.environ.get(FRAGMENT_ENV)
    if not path:
        return False
    fragment = json.loads(Path(path).read_text())
    change(fragment)
    _write_json(Path(path), fragment)
    return True


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------- around an execution
def empty_fragment(chapter: str) -> dict:
    return {"chapter": chapter, "baselines": [], "claims": {}, "settings": {}, "minutes": {}}


@contextmanager
def collecting(path: str | os.PathLike, chapter: str) -> Iterator[Path]:
    """One execution of ``chapter``: its kernel (which inherits ``FRAGMENT_ENV``) fills a fresh fragment,
    which replaces ``path`` with the execution's minutes added only if the block succeeds."""
    previous = os.environ.get(FRAGMENT_ENV)
    with atomic_path(path) as tmp:
        _write_json(tmp, empty_fragment(chapter))
        os.environ[FRAGMENT_ENV] = str(tmp)
        started, clock = time.time(), time.perf_counter()
        try:
            yield tmp
        finally:
            if previous is None:
                os.environ.pop(FRAGMENT_ENV, None)
            else:
                os.environ[FRAGMENT_ENV] = previous
        fragment = json.loads(tmp.read_text())
        fragment["minutes"] = {"execution": round((time.perf_counter() - clock) / 60, 3),
                               **trained_minutes_since(started)}
        _write_json(tmp, fragment)


def trained_minutes_since(since: float) -> dict[str, float]:
    """Training minutes of the runs that finished after ``since`` (a time.time()): SLAM models with their
    CTC warm starts (artifacts/slam/) and healing runs (artifacts/sweeps/*/heal-*), as each run's
    result.json states them. A chapter whose models all came from the cache trained nothing: 0."""
    root = artifacts_dir()
    found = {"training": root.glob("slam/*/result.json"), "healing": root.glob("sweeps/*/heal-*/result.json")}
    minutes = {}
    for kind, files in found.items():
        total = 0.0
        for result in files:
            try:
                if result.stat().st_mtime >= since:
                    total += float(json.loads(result.read_text()).get("minutes") or 0.0)
            except (OSError, ValueError):  # a run being written by someone else: not this chapter's
                continue
        minutes[kind] = round(total, 3)
    return minutes


# --------------------------------------------------------------------------------------- the whole book
def merge(fragments: Mapping[str, dict], profile: str, description: str = "") -> dict:
    """One results file from the chapters' fragments ({stem: fragment}, in book order)."""
    claims: dict[str, dict] = {}
    for stem, fragment in fragments.items():
        for number, entry in fragment.get("claims", {}).items():
            if number in claims:
                first = claims[number]["chapter"]
                raise UserError(f"claim {number} has verdicts from both {first} and {stem}: let one chapter "
                                "decide it.")
            if entry.get("status") not in STATUSES:
                raise UserError(f"{stem} gives claim {number} the status {entry.get('status')!r}: "
                                f"use one of {', '.join(STATUSES)}.")
            claims[number] = {"chapter": stem, "claim": CLAIMS[int(number)][1], **entry}
    return {"profile": profile, "description": description, "chapters": list(fragments),
            "claims": dict(sorted(claims.items(), key=lambda item: int(item[0]))),
            "baselines": [{key: row.get(key) for key in ROW_KEYS}
                          for fragment in fragments.values() for row in fragment["baselines"]],
            "minutes": {stem: f.get("minutes", {}) for stem, f in fragments.items()},
            "settings": {stem: f.get("settings", {}) for stem, f in fragments.items()}}


def write(path: str | os.PathLike, results: dict) -> Path:
    _write_json(Path(path), results)
    return Path(path)


# ------------------------------------------------------------------------------------ the results page
def marker(table: str) -> str:
    """Where the results page (book/results.md) wants a generated table."""
    return f"<!-- results.json: {table} -->"


def page(template: str, results: dict) -> str:
    """The results page: ``template`` (book/results.md) with each marker replaced by its table."""
    tables = {"claims": claims_table(results), "baselines": baselines_table(results),
              "minutes": minutes_table(results)}
    for name, table in tables.items():
        if marker(name) not in template:
            raise UserError(f"the results page has no `{marker(name)}` line: put it where the {name} table "
                            "goes.")
        template = template.replace(marker(name), table)
    return template


def claims_table(results: dict) -> str:
    claims = results["claims"]
    missing = [n for n in CLAIMS if "summary" not in claims.get(str(n), {})]  # none, or from before summaries
    if missing:
        chapters = sorted({CLAIMS[n][0] for n in missing})
        raise UserError(f"no verdict with a summary on claim(s) {', '.join(map(str, missing))} in "
                        f"results.json of profile {results['profile']}: re-run {', '.join(chapters)} "
                        f"(`make notebooks PROFILE={results['profile']}`), which record them.")
    lines = ["| # | claim of the paper | verdict on this run | details |", "|---|---|---|---|"]
    for number, (_, statement) in CLAIMS.items():
        entry = claims[str(number)]
        lines.append(f"| {number} | {_md(statement)} | **{entry['status']}**: {_md(entry['summary'])} | "
                     f"{_chapter_link(entry['chapter'])} |")
    return "\n".join(lines)


def baselines_table(results: dict) -> str:
    rows = results["baselines"]
    if not rows:
        return "No chapter of this run recorded a baseline."
    lines = ["| chapter | model | variant | task | set | score | chance | gold-input ceiling |",
             "|---|---|---|---|---|--:|--:|--:|"]
    for r in rows:
        cells = [_chapter_link(r["chapter"]), *(_md(str(r[k])) for k in ("model", "variant", "task", "set")),
                 *(_score(r["metric"], r[k]) for k in ("score", "chance", "ceiling"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def minutes_table(results: dict) -> str:
    kinds = (("execution", "execution"), ("training", "SLAM training"), ("healing", "healing"))
    lines = ["| chapter | " + " | ".join(f"{label} (min)" for _, label in kinds) + " |",
             "|---|" + "--:|" * len(kinds)]
    totals = dict.fromkeys((k for k, _ in kinds), 0.0)
    for stem, minutes in results["minutes"].items():
        cells = [f"{minutes.get(k, 0.0):.2f}" for k, _ in kinds]
        lines.append(f"| {_chapter_link(stem)} | " + " | ".join(cells) + " |")
        for k in totals:
            totals[k] += minutes.get(k, 0.0)
    lines.append("| all chapters | " + " | ".join(f"{totals[k]:.2f}" for k, _ in kinds) + " |")
    return "\n".join(lines)


def _score(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f} % WER" if metric == "wer" else f"{value:.2f} BLEU"


def _chapter_link(stem: str) -> str:
    number = stem.split("_", 1)[0].lstrip("0") or "0"
    return f"{{doc}}`ch. {number} <../notebooks/{stem}>`"


def _md(text: str) -> str:
    """Text as literal Markdown inside a table cell: table pipes, emphasis, math, roles and substitutions
    escaped (CommonMark lets a backslash escape any ASCII punctuation)."""
    return "".join(f"\\{c}" if c in "\\|*_`$[]<>{}~#" else c for c in text.replace("\n", " "))
