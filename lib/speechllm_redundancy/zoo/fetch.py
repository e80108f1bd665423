"""`resolve`: any model reference → something `from_pretrained` can load, building local copies once.

- a local directory passes through (it must hold a config.json);
- a packaged name: pip-download its wheels, reassemble the weight file from the parts, check its sha256,
  convert it to a Hugging Face directory under ``artifacts/models/<name>`` — once; later calls only read
  a small marker file;
- a ``tiny-*`` name: build it from its config with a fixed seed, also once;
- a hub id ("org/name"): passed through to transformers, unless the hub is known to be out of reach.

Builds happen in a temporary directory renamed into place at the end (`cache.atomic_path`), under a
per-model file lock (`cache.entry_lock`), and the marker inside records what the directory was built from:
a build killed halfway leaves nothing that later passes as complete. The directory is sealed (its files'
sizes and sha256 in checksums.json): a truncated or altered file is warned about, naming it, and the model
is built again; directories built before the records load unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from speechllm_redundancy.cache import DamagedEntry, atomic_path, entry_lock, verify_entry, warn_damaged
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.paths import artifacts_dir
from speechllm_redundancy.zoo.registry import MODELS, PackagedModel, TinyModel

MARKER = "zoo.json"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TRUE = {"1", "on", "yes", "true"}


def models_root() -> Path:
    root = artifacts_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    return root


def wheels_dir() -> Path:
    path = models_root() / "_wheels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve(name_or_path: str | os.PathLike) -> str:
    """A local HF directory for a packaged or tiny name / local directory; a hub id passes through."""
    ref = str(name_or_path)
    kind = reference_kind(ref)
    if kind == "registry":
        return str(ensure_built(MODELS[ref]))
    if kind == "directory":
        return str(Path(ref).expanduser().resolve())
    _check_hub(ref)
    return ref


def reference_kind(name_or_path: str | os.PathLike) -> str:
    """"registry", "directory" or "hub" for a reference ``resolve`` can load; UserError naming the fix for
    any other. Builds and downloads nothing, so a profile's names are checked before a run starts."""
    ref = str(name_or_path)
    if ref in MODELS:
        return "registry"
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(
                f"{path} is not a Hugging Face model directory (no config.json in it); pass a directory "
                f"written by save_pretrained, or a packaged model name ({', '.join(MODELS)})."
            )
        return "directory"
    if HUB_ID.match(ref) and not ref.startswith((".", "~")):
        return "hub"
    if "/" in ref or os.sep in ref:
        raise UserError(
            f"no such directory: {ref}; check the path, or use a packaged name ({', '.join(MODELS)})."
        )
    raise UserError(
        f"unknown model name {ref!r}; known names: {', '.join(MODELS)} (or pass a local HF "
        "directory or a Hugging Face hub id such as Qwen/Qwen2.5-7B)."
    )


def cached_path(name: str) -> Path | None:
    """The built directory of a registry name if it is complete, current and intact, else None (builds
    nothing)."""
    return _built(MODELS[name])


def _built(spec: PackagedModel | TinyModel, repair: bool = False) -> Path | None:
    """``cached_path``; with ``repair`` (the model's lock held) a damaged build is also warned about."""
    target = models_root() / spec.name
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("key") != spec.key():
        return None  # stale: built from other pins
    try:
        verify_entry(target)  # sizes always; sha256 of all but the weights, which only when touched since
    except DamagedEntry as err:
        if repair:
            warn_damaged(err, f"building {spec.name} again")
        return None
    return target


def ensure_built(spec: PackagedModel | TinyModel) -> Path:
    """Return ``artifacts/models/<name>``, building it first if it is absent, partial, stale or damaged."""
    if (hit := _built(spec)) is not None:
        return hit
    target = models_root() / spec.name
    with entry_lock(target):  # one builder per model across processes; a second caller finds it built
        if (hit := _built(spec, repair=True)) is not None:
            return hit
        _remove_leftovers(spec.name)
        start = time.perf_counter()
        with atomic_path(target, seal=True) as tmp:
            timings = _build(spec, tmp)
            _make_readable(tmp)
            timings["total_s"] = round(time.perf_counter() - start, 1)
            marker = {"name": spec.name, "key": spec.key(), "built_from": _source(spec), "seconds": timings}
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # last: it certifies the rest
    return target


def _build(spec: PackagedModel | TinyModel, out: Path) -> dict:
    if isinstance(spec, TinyModel):
        from speechllm_redundancy.zoo.tiny import build_tiny

        build_tiny(spec.name, out, seed=spec.seed)
        return {}
    start = time.perf_counter()
    wheels = download_wheels(spec.wheels)
    fetched = time.perf_counter()
    src = Path(tempfile.mkdtemp(prefix=f".{spec.name}.src-", suffix=".tmp", dir=models_root()))
    try:
        assemble(spec, wheels, src)
        assembled = time.perf_counter()
        CONVERTERS[spec.format](spec, src, out)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    return {
        "fetch_s": round(fetched - start, 1),
        "assemble_s": round(assembled - fetched, 1),
        "convert_s": round(time.perf_counter() - assembled, 1),
    }


def _convert_gguf(spec: PackagedModel, src: Path, out: Path) -> None:
    from speechllm_redundancy.zoo.gguf import convert_gguf

    convert_gguf(src, out, gguf_file=spec.assembled, store_dtype=spec.store_dtype)


def _convert_ct2(spec: PackagedModel, src: Path, out: Path) -> None:
    from speechllm_redundancy.zoo.ct2_whisper import convert_ct2_whisper

    convert_ct2_whisper(src, out, store_dtype=spec.store_dtype)


