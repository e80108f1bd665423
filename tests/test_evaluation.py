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
    rotations = [refs[1:] + refs[:1], refs[2:] + refs[:2]]  # every reference against each other one
    assert chance == pytest.approx(sum(wer(refs, r) for r in rotations) / 2) and 50 < chance < 100
    # another utterance's words cost more than saying nothing when lengths differ: the empty output wins
    assert chance_score(["one two", "three four five six seven eight"]) == 100.0
    assert no_better_than_chance({"a": chance, "b": 40.0, "c": 120.0}, {"a": chance, "b": chance, "c": chance}) \
        == {"a": (chance, chance), "c": (120.0, chance)}
    # listed in the chance levels' order (the evaluation sets as given), whatever order the scores came in
    assert list(no_better_than_chance({"c": 120.0, "a": chance}, {"a": chance, "c": chance})) == ["a", "c"]
    chance_bleu = chance_score(refs, "ast-en-de")
    assert chance_bleu == pytest.approx(sum(bleu(refs, r) for r in rotations) / 2) and chance_bleu > 0
    assert no_better_than_chance({"x": 0.1, "y": 30.0}, {"x": chance_bleu, "y": chance_bleu}, "ast-en-de") == \
        {"x": (0.1, chance_bleu)}
    text = describe_unusable("smollm2-135m", {"test-clean": (104.37, 93.0)})
    assert "test-clean 104.4 % (chance 93.0 %)" in text
    with pytest.raises(UserError, match="at least two"):
        chance_score(["one"])


def test_chance_level_averages_wrong_pairings_so_a_sets_order_does_not_decide_it():
    """Scored against its neighbour alone, a set whose neighbours happen to share phrases looks easy to
    hit by chance; averaged over the shifts, every reference meets every other one (all of them in a
    small set), so the order no longer matters (WER: exactly)."""
    from speechllm_redundancy.evaluation import bleu, chance_score, chance_shifts, wer

    pairs = [("and the lord spoke to moses saying", "and the lord spoke to aaron saying"),
             ("the king went down to the river", "the king went down to the sea"),
             ("a bird sang in the tall tree", "a bird sang in the green tree"),
             ("seven lamps of gold were burning", "seven lamps of gold were shining")]
    refs = [s for pair in pairs for s in pair]  # each verse beside its near-twin
    neighbour = bleu(refs, refs[1:] + refs[:1])
    assert chance_score(refs, "ast-en-de") < neighbour / 2
    shuffled = refs[::2] + refs[1::2]
    assert chance_score(shuffled, "asr", shifts=len(refs)) == pytest.approx(chance_score(refs, "asr", shifts=len(refs)))
    assert chance_score(refs, "asr") == pytest.approx(
        min(100.0, sum(wer(refs, refs[k:] + refs[:k]) for k in range(1, 8)) / 7))
    # a large set: a fixed number of shifts spread over all of them, the first and the last included
    assert chance_shifts(8) == list(range(1, 8))
    ks = chance_shifts(2620, 32)
    assert len(ks) == 32 and ks[0] == 1 and ks[-1] == 2619 and ks == sorted(set(ks)) and chance_shifts(2620, 32) == ks
    with pytest.raises(UserError, match="shifts"):
        chance_score(refs, "asr", shifts=0)
