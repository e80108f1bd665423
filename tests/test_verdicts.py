"""Each claim's verdict from a chapter's numbers: the decision follows the rule, the finding quotes the
numbers as the chapters always worded them, and the summary keeps only the deciding ones."""

import pytest

from speechllm_redundancy.verdicts import (AtChance, ClaimVerdict, claim_1, claim_2, claim_3, claim_4, claim_5,
                                           claim_6, claim_7)

AT_CHANCE = AtChance("tiny-qwen2", {"test-clean": (100.0, 100.0), "dev-ood": (100.0, 84.6)})


def test_a_verdict_holds_a_plain_bool():
    import numpy as np

    verdict = ClaimVerdict(1, np.bool_(True), "f", "s", "v")
    assert verdict.holds is True and type(verdict.holds) is bool
    assert ClaimVerdict(1, None, "f", "s", "v").holds is None


def test_claim_1_needs_agreement_and_a_small_difference_and_models_above_chance():
    held = claim_1(0.01, 0.8, [], variant="v", recipe="cpu")
    assert (held.claim, held.holds, held.variant, held.recipe) == (1, True, "v", "cpu")
    assert held.finding == ("speech vs gold-transcript control (same layout and position): mean |ΔD| = 0.010, "
                            "optimal paths agree on 80% of block sizes")
    assert "0.010" in held.summary and "80%" in held.summary
    assert claim_1(0.05, 1.0, [], variant="v").holds is False  # the difference must stay below 0.05
    assert claim_1(0.01, 0.79, [], variant="v").holds is False

    untestable = claim_1(0.025, 2 / 3, [AT_CHANCE], variant="v")
    assert untestable.holds is None
    assert untestable.finding.startswith("tiny-qwen2 unpruned scores WER test-clean 100.0 % (chance 100.0 %), "
                                         "dev-ood 100.0 % (chance 84.6 %), no better than")
    assert untestable.finding.endswith("; for the record, speech vs gold-transcript control (same layout and "
                                       "position): mean |ΔD| = 0.025, optimal paths agree on 67% of block sizes")
    assert untestable.summary == "no better than chance before pruning: tiny-qwen2 on test-clean, dev-ood"


def test_claim_1_quotes_the_untrained_front_end_without_deciding_on_it():
    plain = claim_1(0.01, 0.8, [], variant="v", recipe="cpu")
    for untrained in ((0.002, 1.0), (0.3, 0.1)):  # the control's numbers never change the decision
        quoted = claim_1(0.01, 0.8, [], variant="v", recipe="cpu", untrained=untrained)
        assert quoted.holds is plain.holds is True
    assert quoted.finding == (plain.finding
                              + " (through an untrained front end: mean |ΔD| = 0.300, paths agree on 10%)")
    assert quoted.summary == plain.summary + "; untrained front end: |ΔD| 0.300, same block 10%"
    untestable = claim_1(0.025, 2 / 3, [AT_CHANCE], variant="v", untrained=(0.002, 1.0))
    assert untestable.holds is None
    assert untestable.finding.endswith("(through an untrained front end: mean |ΔD| = 0.002, paths agree "
                                       "on 100%)")
    assert untestable.summary == "no better than chance before pruning: tiny-qwen2 on test-clean, dev-ood"


