"""Fixtures shared by the test modules."""

import pytest


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    """A fresh artifacts folder for one test (``SPEECHLLM_ARTIFACTS``), so that no test reads a cache another
    test or the user wrote, or writes into the user's."""
    root = tmp_path / "artifacts"
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(root))
    return root
