"""Content-keyed, atomically written, sealed and locked on-disk results.

Every expensive step (a converted model, a corpus, encoder features, a trained checkpoint, a pruning
point) is stored under a key derived from its inputs, and written to a temporary sibling that is renamed
into place only once complete: a run killed halfway leaves nothing that later passes as a cache hit.

Two more guarantees, for entries written with ``seal=True`` and read through the helpers here:

- **Sealed**: the size and sha256 of each file of the entry are recorded when it is written (a directory:
  ``checksums.json`` inside it, renamed into place with it; a file: ``.<name>.sha256.json`` beside it,
  renamed into place just before it). ``verify_entry`` / ``read_verified`` compare against the record, so a
  truncated or altered entry (a full disk, a bad copy, a hand edit) is noticed instead of trusted. Pure
  caches (JSON results, feature shards, converted models) then warn naming the file, drop it and compute
  it again; the owners of entries that cost training (checkpoints, trained models) refuse with a
  ``UserError`` naming the file and the fix. An entry written before records existed has none: it is read
  as before, unverified (recomputing every walk point or feature set of an existing cache would cost
  hours), and a JSON entry that no longer parses is still dropped and recomputed.
- **Locked**: ``entry_lock(path)`` holds an ``flock`` on ``.<name>.lock`` beside the entry, so two runs on
  one ``artifacts/`` compute each entry once: the second waits, re-checks, and reads the first's result.
  The kernel releases an flock when its holder dies, so a killed run never leaves a lock that blocks.

Bookkeeping files (records, locks, temporaries) all start with "." and are never looked up as entries.
A killed writer leaves its temporary (``.<name>.<random>.tmp``) behind; ``sweep_stale`` removes those that
nothing has touched for a day and that no live run can still be writing (see there).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from speechllm_redundancy.errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: writes stay atomic, only concurrent duplicate work is possible
    fcntl = None

RECORD = "checksums.json"  # the record inside a sealed directory entry
HASH_LIMIT = 64 << 20  # larger files are hashed only when their mtime moved since sealing (_check_file)
MISSING = object()  # ``load_json_entry``: nothing usable stored
RECOMPUTE = "delete it to compute it again"


class DamagedEntry(UserError):
    """A cache entry whose bytes are not those recorded when it was written (or that cannot be parsed)."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str = RECOMPUTE):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path} is damaged ({problem}): {fix.rstrip('.')}.")


def key_of(*parts: Any, length: int = 16) -> str:
    """A short stable hash of JSON-serialisable inputs (dataclasses: pass ``asdict(x)``)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# -- records ------------------------------------------------------------------------------------------------
def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256.json")


def _record_path(path: Path) -> Path:
    return path / RECORD if path.is_dir() else _sidecar(path)


def _describe(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "sha256": file_sha256(path), "mtime_ns": st.st_mtime_ns}


def _record(entry: Path) -> dict:
    if entry.is_dir():
        files = sorted(p for p in entry.rglob("*") if p.is_file() and p != entry / RECORD)
        return {"files": {p.relative_to(entry).as_posix(): _describe(p) for p in files}}
    return {"files": {entry.name: _describe(entry)}}


def _read_record(path: Path, fix: str) -> dict | None:
    """The entry's record, None when it has none (written before records, or unsealed)."""
    where = _record_path(path)
    try:
        record = json.loads(where.read_bytes())
        files = record["files"]
        if not isinstance(files, dict):
            raise TypeError
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as err:
        raise DamagedEntry(where, f"its checksum record is unreadable: {type(err).__name__}", fix) from None
    return record


_HASHED: dict[tuple, str] = {}  # (path, size, mtime_ns) → sha256 of large files this process checked


def _check_file(file: Path, want: dict, fix: str, hash_limit: int | None) -> None:
    """Size always; sha256 for files up to ``hash_limit`` bytes (None: every file). A larger file (a
    converted model's weights) is hashed only when its mtime differs from the recorded one — an edit in
    place moves it — and then once per process: a gigabyte per model load would cost seconds each time."""
    try:
        st = file.stat()
    except FileNotFoundError:
        raise DamagedEntry(file, "missing", fix) from None
    if st.st_size != want["size"]:
        raise DamagedEntry(file, f"{st.st_size} bytes, {want['size']} when written", fix)
    big = hash_limit is not None and st.st_size > hash_limit
    memo = (str(file), st.st_size, st.st_mtime_ns)
    if big and (st.st_mtime_ns == want.get("mtime_ns") or _HASHED.get(memo) == want["sha256"]):
        return
    if file_sha256(file) != want["sha256"]:
        raise DamagedEntry(file, "its sha256 differs from the one recorded when it was written", fix)
    if big:
        _HASHED[memo] = want["sha256"]