def test_claim_2_a_failing_first_half_decides_and_an_uninformative_second_leaves_it_open():
    lowered, raised = {"a": (0.3, 0.2)}, {"a": (0.194, 0.225)}
    walked = {"a": {"frozen": 0.2, "LoRA": 0.2, "highest": 0.4}}
    verdict = claim_2(raised, walked, [AtChance("a (frozen)", {"test-clean": (100.0, 100.0)})],
                      how="both healing, 2 steps", variant="v")
    assert verdict.holds is False
    assert verdict.finding.startswith("LoRA does not lower the pruned-block distance (frozen → LoRA: a 0.194 → "
                                      "0.225); pruning tolerance not testable at this scale: a (frozen) unpruned")
    assert verdict.summary == "pruned-block distance frozen → LoRA: a 0.194 → 0.225"

    held = claim_2(lowered, walked, [], how="both healing, 2 steps", variant="v")
    assert held.holds is True
    assert held.finding == ("LoRA lowers the pruned-block distance (frozen → LoRA: a 0.300 → 0.200); does not "
                            "raise the removable fraction (frozen → LoRA, both healing, 2 steps: a 20% → 20%)")
    assert held.summary.endswith("removable fraction frozen → LoRA: a 20% → 20%")
    assert claim_2(lowered, {"a": {"frozen": 0.2, "LoRA": 0.4, "highest": 0.4}}, [], how="h",
                   variant="v").holds is False
    both_top = claim_2(lowered, {"a": {"frozen": 0.4, "LoRA": 0.4, "highest": 0.4}}, [], how="h", variant="v")
    assert both_top.holds is None and "not informative" in both_top.finding
    assert claim_2(lowered, None, [], how="h", variant="v").holds is None  # tolerance not walked
    assert claim_2(raised, None, [], how="h", variant="v").holds is False
    assert claim_2({}, None, [], how="h", variant="v").holds is None  # no LoRA model


def test_claim_3_needs_two_thirds_of_the_block_sizes_on_both_counts():
    verdict = claim_3(0.24, 0.29, variant="v")
    assert verdict.holds is False
    assert verdict.finding == ("optimal block in the deeper half for 24% of block sizes; the block ending at the "
                               "last layer is the farthest for 29%")
    assert claim_3(2 / 3, 0.7, variant="v").holds is True
    assert claim_3(0.9, 0.6, variant="v").holds is False


def test_claim_4_needs_every_part_and_names_each():
    ranked = {"none": 0.8, "decoder": 0.3, "projector": 0.75, "both": 0.1}
    verdict = claim_4(ranked, 1.2, [], variant="v")
    assert verdict.holds is True
    assert verdict.finding == ("sharp without healing: yes; decoder healing helps: yes; both is best: yes; "
                               "projector only ≈ none: yes; mean relative WER change by healing strategy: none "
                               "+80%, decoder +30%, projector +75%, both +10%; worst without healing +120%")
    assert claim_4(ranked, 0.4, [], variant="v").holds is False  # not sharp without healing
    assert claim_4({**ranked, "projector": 0.2}, 1.2, [], variant="v").holds is False  # projector ≠ none
    assert claim_4({**ranked, "decoder": 0.05}, 1.2, [], variant="v").holds is False  # both not the best
    untestable = claim_4(ranked, 1.2, [AT_CHANCE], variant="v")
    assert untestable.holds is None and "; for the record, mean relative WER change" in untestable.finding
    # levels where every model was broken are left out and named; with none left, no ranking
    kept = claim_4(ranked, 1.2, [], variant="v", left_out=["6/30 layers"])
    assert kept.holds is True and kept.finding.endswith("levels left out, every model at or past chance on some "
                                                        "set: 6/30 layers")
    empty = claim_4({}, float("nan"), [], variant="v", left_out=["6/30 layers", "12/30 layers"])
    assert empty.holds is None and empty.summary.startswith("not informative")
    assert "6/30 layers, 12/30 layers" in empty.finding
    assert claim_4({}, float("nan"), [AT_CHANCE], variant="v").summary.startswith("no better than chance")


def test_claim_5_compares_the_decoders_above_chance_by_size():
    verdict = claim_5([("small", 0.2), ("large", 0.4)], [], variant="v")
    assert verdict.holds is True and verdict.finding == "largest level within the bar, by size: small 20%, large 40%"
    assert claim_5([("small", 0.4), ("large", 0.4)], [], variant="v").holds is False  # must grow
    assert claim_5([("small", 0.2), ("mid", 0.1), ("large", 0.4)], [], variant="v").holds is False
    assert claim_5([("only", 0.2)], [], variant="v").finding == "the profile has a single decoder"
    # no decoder removed anything: not informative, not "does not hold" by default
    none_removed = claim_5([("small", 0.0), ("large", 0.0)], [], variant="v")
    assert none_removed.holds is None and none_removed.summary.endswith("(not informative)")
    assert claim_5([("small", 0.0), ("large", 0.1)], [], variant="v").holds is True
    # every decoder reached the highest level walked: not informative either; below it, decided
    at_top = claim_5([("small", 0.1), ("large", 0.1)], [], variant="v", highest=0.1)
    assert at_top.holds is None and "highest level walked" in at_top.finding
    assert claim_5([("small", 0.04), ("large", 0.04)], [], variant="v", highest=0.1).holds is False
    three = [("small", 0.4), ("mid", 0.2), ("large", 0.3)]
    assert claim_5(three, [AtChance("small", {"test-clean": (100.0, 100.0)})], variant="v").holds is True
    untestable = claim_5(three[:2], [AtChance("small", {"test-clean": (100.0, 100.0)})], variant="v")
    assert untestable.holds is None and untestable.finding.startswith("small unpruned scores WER")


