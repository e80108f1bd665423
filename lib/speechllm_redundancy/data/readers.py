"""Readers for real corpora on disk, each returning :class:`Utterance` lists (then written as manifests).

* LibriSpeech: ``<root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac`` plus
  ``<speaker>-<chapter>.trans.txt`` ("ID TRANSCRIPT" per line).
* Loquacious Set (Hugging Face ``speechbrain/LoquaciousSet``): Parquet shards with the columns ``ID``,
  ``duration``, ``wav`` (an Audio struct: ``bytes``, ``path``), ``spk_id``, ``sex``, ``text`` and the
  splits train (per subset: small / medium / large / clean) / dev / test, found as Parquet files whose
  path names the split (``dev/…parquet``, ``dev-00000-of-00004.parquet``). The dataset's column names
  are those used by SpeechBrain's recipe and public loaders; the exact shard file names are an
  assumption, hence the lenient matching. An exported form — ``<root>/<split>.csv`` with ``ID,duration,
  wav,spk_id,text`` (``wav`` a path) — is read too. Parquet needs ``pyarrow``.
* CoVoST 2: the pair's ``covost_v2.<src>_<tgt>.tsv`` (``path``, ``translation``, ``split`` and, when
  merged, ``sentence``) with the Common Voice ``clips/`` folder (mp3, decoded by libsndfile ≥ 1.1);
  when the TSV has no ``sentence`` column, pass Common Voice's ``validated.tsv`` as ``cv_tsv``. The
  ``train`` split includes the rows marked ``train_covost``.
* The LibriVox clips shipped in Debian's ``pocketsphinx-testdata`` (a real-speech sanity check).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from speechllm_redundancy.data.audio import audio_seconds
from speechllm_redundancy.data.manifest import Utterance
from speechllm_redundancy.errors import UserError

LIBRIVOX_TESTDATA = Path("/usr/share/pocketsphinx/test/data/librivox")


def _need_dir(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"{what} folder {path} does not exist: check the path in your profile")
    return path


def _utt(uid, audio: Path, text, where: str, **extra) -> Utterance:
    if not audio.is_file():
        raise UserError(f"{where}: audio file {audio} is missing: restore it or drop the line")
    try:
        seconds, rate = audio_seconds(audio)
    except Exception as err:  # noqa: BLE001 - soundfile raises several types for unreadable data
        raise UserError(f"{where}: audio file {audio} is unreadable ({err})") from None
    return Utterance(
        id=str(uid), audio=str(audio), duration=round(seconds, 4), sample_rate=rate, text=text, **extra
    )


# ----------------------------------------------------------------------------------------- LibriSpeech
def read_librispeech(root: str | os.PathLike, subsets: str | list[str]) -> list[Utterance]:
    """All utterances of the given subsets (e.g. ``"test-clean"`` or ``["train-clean-100", …]``)."""
    root = _need_dir(Path(root), "LibriSpeech")
    utts: list[Utterance] = []
    for subset in [subsets] if isinstance(subsets, str) else subsets:
        base = _need_dir(root / subset, f"LibriSpeech subset {subset!r}")
        trans_files = sorted(base.glob("*/*/*.trans.txt"))
        if not trans_files:
            raise UserError(
                f"no <speaker>/<chapter>/*.trans.txt under {base}: is this a LibriSpeech subset folder?"
            )
        for trans in trans_files:
            for number, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                uid, _, text = line.strip().partition(" ")
                if not text.strip():
                    raise UserError(f"{trans}:{number}: empty transcript for {uid}")
                utts.append(
                    _utt(
                        uid,
                        trans.parent / f"{uid}.flac",
                        text.strip(),
                        f"{trans}:{number}",
                        src_lang="en",
                        speaker=uid.split("-")[0],
                    )
                )
    return utts


# ----------------------------------------------------------------------------------------- Loquacious
def _split_files(root: Path, split: str, subset: str | None, suffix: str) -> list[Path]:
    out = []
    for path in sorted(root.rglob(f"*{suffix}")):
        rel = path.relative_to(root)
        parts = [p.lower() for p in rel.parts[:-1]]
        name = rel.name.lower()
        named = split in parts or name.startswith((f"{split}-", f"{split}.", f"{split}_"))
        if named and (subset is None or subset in parts or name.startswith(subset)):
            out.append(path)
    return out


def read_loquacious(
    root: str | os.PathLike,
    split: str = "dev",
    audio_dir: str | os.PathLike | None = None,
    subset: str | None = None,
    limit: int | None = None,
) -> list[Utterance]:
    """Utterances of one Loquacious split. Audio embedded in Parquet is written to ``audio_dir``."""
    root = _need_dir(Path(root), "Loquacious")
    csv_file = root / f"{split}.csv"
    if csv_file.is_file():
        return _loquacious_csv(csv_file, limit)
    shards = _split_files(root, split, subset if split == "train" else None, ".parquet")
    if not shards:
        raise UserError(
            f"no Parquet shards for split {split!r} under {root} (expected e.g. {split}/…parquet or "
            f"{split}-00000-of-00001.parquet), nor {csv_file}: point the profile at the downloaded dataset folder"
        )
    if audio_dir is None:
        raise UserError("read_loquacious: Parquet shards embed the audio; pass audio_dir to write it to")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading Loquacious Parquet shards needs pyarrow: `pip install pyarrow`") from None
    from speechllm_redundancy.cache import atomic_path

    audio_dir = Path(audio_dir)
    audio_dir.mkdir(parents=True, exist_ok=True)
    utts: list[Utterance] = []
    for shard in shards:
        table = pq.read_table(shard)
        missing = {"ID", "wav", "text"} - set(table.column_names)
        if missing:
            raise UserError(
                f"{shard}: missing column(s) {sorted(missing)}; expected ID, duration, wav, spk_id, text"
            )
        for row_number, row in enumerate(table.to_pylist()):
            where = f"{shard} row {row_number}"
            wav = row["wav"] or {}
            data, name = wav.get("bytes"), wav.get("path") or ""
            if not data:
                raise UserError(f"{where}: no audio bytes for {row['ID']}")
            suffix = Path(name).suffix.lower() or ".wav"
            out = audio_dir / (re.sub(r"[^\w.-]", "_", str(row["ID"])) + suffix)
            if not out.exists():
                with atomic_path(out) as tmp:
                    tmp.write_bytes(data)
            if not str(row.get("text") or "").strip():
                raise UserError(f"{where}: empty text for {row['ID']}")
            utts.append(
                _utt(
                    row["ID"],
                    out,
                    row["text"].strip(),
                    where,
                    src_lang="en",
                    speaker=str(row.get("spk_id") or "") or None,
                )
            )
            if limit and len(utts) >= limit:
                return utts
    return utts


def _loquacious_csv(path: Path, limit: int | None) -> list[Utterance]:
    utts = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"ID", "wav", "text"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(
                f"{path}: missing column(s) {sorted(missing)}; expected ID, duration, wav, spk_id, text"
            )
        for number, row in enumerate(reader, 2):
            audio = Path(row["wav"])
            audio = audio if audio.is_absolute() else path.parent / audio
            if not (row.get("text") or "").strip():
                raise UserError(f"{path}:{number}: empty text for {row['ID']}")
            utts.append(
                _utt(
                    row["ID"],
                    audio,
                    row["text"].strip(),
                    f"{path}:{number}",
                    src_lang="en",
                    speaker=row.get("spk_id") or None,
                )
            )
            if limit and len(utts) >= limit:
                break
    return utts


# ------------------------------------------------------------------------------------------- CoVoST 2
def _read_tsv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def read_covost2(
    tsv: str | os.PathLike,
    clips_dir: str | os.PathLike,
    split: str = "train",
    cv_tsv: str | os.PathLike | None = None,
    limit: int | None = None,
) -> list[Utterance]:
    """One split (train / dev / test) of a CoVoST 2 pair. Languages come from the TSV's name."""
    tsv, clips = Path(tsv).expanduser(), _need_dir(Path(clips_dir), "Common Voice clips")
    match = re.match(r"covost_v2\.([\w-]+)_([\w-]+)(?:\.\w+)*\.tsv$", tsv.name)
    if not tsv.is_file() or not match:
        raise UserError(
            f"{tsv}: expected an existing covost_v2.<src>_<tgt>.tsv file (e.g. covost_v2.en_de.tsv)"
        )
    src, tgt = match.group(1), match.group(2)
    rows = _read_tsv(tsv)
    if not rows or not {"path", "translation"} <= set(rows[0]):
        raise UserError(
            f"{tsv}: needs the columns path, translation (and split); got {sorted(rows[0]) if rows else 'nothing'}"
        )
    sentences = None
    if "sentence" not in rows[0]:
        if cv_tsv is None and (clips.parent / "validated.tsv").is_file():
            cv_tsv = (
                clips.parent / "validated.tsv"
            )  # Common Voice's own layout: <lang>/validated.tsv + <lang>/clips/
        if cv_tsv is None:
            raise UserError(f"{tsv} has no sentence column: pass Common Voice's validated.tsv as cv_tsv")
        sentences = {r["path"]: r["sentence"] for r in _read_tsv(Path(cv_tsv).expanduser())}
    wanted = {split, f"{split}_covost"} if split == "train" else {split}
    utts = []
    for number, row in enumerate(rows, 2):
        if "split" in row and row["split"] not in wanted:
            continue
        where = f"{tsv}:{number}"
        sentence = row["sentence"] if sentences is None else sentences.get(row["path"])
        if not (sentence or "").strip():
            raise UserError(f"{where}: no source sentence for {row['path']}")
        if not (row["translation"] or "").strip():
            raise UserError(f"{where}: empty translation for {row['path']}")
        uid = Path(row["path"]).stem
        utts.append(
            _utt(
                uid,
                clips / row["path"],
                sentence.strip(),
                where,
                src_lang=src,
                tgt_lang=tgt,
                translation=row["translation"].strip(),
                speaker=row.get("client_id") or None,
            )
        )
        if limit and len(utts) >= limit:
            break
    if not utts:
        raise UserError(f"{tsv}: no rows for split {split!r}")
    return utts