def verify_entry(path: str | os.PathLike, *, fix: str = RECOMPUTE,
                 hash_limit: int | None = HASH_LIMIT) -> bool:
    """Check a sealed entry (file or directory) against its record: True when it matches, False when it
    has no record (unverified: written before records existed); ``DamagedEntry`` naming the first file
    that is missing or differs, its message ending with ``fix``."""
    path = Path(path)
    record = _read_record(path, fix)
    if record is None:
        return False
    base = path if path.is_dir() else path.parent
    for name, want in record["files"].items():
        _check_file(base / name, want, fix, hash_limit)
    return True


def read_verified(path: str | os.PathLike, *, fix: str = RECOMPUTE) -> bytes:
    """The bytes of a sealed file entry, checked against its record as read (one read, nothing half-new
    passes); unverified when it has no record. FileNotFoundError when absent, ``DamagedEntry`` when it
    differs."""
    path = Path(path)
    data = path.read_bytes()
    record = _read_record(path, fix)
    if record is not None:
        want = record["files"].get(path.name)
        if want is None:
            raise DamagedEntry(path, f"its record {_sidecar(path).name} is of another file", fix)
        if len(data) != want["size"]:
            raise DamagedEntry(path, f"{len(data)} bytes, {want['size']} when written", fix)
        if hashlib.sha256(data).hexdigest() != want["sha256"]:
            raise DamagedEntry(path, "its sha256 differs from the one recorded when it was written", fix)
    return data