CONVERTERS = {"gguf": _convert_gguf, "ct2-whisper": _convert_ct2}


def _source(spec: PackagedModel | TinyModel) -> dict:
    if isinstance(spec, TinyModel):
        return {"tiny": spec.name, "seed": spec.seed}
    return {"wheels": list(spec.wheels), "sha256": spec.sha256, "format": spec.format}


def _wheel_file(requirement: str) -> Path | None:
    """The already downloaded wheel for ``package==version`` in the wheel cache, if any."""
    package, version = requirement.split("==")
    stem = re.sub(r"[-_.]+", "_", package).lower()
    matches = sorted(wheels_dir().glob(f"{stem}-{version}-*.whl"))
    return matches[0] if matches else None


def download_wheels(requirements: tuple[str, ...]) -> list[Path]:
    """The wheel files for ``package==version`` pins, downloading the missing ones with this Python's pip."""
    missing = [r for r in requirements if _wheel_file(r) is None]
    if missing:
        tmp = Path(tempfile.mkdtemp(prefix=".download-", suffix=".tmp", dir=wheels_dir()))
        try:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "--dest",
                str(tmp),
                *missing,
            ]
            tty = sys.stderr.isatty()
            done = subprocess.run(
                cmd, stdout=None if tty else subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise UserError(
                    f"pip could not download {' '.join(missing)} ({last}); the weights come from the "
                    "package registry: check network access to it (or PIP_INDEX_URL / PIP_FIND_LINKS for a "
                    "mirror), or put the wheels in " + str(wheels_dir())
                )
            for wheel in tmp.glob("*.whl"):
                os.replace(wheel, wheels_dir() / wheel.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    found = [_wheel_file(r) for r in requirements]
    if None in found:
        absent = [r for r, f in zip(requirements, found, strict=True) if f is None]
        raise UserError(
            f"pip reported success but no wheel for {absent} is in {wheels_dir()}; "
            "check the pinned versions in speechllm_redundancy/zoo/registry.py."
        )
    return found  # type: ignore[return-value]


def assemble(spec: PackagedModel, wheels: list[Path], out_dir: Path) -> Path:
    """Concatenate the parts (read straight out of the wheel zips) into one file; check its sha256."""
    archives = [_open_wheel(w) for w in wheels]
    try:
        where = {name: z for z in archives for name in z.namelist()}
        for member in (*spec.parts, *spec.extras):
            if member not in where:
                raise UserError(
                    f"{spec.name}: part {member} is missing from the wheels {', '.join(spec.wheels)}; the "
                    f"package contents changed or a wheel is damaged: delete {wheels_dir()} and retry, or "
                    "check the pinned versions in speechllm_redundancy/zoo/registry.py."
                )
        target = out_dir / spec.assembled
        digest = hashlib.sha256()
        total = sum(where[m].getinfo(m).file_size for m in spec.parts)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"assembling {spec.name}", leave=False)
        with open(target, "wb") as sink, bar:
            for member in spec.parts:
                with where[member].open(member) as part:
                    while block := part.read(1 << 22):
                        sink.write(block)
                        digest.update(block)
                        bar.update(len(block))
        for member in spec.extras:
            with where[member].open(member) as extra, open(out_dir / Path(member).name, "wb") as sink:
                shutil.copyfileobj(extra, sink)
    finally:
        for z in archives:
            z.close()
    if digest.hexdigest() != spec.sha256:
        raise UserError(
            f"{spec.name}: sha256 of the reassembled {spec.assembled} is {digest.hexdigest()}, expected "
            f"{spec.sha256}; the downloaded wheels are damaged or the package was re-published: delete "
            f"{wheels_dir()} and retry, or check the package versions {', '.join(spec.wheels)}."
        )
    return target


def _open_wheel(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{path} is not a readable wheel ({err}); delete it and retry.") from err


def _remove_leftovers(name: str) -> None:
    """Temporary directories of killed builds of this model (we hold its lock, so none is in use)."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(src-)?[\w]{{8}}\.tmp$")
    for entry in models_root().iterdir():
        if pattern.match(entry.name):
            shutil.rmtree(entry, ignore_errors=True)


def _make_readable(directory: Path) -> None:
    """transformers writes safetensors as 0600; the cache is shared, so make files group/world readable."""
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode | 0o044)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _check_hub(repo_id: str) -> None:
    """Fail early, with the fix, when a hub id cannot be loaded: offline mode or no route to the hub."""
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    if offline and _in_hf_cache(repo_id):
        return  # transformers loads it from the local Hugging Face cache
    problem = "offline mode is set (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)" if offline else _hub_unreachable()
    if problem:
        raise UserError(
            f"cannot load hub model {repo_id!r}: {problem}. Pass a local model directory or a packaged name "
            f"({', '.join(MODELS)}), or enable access to the Hugging Face hub."
        )


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an unreadable cache is the same as no cache here
        return False


_HUB_PROBE: dict[str, str | None] = {}


def _hub_unreachable(timeout: float = 5.0) -> str | None:
    """None when the hub endpoint answers (any HTTP status), else why not; asked once per process."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if endpoint not in _HUB_PROBE:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            _HUB_PROBE[endpoint] = None
        except urllib.error.HTTPError:
            _HUB_PROBE[endpoint] = None  # it answered
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            _HUB_PROBE[endpoint] = f"the hub at {endpoint} is unreachable ({reason})"
    return _HUB_PROBE[endpoint]
