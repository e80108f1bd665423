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
from collections.abc import Iterable
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


_FIELDS = {f.name for f in fields(Utterance)}


def _parse_line(line: str, where: str, base: Path) -> Utterance:
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
    utts = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                utts.append(_parse_line(line, f"{path}:{number}", base))
    return utts


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


def validate_manifest(path: str | os.PathLike, max_seconds: float = 30.0) -> dict:
    """Check every line: parsable, unique id, non-empty text (and translation), readable audio no longer
    than ``max_seconds`` (what the speech encoder accepts). Raises UserError listing the problems by
    file:line; returns counts and hours on success.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest {path} does not exist: check the path")
    base = path.resolve().parent
    problems: list[str] = []
    seen: dict[str, int] = {}
    seconds = 0.0
    count = 0
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                utt = _parse_line(line, where, base)
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
                problems.append(f"{where}: empty translation for {utt.id!r} (tgt_lang={utt.tgt_lang})")
            if not Path(utt.audio).is_file():
                problems.append(
                    f"{where}: audio file {utt.audio} is missing; fix the path or rebuild the corpus"
                )
                continue
            try:
                info = sf.info(utt.audio)
            except Exception as err:  # noqa: BLE001 - soundfile raises several types for unreadable data
                problems.append(
                    f"{where}: audio file {utt.audio} is unreadable ({err}); re-create or convert it"
                )
                continue
            length = info.frames / info.samplerate
            seconds += length
            if length > max_seconds:
                problems.append(
                    f"{where}: audio {utt.audio} lasts {length:.1f} s, longer than the encoder's {max_seconds:g} s; "
                    "split or drop it (or raise max_seconds for an encoder that accepts more)"
                )
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UserError(f"{path}: {len(problems)} problem(s):\n  {shown}{more}")
    if count == 0:
        raise UserError(f"{path}: the manifest has no utterances; build or fill it first")
    return {"utterances": count, "hours": seconds / 3600.0}
