"""The encoder-feature cache: each (encoder, manifest) pair is encoded once and shared by every run.

Layout: ``artifacts/features/<encoder>/<manifest-stem>-<key>/`` holding ``shard-NNNNN.safetensors``
(fp16 frames of ``shard_size`` consecutive manifest utterances, keyed by utterance id) and ``index.json``
(written after the shards it lists; ``complete`` says whether they cover the whole manifest). The key
hashes the encoder's weights, the Whisper window mode and the manifest's bytes, so an edited manifest or a
different encoder never hits a stale entry. Shards are written atomically, so an interrupted encoding
resumes at the first missing shard, and a run that needs only the first N utterances (``limit``) encodes
only their shards — a later run that needs more extends the same cache.

Shards and index are sealed (``cache.atomic_path(seal=True)``: size and sha256 beside each): a truncated or
altered one is warned about, naming the file, and encoded again; shards from before the records are read
unverified. Each feature set is encoded under its own lock (``.<dir>.lock`` beside it), so two runs needing
the same features encode them once.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator

import torch

from speechllm_redundancy.cache import (MISSING, atomic_path, atomic_write_json, entry_lock, file_sha256,
                                        key_of, load_json_entry, read_verified, usable_entry)
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.paths import artifact_path, artifacts_dir

FORMAT_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def fingerprint(name_or_path: str) -> str:
    """A short hash identifying a model's weights: sha256 of a local directory's config and weight files
    (memoised per file size + mtime, so large models are hashed once), or the hub id itself."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return "hub:" + str(name_or_path)
    memo_path = artifact_path("fingerprints.json")
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    parts, changed = [], False
    for f in sorted(path.rglob("*")):
        if not f.is_file() or not (f.suffix in WEIGHT_SUFFIXES or f.name == "config.json"):
            continue
        st = f.stat()
        memo_key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if memo_key not in memo:
            memo[memo_key] = file_sha256(f)
            changed = True
        parts.append((str(f.relative_to(path)), memo[memo_key]))
    if changed:
        atomic_write_json(memo_path, memo)
    return key_of(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(text)).name or str(text))[:60]


def features_dir(encoder_name: str, manifest_path: str | os.PathLike, whisper_window: str = "full",
                 shard_size: int = 256) -> Path:
    """Where ``cached_features`` keeps (or will keep) the features of this encoder × manifest."""
    from speechllm_redundancy.encoders import resolve_model

    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise UserError(f"manifest {manifest_path} does not exist: build the corpus first (`corpus build`).")
    key = key_of(FORMAT_VERSION, fingerprint(resolve_model(encoder_name)), whisper_window,
                 file_sha256(manifest_path), shard_size)
    return artifacts_dir() / "features" / _slug(encoder_name) / f"{_slug(manifest_path.stem)}-{key}"


