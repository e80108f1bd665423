import math

import pytest

from speechllm_redundancy.errors import UserError
from speechllm_redundancy.evaluation import (bleu, chrf, relative_change, removable_fraction, removable_layers,
                                             wer, word_errors)


def test_wer_uses_whisper_normaliser():
    # case, punctuation and British/American spelling do not count as errors
    assert wer(["Hello, World!", "The colour is grey."], ["hello world", "the color is gray"]) == 0.0


def test_wer_is_corpus_level():
    # 1 substitution in a 2-word ref + 1 deletion in a 3-word ref: 2 errors / 5 words (not the mean of 50 %, 33 %)
    assert wer(["a b", "c d e"], ["a x", "c d"]) == pytest.approx(40.0)
    counts = word_errors(["a b", "c d e"], ["a x", "c d"])
    assert (counts["substitutions"], counts["deletions"], counts["insertions"]) == (1, 1, 0)


def test_wer_empty_reference_counts_insertions():
    assert word_errors(["", "a"], ["x y", "a"])["insertions"] == 2
    assert wer(["", "a b"], ["x", "a b"]) == pytest.approx(50.0)


def test_wer_mismatched_lengths_is_user_error():
    with pytest.raises(UserError, match="hypothes"):
        wer(["a"], [])


def test_bleu_and_chrf():
    refs = ["the quick brown fox jumps over the lazy dog"]
    assert bleu(refs, refs) == pytest.approx(100.0)
    assert chrf(refs, refs) == pytest.approx(100.0)
    assert bleu(refs, ["completely unrelated words here"]) < 5
    assert 0 < chrf(refs, ["the quick brown cat"]) < 100


def test_relative_change():
    assert relative_change(5.0, 4.0) == pytest.approx(0.25)
    assert relative_change(27.0, 30.0) == pytest.approx(-0.1)
    assert relative_change(0.0, 0.0) == 0.0
    assert math.isinf(relative_change(1.0, 0.0))


def test_removable_fraction_asr_every_set_at_once():
    # WER per pruning level; level 3 is fine on clean but breaks other (+30 %) — so 2 layers (not 4)
    points = {0: {"clean": 4.0, "other": 10.0}, 1: {"clean": 4.1, "other": 10.5}, 2: {"clean": 4.9, "other": 12.4},
              3: {"clean": 4.5, "other": 13.0}, 4: {"clean": 9.0, "other": 20.0}}
    assert removable_layers(points, 0.25) == 2
    assert removable_fraction(points, num_layers=28) == pytest.approx(2 / 28)


def test_removable_fraction_ast_higher_is_better():
    points = {0: {"en-de": 20.0}, 3: {"en-de": 19.0}, 6: {"en-de": 18.0}, 9: {"en-de": 17.0}}
    assert removable_layers(points, -0.10, higher_is_better=True) == 6
    assert removable_fraction(points, 28, -0.10, higher_is_better=True) == pytest.approx(6 / 28)


def test_removable_fraction_needs_baseline():
    with pytest.raises(UserError, match="baseline"):
        removable_fraction({1: {"a": 1.0}}, 10)


def test_chance_level_is_a_perfect_answer_for_another_utterance():
    """The floor a baseline must beat: the better of an empty output and another utterance's reference; a
    model at or past it is flagged, one better than it is not."""
    from speechllm_redundancy.evaluation import bleu, chance_score, describe_unusable, no_better_than_chance, wer

    refs = ["the cat sat on the mat", "the dog ran to the park", "a bird sang in the tree"]
    chance = chance_score(refs)
    assert chance == pytest.approx(wer(refs, refs[1:] + refs[:1])) and 50 < chance < 100
    # another utterance's words cost more than saying nothing when lengths differ: the empty output wins
    assert chance_score(["one two", "three four five six seven eight"]) == 100.0
    assert no_better_than_chance({"a": chance, "b": 40.0, "c": 120.0}, {"a": chance, "b": chance, "c": chance}) \
        == {"a": (chance, chance), "c": (120.0, chance)}
    # listed in the chance levels' order (the evaluation sets as given), whatever order the scores came in
    assert list(no_better_than_chance({"c": 120.0, "a": chance}, {"a": chance, "c": chance})) == ["a", "c"]
    chance_bleu = chance_score(refs, "ast-en-de")
    assert chance_bleu == pytest.approx(bleu(refs, refs[1:] + refs[:1])) and chance_bleu > 0
    assert no_better_than_chance({"x": 0.1, "y": 30.0}, {"x": chance_bleu, "y": chance_bleu}, "ast-en-de") == \
        {"x": (0.1, chance_bleu)}
    text = describe_unusable("smollm2-135m", {"test-clean": (104.37, 93.0)})
    assert "test-clean 104.4 % (chance 93.0 %)" in text
    with pytest.raises(UserError, match="at least two"):
        chance_score(["one"])
