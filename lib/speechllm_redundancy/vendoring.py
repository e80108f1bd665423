"""Third-party browser files the rendered book serves itself (no CDN: the book reads offline).

Today that is MathJax 3, from the npm registry, checked against the registry's published integrity hash.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from speechllm_redundancy.cache import atomic_path
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.paths import artifacts_dir

MATHJAX_VERSION = "3.2.2"
MATHJAX_SHA512 = "Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
# what the book loads (tex-mml-chtml.js) and what it may load lazily (extensions, fonts, menu, a11y)
MATHJAX_FILES = ("tex-mml-chtml.js", "a11y", "adaptors", "input", "output", "sre", "ui")


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