# ------------------------------------------------------------------------------ pocketsphinx LibriVox
def read_librivox_testdata(root: str | os.PathLike = LIBRIVOX_TESTDATA) -> list[Utterance]:
    """The five LibriVox clips of Debian's pocketsphinx-testdata with their transcripts."""
    root = Path(root)
    trans = root / "transcription"
    if not trans.is_file():
        raise UserError(
            f"{trans} not found: the `real` split uses Debian's pocketsphinx-testdata; install it "
            "(`apt-get install pocketsphinx-testdata`, or `make system`) or set `real: false` under corpus: in the profile"
        )
    utts = []
    for number, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
        match = re.match(r"\s*(?:<s>)?\s*(.*?)\s*(?:</s>)?\s*\(([^)]+)\)\s*$", line)
        if not line.strip():
            continue
        if not match:
            raise UserError(f"{trans}:{number}: expected '<s> text </s> (id)'")
        text, uid = match.group(1), match.group(2)
        utts.append(
            _utt(uid, root / f"{uid}.wav", text, f"{trans}:{number}", src_lang="en", speaker="librivox")
        )
    return utts


def read_external(spec: dict, audio_dir: Path) -> list[Utterance]:
    """A split from a reader spec in a profile, e.g. ``{reader: librispeech, root: …, subsets: [test-clean]}``."""
    spec = dict(spec)
    kind = spec.pop("reader", None)
    try:
        if kind == "librispeech":
            return read_librispeech(**spec)
        if kind == "loquacious":
            return read_loquacious(audio_dir=audio_dir, **spec)
        if kind == "covost2":
            return read_covost2(**spec)
        if kind == "manifest":
            from speechllm_redundancy.data.manifest import read_manifest

            return read_manifest(spec["path"])
    except TypeError as err:
        raise UserError(f"reader {kind!r}: bad options {sorted(spec)} ({err})") from None
    raise UserError(f"unknown reader {kind!r}: use one of librispeech, loquacious, covost2, manifest")


__all__ = ["read_covost2", "read_external", "read_librispeech", "read_librivox_testdata", "read_loquacious"]