def discard(path: str | os.PathLike) -> None:
    """Remove an entry (file or directory) and its record."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    _sidecar(path).unlink(missing_ok=True)


def warn_damaged(err: DamagedEntry, action: str = "deleted it, computing it again") -> None:
    warnings.warn(f"cache entry {err.path} is damaged ({err.problem}): {action}.", stacklevel=3)


def usable_entry(path: str | os.PathLike, *, repair: bool = False,
                 hash_limit: int | None = HASH_LIMIT) -> bool:
    """Whether a pure-cache entry exists and is not damaged (unverified old entries count as usable). With
    ``repair`` (hold the entry's lock), a damaged one is warned about, naming the file, and deleted."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        verify_entry(path, hash_limit=hash_limit)
        return True
    except DamagedEntry as err:
        if repair:
            warn_damaged(err)
            discard(path)
        return False


def load_json_entry(path: str | os.PathLike, *, repair: bool = False) -> Any:
    """The JSON value of a pure-cache file entry, or ``MISSING`` when absent, damaged or unparsable (with
    ``repair``, held under the entry's lock, a damaged one is also warned about and deleted)."""
    path = Path(path)
    try:
        return json.loads(read_verified(path))
    except FileNotFoundError:
        return MISSING
    except (DamagedEntry, ValueError) as err:  # ValueError: not JSON (an old entry without a record)
        if repair:
            warn_damaged(err if isinstance(err, DamagedEntry) else DamagedEntry(path, f"not JSON: {err}"))
            discard(path)
        return MISSING


# -- locks --------------------------------------------------------------------------------------------------
_HELD = threading.local()


@contextlib.contextmanager
def entry_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the cross-process lock of the entry ``path`` (an flock on ``.<name>.lock`` beside it): compute
    an entry under it after checking again that no other run stored it meanwhile. Re-entrant in a thread;
    a waiter is told on stderr what it waits for (another run may be training for an hour)."""
    path = Path(path).absolute()
    lock = path.parent / f".{path.name}.lock"
    held = _HELD.__dict__.setdefault("locks", set())
    if fcntl is None or lock in held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # a shared cache's lock created by another user: flock works read-only too
        fd = os.open(lock, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another run to finish {path} (lock {lock.name})", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(lock)
        try:
            yield
        finally:
            held.discard(lock)
    finally:
        os.close(fd)  # releases the flock


# -- writing ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, seal: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and directories alike. On failure the temporary is removed and ``path`` is untouched.
    ``seal``: record the size and sha256 of what was written (see the module docstring); a file's record is
    renamed into place first, so a crash between the two renames leaves a record that matches nothing
    stored (a miss, or a mismatch that is recomputed), never an unrecorded new entry. An unsealed write
    drops a file's old record, which would otherwise condemn the new content. A full disk (or quota) is
    raised as a ``UserError`` naming ``path`` and the fix, the temporary removed.
    """
    path = Path(path)
    with _no_space_named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        target = tmp / path.name
        try:
            yield target
            if not target.exists():
                raise FileNotFoundError(f"atomic_path: nothing was written to {target}")
            sidecar = _sidecar(path)
            if seal and target.is_dir():
                (target / RECORD).write_text(json.dumps(_record(target), indent=1, sort_keys=True) + "\n")
            elif seal:
                (tmp / sidecar.name).write_text(json.dumps(_record(target), indent=1, sort_keys=True) + "\n")
                os.replace(tmp / sidecar.name, sidecar)
            else:
                sidecar.unlink(missing_ok=True)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            os.replace(target, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _no_space_named(path: Path) -> Iterator[None]:
    """Turn a full disk (or quota) met while writing the entry ``path`` into a ``UserError`` naming it and the
    fix. Every cache entry and output is written through ``atomic_path``, so this is the one place that
    knows which entry a bare ``[Errno 28]`` from deep inside torch.save or safetensors was writing. A write
    inside another entry's temporary (a model saved into a folder written as one) leaves it to that entry:
    the temporary is gone when the user reads the message."""
    try:
        yield
    except OSError as err:
        if (err.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
                or any(TEMPORARY.match(folder.name) for folder in path.parents)):
            raise
        from speechllm_redundancy.paths import artifacts_dir

        try:
            cached = path.resolve().is_relative_to(artifacts_dir().resolve())
        except OSError:
            cached = False
        bigger = ("set SPEECHLLM_ARTIFACTS to a folder on a bigger disk" if cached
                  else "write it to a bigger disk")
        full = "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
        raise UserError(f"{path}: {full} while writing it; nothing was stored. Free space on that disk, or "
                        f"{bigger}, then run again.") from err


def atomic_write_text(path: str | os.PathLike, text: str, *, seal: bool = False) -> Path:
    with atomic_path(path, seal=seal) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, seal: bool = False) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", seal=seal)


def cached_json(path: str | os.PathLike, compute: Callable[[], Any]) -> Any:
    """Return the JSON stored at ``path``, computing and storing it (sealed, atomically) when absent.

    A pure cache: a stored value that differs from its record, or no longer parses, is warned about (naming
    the file), deleted and computed again; one stored before records existed is read unverified. Computed
    under the entry's lock, so two runs asking at once compute it once and both get the stored value.
    """
    path = Path(path)
    value = load_json_entry(path)
    if value is not MISSING:
        return value
    with entry_lock(path):
        value = load_json_entry(path, repair=True)  # another run may have stored it while we waited
        if value is not MISSING:
            return value
        value = compute()
        atomic_write_json(path, value, seal=True)
    return value


# -- leftovers of killed runs ------------------------------------------------------------------------------
TEMPORARY = re.compile(r"^\..+\.tmp$")  # .<name>.<random>.tmp: atomic_path's, the zoo's
STALE_AFTER_S = 86400


def _newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` or anything below it (a live writer touches some file)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for top, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(top, name)).st_mtime)
    return newest


def _guarding_locks(temporary: Path, root: Path) -> list[Path]:
    """The entry locks a writer of ``temporary`` may hold: its entry's (``.<name>.<random>.tmp`` is written
    for ``<name>``) and those of the entries it lies inside (a feature set's shards, a training run's
    checkpoints), up to ``root``."""
    locks = []
    entry = temporary.name[1:-len(".tmp")].rpartition(".")[0]
    if entry:
        locks.append(temporary.parent / f".{entry}.lock")
    folder = temporary.parent
    while folder != root and root in folder.parents:
        locks.append(folder.parent / f".{folder.name}.lock")
        folder = folder.parent
    return locks


@contextlib.contextmanager
def _unless_locked(locks: list[Path]) -> Iterator[bool]:
    """Take every existing lock of ``locks`` without waiting; yields False (and takes none) if any is held."""
    if fcntl is None:
        yield True
        return
    with contextlib.ExitStack() as stack:
        for lock in locks:
            try:
                fd = os.open(lock, os.O_RDONLY)
            except FileNotFoundError:
                continue  # never locked: a writer would have to create it, and then its own temporary
            stack.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
        yield True


def sweep_stale(root: str | os.PathLike, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporaries (``.<name>.<random>.tmp``, files or folders) below ``root`` that killed runs
    left behind: those in which nothing changed for ``older_than_s`` seconds and whose entry locks (its
    entry's and those of the entries it lies in) no run holds. Entries, records and lock files are never
    touched. One walk of ``root`` (nothing when it does not exist); returns what it removed."""
    root = Path(root).absolute()
    if not root.is_dir():
        return []
    cutoff = time.time() - older_than_s
    removed = []
    for top, dirs, files in os.walk(root):
        found = [n for n in dirs + files if TEMPORARY.match(n)]
        dirs[:] = [d for d in dirs if not TEMPORARY.match(d)]  # a temporary is removed or kept whole
        for name in found:
            path = Path(top) / name
            try:
                if _newest_mtime(path) > cutoff:
                    continue
            except FileNotFoundError:
                continue  # its writer finished (renamed or removed it) meanwhile
            with _unless_locked(_guarding_locks(path, root)) as free:
                if not free:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
    return removed