def pair(gap=0.1, ast=0.25, asr=0.25):
    return {"model": "m", "direction": "en-de", "baseline BLEU": 10.0, "largest BLEU gap": gap,
            "levels with the same block": 0.5, "removable (AST-derived)": ast, "removable (ASR-derived)": asr}


def test_claim_6_needs_the_same_removable_fraction_and_a_small_gap_everywhere():
    verdict = claim_6([pair()], [], variant="v")
    assert verdict.holds is True
    assert verdict.finding == ("m en-de: same block at 50% of the levels, largest gap 0.10 of 10.00 BLEU, "
                               "removable 25% (AST path) vs 25% (ASR path)")
    assert claim_6([pair(), pair(gap=0.3)], [], variant="v").holds is False  # above 2 % of the baseline
    assert claim_6([pair(asr=0.5)], [], variant="v").holds is False
    untestable = claim_6([pair()], [AtChance("m", {"en-de-test": (0.0, 36.3)}, "ast-en-de")], variant="v")
    assert untestable.holds is None and "BLEU en-de-test 0.0 (chance 36.3)" in untestable.finding


def row(fraction=0.5, saving=0.42, low=-0.1, high=0.7, ideal=0.33, peak=13.0, ideal_peak=13.5):
    mib = 2**20
    return {"fraction": fraction, "total_saving": saving, "total_saving_low": low, "total_saving_high": high,
            "ideal_total_saving": ideal, "repeats": 2, "peak_bytes": peak * mib, "ideal_peak_bytes": ideal_peak * mib}


def test_claim_7_words_both_halves_and_needs_a_pruned_point():
    unpruned = row(fraction=0.0, peak=14.0, ideal_peak=14.0)
    verdict = claim_7(row(), unpruned, paper_ratio=0.66, paper_ideal=0.66, variant="v")
    assert verdict.holds is None  # the bar (30 %) lies within the spread
    assert verdict.finding == ("removing 50% of the layers saved 42% of the time (-10% to 70% over 2 repeats; "
                               "ideal 33%, bar 30%: the bar lies within the spread); peak memory 14 → 13 MiB, "
                               "ratio 0.93 (ideal 0.96; its drop reaches 90% of the ideal drop; the paper: 0.66, "
                               "ideal 0.66)")
    assert verdict.summary.startswith("time saved 42%")
    assert claim_7(row(low=0.31, high=0.5), unpruned, paper_ratio=0.66, paper_ideal=0.66,
                   variant="v").holds is True
    assert claim_7(row(low=0.31, high=0.5, peak=13.9), unpruned, paper_ratio=0.66, paper_ideal=0.66,
                   variant="v").holds is False  # memory stays
    assert claim_7(unpruned, unpruned, paper_ratio=0.66, paper_ideal=0.66, variant="v").holds is None


@pytest.mark.parametrize("claim", [1, 4, 5, 6])
def test_a_claim_on_models_at_chance_is_summarised_by_them(claim):
    verdict = {1: lambda: claim_1(0.0, 1.0, [AT_CHANCE], variant="v"),
               4: lambda: claim_4({"none": 1, "decoder": 0, "projector": 1, "both": 0}, 1.0, [AT_CHANCE],
                                  variant="v"),
               5: lambda: claim_5([("tiny-qwen2", 0.0), ("b", 0.5)], [AT_CHANCE], variant="v"),
               6: lambda: claim_6([pair()], [AT_CHANCE], variant="v")}[claim]()
    assert verdict.holds is None and verdict.summary.startswith("no better than chance before pruning: tiny-qwen2")
