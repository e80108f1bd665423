"""One manifest format for every corpus: JSON Lines, one utterance per line.

Each line holds ``id``, ``audio`` (a path, relative to the manifest's folder when the audio lives below
it, so a corpus folder can be moved), ``duration`` (seconds), ``sample_rate``, ``text`` (the transcript,
or the source-language sentence for translation) and, for translation, ``src_lang``, ``tgt_lang`` and
``translation``. ``speaker`` (a voice or speaker label) is optional. Every corpus, synthetic or real,
goes through these functions, so the rest of the toolkit reads one thing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from speechllm_redundancy.cache import atomic_path
from speechllm_redundancy.errors import UserError

REQUIRED = ("id", "audio", "text")


@dataclass
class Utterance:
    id: str
    audio: str
    duration: float
    sample_rate: int
    text: str
    src_lang: str | None = None
    tgt_lang: str | None = None
    translation: str | None = None
    speaker: str | None = None

    def target(self, task: str) -> str:
        """What a model learns and is scored on: the transcript for ``asr``, the translation for ``ast-*``
        (UserError if this utterance has none)."""
        return targets([self], task)[0]


_FIELDS = {f.name for f in fields(Utterance)}


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of the non-blank lines: decoded one by one, so a line in another encoding
    is named by its number instead of failing the whole file with a UnicodeDecodeError."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if raw.strip():
                yield number, raw


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{where}: not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1}); "
            "re-save the manifest as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


def _parse_line(raw: bytes, where: str, base: Path) -> Utterance:
    line = _decode(raw, where)
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not valid JSON ({err.msg}); each line must be one JSON object") from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise UserError(f"{where}: missing field(s) {', '.join(missing)}; every line needs id, audio, text")
    unknown = sorted(set(row) - _FIELDS)
    if unknown:
        raise UserError(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_FIELDS))}"
        )
    audio = Path(os.path.expanduser(str(row["audio"])))
    row["audio"] = str(audio if audio.is_absolute() else (base / audio))
    row.setdefault("duration", 0.0)
    row.setdefault("sample_rate", 0)
    return Utterance(**row)


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a manifest; audio paths come back absolute. Malformed lines raise UserError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"manifest {path} does not exist: build the corpus first (`corpus build`) or fix the path"
        )
    base = path.resolve().parent
    return [_parse_line(raw, f"{path}:{number}", base) for number, raw in _lines(path)]


def targets(utts: Sequence[Utterance], task: str, source: str | os.PathLike | None = None) -> list[str]:
    """``Utterance.target`` of each utterance, all checked first: the error names every row without its
    target (and ``source``, where they came from). Callers check this before encoding anything: a row
    without its target is named at once, not after minutes of feature extraction."""
    name = "text" if task == "asr" else "translation"
    found = [getattr(u, name) for u in utts]
    missing = [u.id for u, t in zip(utts, found) if t is None or not str(t).strip()]
    if missing:
        listed = ", ".join(map(repr, missing[:3])) + (", …" if len(missing) > 3 else "")
        where = "" if source is None else f"{source}: "
        raise UserError(
            f"{where}{len(missing)} utterance(s) have no {name} for task {task!r} ({listed}): give each "
            f"its `{name}`, or use a manifest built for this task"
            + (" (a corpus's <src>-<tgt>-train.jsonl / -test.jsonl)" if name == "translation" else "")
        )
    return found


def write_manifest(path: str | os.PathLike, utts: Iterable[Utterance]) -> Path:
    """Write atomically; audio below the manifest's folder is stored relative to it."""
    path = Path(path)
    base = path.resolve().parent
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for utt in utts:
            row = asdict(utt)
            audio = Path(utt.audio).resolve()
            if audio.is_relative_to(base):
                row["audio"] = audio.relative_to(base).as_posix()
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def validate_manifest(path: str | os.PathLike, max_seconds: float | None = 30.0) -> dict:
    """Check every line: UTF-8, parsable, unique id, non-empty text (and translation), audio present,
    readable, not empty, at the ``sample_rate`` the line states and no longer than ``max_seconds`` (what
    the speech encoder accepts; None: no limit). Raises UserError listing the problems by file:line;
    returns counts and hours on success. Cheap (file headers only): run it before encoding anything.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest {path} does not exist: check the path")
    base = path.resolve().parent
    problems: list[str] = []
    seen: dict[str, int] = {}
    seconds = 0.0
    count = 0
    for number, raw in _lines(path):
        where = f"{path}:{number}"
        try:
            utt = _parse_line(raw, where, base)
        except UserError as err:
            problems.append(str(err))
            continue
        count += 1
        if utt.id in seen:
            problems.append(
                f"{where}: duplicate id {utt.id!r} (first on line {seen[utt.id]}); ids must be unique"
            )
        else:
            seen[utt.id] = number
        if not str(utt.text).strip():
            problems.append(f"{where}: empty text for {utt.id!r}; give its transcript or drop the line")
        if utt.tgt_lang and not str(utt.translation or "").strip():
            problems.append(
                f"{where}: empty translation for {utt.id!r} (tgt_lang={utt.tgt_lang}); give its translation "
                "or drop the line"
            )
        length, problem = _audio_problem(utt, where, max_seconds)
        seconds += length
        if problem:
            problems.append(problem)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UserError(f"{path}: {len(problems)} problem(s):\n  {shown}{more}")
    if count == 0:
        raise UserError(f"{path}: the manifest has no utterances; build or fill it first")
    return {"utterances": count, "hours": seconds / 3600.0}


def _audio_problem(utt: Utterance, where: str, max_seconds: float | None) -> tuple[float, str | None]:
    """(seconds, what is wrong with the utterance's audio file or None), from its header alone."""
    import soundfile as sf

    if not Path(utt.audio).is_file():
        return 0.0, f"{where}: audio file {utt.audio} is missing; fix the path or rebuild the corpus"
    try:
        info = sf.info(utt.audio)
    except Exception as err:  # noqa: BLE001 - soundfile raises several types for unreadable data
        return 0.0, f"{where}: audio file {utt.audio} is unreadable ({err}); re-create or convert it"
    length = info.frames / info.samplerate
    if info.frames == 0:
        return 0.0, (f"{where}: audio file {utt.audio} of {utt.id!r} is empty (0 samples); re-record it or "
                     "drop the line")
    if utt.sample_rate and utt.sample_rate != info.samplerate:
        # the audio is resampled to 16 kHz when read, whatever its rate; a disagreement means the line
        # describes another file than the one on disk (replaced, re-encoded, or a wrong path)
        return length, (
            f"{where}: audio file {utt.audio} of {utt.id!r} is {info.samplerate} Hz but the line says "
            f"sample_rate {utt.sample_rate}; rebuild the manifest from the audio (or fix sample_rate)"
        )
    if max_seconds is not None and length > max_seconds:
        return length, (
            f"{where}: audio {utt.audio} lasts {length:.1f} s, longer than the encoder's {max_seconds:g} s; "
            "split or drop it (or raise max_seconds for an encoder that accepts more)"
        )
    return length, None