class FeatureStore(Mapping):
    """Read-only mapping utterance id → fp16 Tensor (T, D) over the encoded shards of a cache directory.

    Shards are loaded on first access to one of their ids, checked against their records, and then kept in
    memory (``cached_features`` checked them too; this catches damage done since).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        index_path = self.directory / "index.json"
        if not index_path.exists():
            raise UserError(f"{self.directory} is not a finished feature cache: run cached_features() again.")
        self.index = json.loads(read_verified(index_path, fix=_REENCODE))
        self._shard_of: dict[str, int] = {u: s for s, ids in enumerate(self.index["shards"]) for u in ids}
        self._loaded: dict[int, dict[str, torch.Tensor]] = {}

    frame_rate = property(lambda self: self.index["frame_rate"])
    dim = property(lambda self: self.index["dim"])
    encoder = property(lambda self: self.index["encoder"])

    def __getitem__(self, utt_id: str) -> torch.Tensor:
        shard = self._shard_of[utt_id]
        if shard not in self._loaded:
            from safetensors.torch import load

            self._loaded[shard] = load(read_verified(self.directory / _shard_name(shard), fix=_REENCODE))
        return self._loaded[shard][utt_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._shard_of)

    def __len__(self) -> int:
        return len(self._shard_of)


_REENCODE = "run cached_features() again: it encodes a damaged shard again"


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def _finished_store(out: Path, limit: int | None, repair: bool = False) -> FeatureStore | None:
    """The store at ``out`` if its index covers the request and every shard it lists is intact; None
    otherwise (with ``repair``, under the lock: damaged files are warned about and deleted)."""
    index = load_json_entry(out / "index.json", repair=repair)
    if index is MISSING:
        return None
    if not (index.get("complete", True) or (limit is not None and sum(map(len, index["shards"])) >= limit)):
        return None
    if not all([usable_entry(out / _shard_name(s), repair=repair) for s in range(len(index["shards"]))]):
        return None
    return FeatureStore(out)


def cached_features(
    encoder, manifest_path: str | os.PathLike, *, whisper_window: str = "full", limit: int | None = None,
    shard_size: int = 256, batch_size: int = 16, progress: bool = True,
) -> FeatureStore:
    """Features of the utterances in ``manifest_path`` by ``encoder`` (a zoo name / path / hub id, or a
    loaded ``SpeechEncoder``), computed once, fp16 on disk, shared by all later calls.

    ``limit``: only the first ``limit`` utterances are needed (their whole shards are encoded; the store may
    hold a few more). ``None`` encodes the whole manifest. A name is loaded at ``precision="auto"`` (bf16 on
    a CPU with native bf16, ~2× faster); the precision is not part of the key, as fp32 and bf16 frames agree
    within bf16 rounding, so one cache serves either."""
    if limit is not None and limit < 1:
        raise UserError(f"limit={limit}: pass a positive number of utterances, or None for the whole manifest.")
    name = encoder if isinstance(encoder, str) else encoder.name
    if not isinstance(encoder, str):
        whisper_window = encoder.whisper_window
    out = features_dir(name, manifest_path, whisper_window, shard_size)
    if (store := _finished_store(out, limit)) is not None:
        return store
    from speechllm_redundancy.data.manifest import validate_manifest
    from speechllm_redundancy.encoders import WHISPER_MAX_SECONDS, SpeechEncoder

    if isinstance(encoder, str):
        encoder = SpeechEncoder.from_name(encoder, whisper_window=whisper_window)
    # every row, before the first shard (and before the lock file): a bad one (missing, empty, too long …)
    # must fail at once, not minutes into the encoding
    validate_manifest(manifest_path, max_seconds=WHISPER_MAX_SECONDS if encoder.kind == "whisper" else None)
    with entry_lock(out):  # one encoder per feature set; a second run waits, then finds it done
        if (store := _finished_store(out, limit, repair=True)) is not None:
            return store
        return _encode(encoder, name, manifest_path, out, limit, shard_size, batch_size, progress)


def _encode(encoder, name, manifest_path, out: Path, limit, shard_size, batch_size, progress) -> FeatureStore:
    """Encode the missing (or damaged) shards the request needs, then write the index (lock held)."""
    from tqdm.auto import tqdm

    from speechllm_redundancy.data.audio import load_audio
    from speechllm_redundancy.data.manifest import read_manifest

    index_path = out / "index.json"
    utts = read_manifest(manifest_path)
    shards = [utts[i : i + shard_size] for i in range(0, len(utts), shard_size)]
    needed = shards if limit is None else shards[: math.ceil(min(limit, len(utts)) / shard_size)]
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=sum(map(len, needed)), desc=f"encode {Path(manifest_path).stem} ({name})", unit="utt",
               disable=not progress)
    for s, shard in enumerate(needed):
        if usable_entry(out / _shard_name(s), repair=True):
            bar.update(len(shard))
            continue
        tensors = _encode_shard(encoder, shard, load_audio, batch_size, bar)
        from safetensors.torch import save_file

        with atomic_path(out / _shard_name(s), seal=True) as tmp:
            save_file(tensors, str(tmp))
    bar.close()
    atomic_write_json(index_path, {
        "encoder": name, "encoder_path": encoder.path, "whisper_window": encoder.whisper_window,
        "frame_rate": encoder.frame_rate, "dim": encoder.dim, "manifest": str(Path(manifest_path).resolve()),
        "shards": [[u.id for u in shard] for shard in needed], "complete": len(needed) == len(shards),
        "format": FORMAT_VERSION,
    }, seal=True)
    return FeatureStore(out)


def _encode_shard(encoder, shard, load_audio, batch_size, bar) -> dict[str, torch.Tensor]:
    """Encode one shard, batching utterances that share a batch key (same padded length)."""
    waves = {u.id: load_audio(u.audio) for u in shard}
    order = sorted(shard, key=lambda u: (encoder.batch_key(waves[u.id].numel()), waves[u.id].numel()))
    out: dict[str, torch.Tensor] = {}
    batch: list = []

    def flush():
        if batch:
            for u, f in zip(batch, encoder.encode([waves[u.id] for u in batch])):
                out[u.id] = f.to(torch.float16).contiguous()
            bar.update(len(batch))
            batch.clear()

    for u in order:
        if batch and (len(batch) == batch_size or encoder.batch_key(waves[u.id].numel())
                      != encoder.batch_key(waves[batch[0].id].numel())):
            flush()
        batch.append(u)
    flush()
    return out
