"""Where the project keeps everything it computes (models, corpora, features, checkpoints, results).

One root, `artifacts/` beside the repository by default, so every chapter and CLI call shares one cache.
Set ``SPEECHLLM_ARTIFACTS`` to put it elsewhere (a bigger disk, a shared GPU-cluster scratch).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    """The cache root; created on first use."""
    env = os.environ.get("SPEECHLLM_ARTIFACTS")
    if env:
        root = Path(env).expanduser()
    elif (REPO_ROOT / "pyproject.toml").exists():
        root = REPO_ROOT / "artifacts"
    else:  # installed outside a checkout
        root = Path.home() / ".cache" / "speechllm_redundancy"
    root.mkdir(parents=True, exist_ok=True)
    return root


def artifact_path(*parts: str) -> Path:
    """A path inside the cache root, its parent created."""
    path = artifacts_dir().joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
