"""Every reader of a profile (`book`, `models fetch --profile`, `corpus build --profile`) parses it through
profiles.load_profile: one set of rules, one set of errors naming the file and the fix."""

from __future__ import annotations

import pytest

from speechllm_redundancy.cli import main
from speechllm_redundancy.data.corpus import corpus_config
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.profiles import load_profile

BROKEN = {
    "model: [tiny-llama]\ncorpus: {size: smoke}\n": r"unknown top-level keys \['model'\].*use only",
    "models: tiny-llama\ncorpus: {size: smoke}\n": r"`models` must be a list: fix the file",
    "corpus: [smoke]\n": r"`corpus` must be a dict: fix the file",
    "corpus: {size: smoke\n": r"(?s)is not valid YAML .*fix the file",
}


@pytest.mark.parametrize("text", BROKEN)
def test_every_reader_refuses_a_broken_profile_with_the_same_error(tmp_path, text, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=BROKEN[text]) as book_error:
        load_profile(path)
    assert str(path) in str(book_error.value)
    with pytest.raises(UserError) as corpus_error:
        corpus_config(path)
    assert str(corpus_error.value) == str(book_error.value)
    assert main(["models", "fetch", "--profile", str(path)]) == 2
    assert f"error: {book_error.value}" in capsys.readouterr().err


def test_readers_take_a_profile_by_name_or_path(tmp_path, capsys):
    assert corpus_config("paper").splits["test-clean"]["root"] == load_profile("paper").corpus["librispeech"]
    mine = tmp_path / "mine.yaml"
    mine.write_text("models: []\ncorpus: {size: smoke, train: 64}\n")
    assert corpus_config(mine).train == 64
    assert main(["models", "fetch", "--profile", str(mine)]) == 0  # nothing to prefetch is not an error
    assert "names no models to fetch" in capsys.readouterr().out
    assert main(["models", "fetch", "--profile", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml' not found: pass one of default, paper, smoke" in capsys.readouterr().err
