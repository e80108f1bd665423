"""Claim 7's rules: memory must fall by (nearly) what the removed layers held, and a speed difference is
called only beyond the spread of the repeats — both halves able to fail, and the paper's own numbers pass."""

import pytest

from speechllm_redundancy.efficiency import (PAPER_PEAK_GIB, PAPER_SAVING, ideal_saving,
                                             paper_ideal_peak_ratio, saving_range, shape_skeleton)
from speechllm_redundancy.verdicts import SHARE_OF_IDEAL, beyond_spread, both_halves, memory_half, speed_half


def test_a_difference_is_called_only_beyond_the_spread():
    assert beyond_spread(0.28, 0.31, 0.27) is True
    assert beyond_spread(0.20, 0.25, 0.27) is False
    assert beyond_spread(0.23, 0.31, 0.27) is None  # the bar inside the spread: the measurement cannot tell
    assert beyond_spread(0.27, 0.27, 0.27) is True
    with pytest.raises(ValueError):
        beyond_spread(0.3, 0.2, 0.27)


def test_speed_half_needs_a_spread_and_reads_it():
    ideal = 0.30  # the run: 42 % of the layers removed, ideal 30 %; the bar is 27 %
    assert speed_half(0.23, 0.31, ideal, repeats=3) is None  # the two runs that flipped now agree: undecided
    assert speed_half(0.28, 0.31, ideal, repeats=3) is True
    assert speed_half(0.10, 0.14, ideal, repeats=3) is False
    assert speed_half(0.31, 0.31, ideal, repeats=1) is None  # one repeat has no spread
    assert speed_half(0.0, 0.01, 0.0, repeats=3) is None  # nothing removed


def test_the_spread_is_every_pairing_of_repeats():
    low, high = saving_range([10.0, 12.0, 11.0], [7.0, 8.0, 9.0])
    assert (low, high) == (pytest.approx(1 - 9 / 10), pytest.approx(1 - 7 / 12))
    assert saving_range([10.0], [7.0]) == (pytest.approx(0.3), pytest.approx(0.3))


def test_memory_half_fails_when_memory_does_not_follow_the_removed_layers():
    base, ideal = 2000.0, 1400.0  # the removed layers held 600
    assert memory_half(base, 1420.0, ideal) is True
    assert memory_half(base, 1300.0, ideal) is True  # more than the ideal: measurement noise, not a failure
    assert memory_half(base, 1700.0, ideal) is False  # lower than unpruned, yet half the removed bytes stay
    assert memory_half(base, base, ideal) is False
    assert memory_half(None, 1420.0, ideal) is None and memory_half(base, float("nan"), ideal) is None
    assert memory_half(base, base, base) is None  # nothing removed


def test_the_papers_own_numbers_pass_both_halves():
    base, pruned = PAPER_PEAK_GIB
    assert paper_ideal_peak_ratio() == pytest.approx(0.664, abs=0.002)  # its 13 removed layers' bf16 weights
    assert memory_half(base, pruned, base * paper_ideal_peak_ratio()) is True
    llama = shape_skeleton("llama-3.1-8b")
    ideal = ideal_saving(llama, 13, phase="decode", prompt_tokens=256, new_tokens=32)
    assert ideal == pytest.approx(0.378, abs=0.002)
    assert PAPER_SAVING >= SHARE_OF_IDEAL * ideal  # the paper reached 93 % of its ideal


def test_both_halves():
    assert both_halves(True, True) is True
    assert both_halves(True, None) is None
    assert both_halves(None, False) is False
    assert both_halves(False, True) is False
