"""Deciding the paper's claims from measured numbers: the rules that turn a chapter's tables into "holds",
"does not hold" or "not testable" (None), and the words of each verdict (``claim_1`` … ``claim_7``), kept
apart from the chapters so they are tested like any code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, NamedTuple

import pandas as pd

from speechllm_redundancy.evaluation import describe_unusable


def tolerance_not_raised(frozen: float, lora: float, highest: float) -> bool | None:
    """Claim 2's second half for one decoder: LoRA does not raise the removable fraction (``lora <= frozen``).

    None — not informative — when both walks removed nothing, or both reached the highest level walked
    (``highest``): the walk cannot tell the two decoders apart, and "not raised" would hold by default.
    """
    if frozen == lora and (frozen == 0 or frozen >= highest):
        return None
    return lora <= frozen


def lora_claim(lowers: bool, not_raised: Mapping[str, bool | None]) -> bool | None:
    """Claim 2 over the decoders: LoRA lowers the pruned-block distances (``lowers``) and raises no decoder's
    removable fraction (``not_raised``: tolerance_not_raised per decoder). A first half that fails decides
    the claim; otherwise any decoder whose comparison is not informative leaves it not testable."""
    if not lowers:
        return False
    if not not_raised or any(v is None for v in not_raised.values()):
        return None
    return all(not_raised.values())


# Claim 7 (efficiency). The paper's pruned 8B reached ~93 % of its FLOP-ideal speed-up (35 % of a 37.8 % ideal
# decoding saving) and ~100 % of its ideal memory saving (10.37 GiB against an ideal of 10.44): pruning is
# expected to deliver nearly its ideal. A run reproduces a half when it reaches this share of its own ideal
# (the paper passes both; a model whose memory or time does not follow its removed layers fails).
SHARE_OF_IDEAL = 0.9


def beyond_spread(low: float, high: float, bar: float) -> bool | None:
    """Whether a measurement whose repeats ranged over [``low``, ``high``] clears ``bar``, called only when
    the whole range lies on one side: True when ``low >= bar``, False when ``high < bar``, None when the bar
    lies within the spread of the repeats (another run could fall on either side)."""
    if low > high:
        raise ValueError(f"low {low} above high {high}")
    if low >= bar:
        return True
    return False if high < bar else None


def speed_half(low: float, high: float, ideal: float, repeats: int,
               share: float = SHARE_OF_IDEAL) -> bool | None:
    """Claim 7's speed half: the time saved, whose repeats ranged over [``low``, ``high``]
    (``efficiency.saving_range``), reaches ``share`` of the ideal saving, beyond that spread
    (``beyond_spread``). None with fewer than two repeats (no spread to judge by) or no ideal saving."""
    if repeats < 2 or not ideal > 0:
        return None
    return beyond_spread(low, high, share * ideal)


def memory_half(base_peak: float | None, pruned_peak: float | None, ideal_peak: float | None,
                share: float = SHARE_OF_IDEAL) -> bool | None:
    """Claim 7's memory half: the measured drop of the peak (``base_peak - pruned_peak``) is at least
    ``share`` of the ideal drop (``base_peak - ideal_peak``: the removed layers' weights and KV cache). None
    when a peak was not measurable or nothing was removed. ("Peak memory went down" would hold for any
    pruned copy.)"""
    if any(v is None or v != v for v in (base_peak, pruned_peak, ideal_peak)) or not base_peak > ideal_peak:
        return None
    return base_peak - pruned_peak >= share * (base_peak - ideal_peak)


def both_halves(*halves: bool | None) -> bool | None:
    """A claim of several halves: False when one fails, else None when one is undecided, else True."""
    if any(h is False for h in halves):
        return False
    return None if any(h is None for h in halves) else True



# ------------------------------------------------------------------------------------------------------
# Each claim's verdict in words. A chapter hands over its numbers; the rules above decide, and the words
# quote the same numbers: the whole finding for the chapter's page, the one or two deciding numbers for
# the results page (``ClaimVerdict.summary``).

CLAIM_1_AGREEMENT = 0.8  # speech and its gold-transcript control pick the same block for this share of n …
CLAIM_1_DIFFERENCE = 0.05  # … and their maps differ by a mean |ΔD| below this
CLAIM_3_SHARE = 2 / 3  # of block sizes: "the closest block is deep", "the last layer's block is farthest"
CLAIM_6_GAP = 0.02  # largest BLEU gap between the two paths, relative to the unpruned BLEU
MIB = 2**20


@dataclass(frozen=True)
class ClaimVerdict:
    """A chapter's verdict on one of the paper's claims (``results.CLAIMS``): ``holds`` is the decision
    (None: not testable), ``finding`` the numbers behind it (the chapter's page), ``summary`` the one or two
    that decide it (the results page), ``variant`` and ``recipe`` what it was computed on."""

    claim: int
    holds: bool | None
    finding: str
    summary: str
    variant: str
    recipe: str | None = None

    def __post_init__(self):
        if self.holds is not None:  # numpy booleans from the chapters' tables
            object.__setattr__(self, "holds", bool(self.holds))


class AtChance(NamedTuple):
    """A model that does no better than chance before any pruning (``evaluation.no_better_than_chance``'s
    {set: (score, chance)}): a pruning claim cannot be tested on it."""

    model: str
    sets: Mapping[str, tuple[float, float]]
    task: str = "asr"

    def describe(self) -> str:
        return describe_unusable(self.model, self.sets, self.task)


def _described(models: Sequence[AtChance]) -> str:
    return "; ".join(m.describe() for m in models)


def _at_chance(models: Sequence[AtChance]) -> str:
    listed = "; ".join(f"{m.model} on {', '.join(m.sets)}" for m in models)
    return f"no better than chance before pruning: {listed}"


def maps_agree(mean_difference: float, agreement: float) -> bool:
    """Claim 1's bar for a speech map and its gold-transcript control: the same optimal block for at least
    ``CLAIM_1_AGREEMENT`` of the block sizes and a mean |ΔD| below ``CLAIM_1_DIFFERENCE``."""
    return agreement >= CLAIM_1_AGREEMENT and mean_difference < CLAIM_1_DIFFERENCE


def claim_1(mean_difference: float, agreement: float, at_chance: Sequence[AtChance], *, variant: str,
            recipe: str | None = None, untrained: tuple[float, float] | None = None) -> ClaimVerdict:
    """Claim 1, speech maps ≈ text maps: the speech maps and their gold-transcript controls pick the same
    block for at least ``CLAIM_1_AGREEMENT`` of the block sizes and differ by a mean |ΔD| below
    ``CLAIM_1_DIFFERENCE``; not testable when a SLAM model is at chance (its map would be of inputs it
    does not understand). ``untrained``: (mean |ΔD|, path agreement) of the same decoders read through an
    untrained front end against the same controls — quoted beside the speech maps' numbers, so a reader
    sees how much of the agreement the decoder gives any input; it does not enter the decision."""
    finding = (f"speech vs gold-transcript control (same layout and position): mean |ΔD| = "
               f"{mean_difference:.3f}, optimal paths agree on {agreement:.0%} of block sizes")
    if untrained is not None:
        finding += (f" (through an untrained front end: mean |ΔD| = {untrained[0]:.3f}, paths agree on "
                    f"{untrained[1]:.0%})")
    if at_chance:
        return ClaimVerdict(1, None, f"{_described(at_chance)}; for the record, {finding}",
                            _at_chance(at_chance), variant, recipe)
    holds = maps_agree(mean_difference, agreement)
    summary = (f"mean |ΔD| {mean_difference:.3f} (holds below {CLAIM_1_DIFFERENCE}); same optimal block for "
               f"{agreement:.0%} of block sizes (holds from {CLAIM_1_AGREEMENT:.0%})")
    if untrained is not None:
        summary += f"; untrained front end: |ΔD| {untrained[0]:.3f}, same block {untrained[1]:.0%}"
    return ClaimVerdict(1, holds, finding, summary, variant, recipe)


def claim_2(distances: Mapping[str, tuple[float, float]],
            tolerance: Mapping[str, Mapping[str, float]] | None, at_chance: Sequence[AtChance], *, how: str,
            variant: str, recipe: str | None = None) -> ClaimVerdict:
    """Claim 2, LoRA lowers the pruned-block distances without raising pruning tolerance (``lora_claim``).

    ``distances``: {decoder: (frozen, LoRA) pruned-block distance}, empty when no decoder has LoRA;
    ``tolerance``: {decoder: {"frozen", "LoRA": removable fraction, "highest": highest level walked}}, None
    when no walk was made; ``at_chance``: the walked models at chance; ``how``: the healing, in words."""
    if not distances:
        return ClaimVerdict(2, None, "the profile trains no SLAM model with LoRA on the decoder (lora_llms "
                            "is empty)", "no SLAM model with LoRA on the decoder", variant, recipe)
    lowers = all(lora < frozen for frozen, lora in distances.values())
    listed = ", ".join(f"{n} {frozen:.3f} → {lora:.3f}" for n, (frozen, lora) in distances.items())
    first_half = (f"LoRA {'lowers' if lowers else 'does not lower'} the pruned-block distance (frozen → "
                  f"LoRA: {listed})")
    summary = f"pruned-block distance frozen → LoRA: {listed}"  # a first half that fails decides alone
    if tolerance is None:
        return ClaimVerdict(2, None if lowers else False, f"{first_half}; pruning tolerance not tested "
                            "(pruned_fractions is empty)", summary, variant, recipe)
    if at_chance:
        return ClaimVerdict(2, None if lowers else False, f"{first_half}; pruning tolerance not testable at "
                            f"this scale: {_described(at_chance)}",
                            f"{summary}; tolerance {_at_chance(at_chance)}" if lowers else summary,
                            variant, recipe)
    not_raised = {n: tolerance_not_raised(t["frozen"], t["LoRA"], t["highest"]) for n, t in tolerance.items()}
    fractions = ", ".join(f"{n} {t['frozen']:.0%} → {t['LoRA']:.0%}" for n, t in tolerance.items())
    second_half = ("the comparison of removable fractions is not informative (both none, or both the highest "
                   "level walked)" if None in not_raised.values() else
                   f"{'does not raise' if all(not_raised.values()) else 'raises'} the removable fraction")
    if lowers:
        summary += f"; removable fraction frozen → LoRA: {fractions}"
    return ClaimVerdict(2, lora_claim(lowers, not_raised), f"{first_half}; {second_half} (frozen → LoRA, "
                        f"{how}: {fractions})", summary, variant, recipe)


def claim_3(deep_share: float, last_share: float, *, variant: str, recipe: str | None = None) -> ClaimVerdict:
    """Claim 3, the closest blocks are deep and the block ending at the last layer is the farthest: both
    shares of block sizes at least ``CLAIM_3_SHARE``."""
    holds = deep_share >= CLAIM_3_SHARE and last_share >= CLAIM_3_SHARE
    finding = (f"optimal block in the deeper half for {deep_share:.0%} of block sizes; the block ending at "
               f"the last layer is the farthest for {last_share:.0%}")
    summary = (f"optimal block deep for {deep_share:.0%}, last-layer block farthest for {last_share:.0%} of "
               f"block sizes (holds from {CLAIM_3_SHARE:.0%})")
    return ClaimVerdict(3, holds, finding, summary, variant, recipe)


def claim_4(mean_change: Mapping[str, float], worst_without_healing: float, at_chance: Sequence[AtChance], *,
            variant: str, recipe: str | None = None, left_out: Sequence[str] = ()) -> ClaimVerdict:
    """Claim 4, the healing strategies ranked: without healing the worst relative WER change exceeds +50 %;
    decoder healing's mean change is below no healing's; healing both gives the lowest mean; projector
    healing's mean is within 5 points (or a fifth of no healing's, whichever is larger) of no healing's.
    ``mean_change``: {strategy: mean relative WER change over the pruned levels and sets} and
    ``worst_without_healing`` over the same levels: those where some strategy still beats chance
    (``sweep.working_levels``). ``left_out`` names the levels where every healed model was at or past
    chance; with none left (``mean_change`` empty) the ranking is not informative: it would order broken
    models."""
    gone = f"left out, every model at or past chance on some set: {', '.join(left_out)}" if left_out else ""
    mean = pd.Series(mean_change, dtype=float)
    numbers = ", ".join(f"{s} {v:+.0%}" for s, v in mean.items())
    worst = f"worst without healing {worst_without_healing:+.0%}"
    record = f"mean relative WER change by healing strategy: {numbers}; {worst}" + (f"; levels {gone}" if gone else "")
    if at_chance:
        return ClaimVerdict(4, None, _described(at_chance) + (f"; for the record, {record}" if mean_change else ""),
                            _at_chance(at_chance), variant, recipe)
    if not mean_change:
        return ClaimVerdict(4, None, f"no level walked leaves a working model{f' ({gone})' if gone else ''}, so the "
                            "strategies cannot be ranked (walk smaller fractions, or heal longer)",
                            "not informative: every pruned model at or past chance", variant, recipe)
    parts = {
        "sharp without healing": worst_without_healing > 0.5,
        "decoder healing helps": mean["decoder"] < mean["none"],
        "both is best": mean["both"] <= mean.min(),
        "projector only ≈ none": abs(mean["projector"] - mean["none"]) <= max(0.05, 0.2 * abs(mean["none"])),
    }
    listing = "; ".join(f"{name}: {'yes' if ok else 'no'}" for name, ok in parts.items())
    return ClaimVerdict(4, all(parts.values()), f"{listing}; {record}",
                        f"{worst}; mean change by strategy {numbers}", variant, recipe)


def claim_5(removable: Sequence[tuple[str, float]], at_chance: Sequence[AtChance], *, variant: str,
            recipe: str | None = None, highest: float | None = None) -> ClaimVerdict:
    """Claim 5, larger decoders tolerate more pruning: ``removable`` ((decoder, the largest pruning level
    within the bar) of the frozen decoders, smallest first) never decreases and its last exceeds its first,
    among the decoders not at chance (``at_chance``, in the same order).

    Not testable with fewer than two of those, when none of them removed any layer, or when all of them
    reached ``highest``, the highest level walked (as claim 2's ``tolerance_not_raised``: the levels walked
    cannot tell the sizes apart, and "does not hold" would follow by default). The levels are walked
    fractions (``chapters.scales.walked_level``), not n / L: decoders of different depths round one
    fraction to different layer counts (4 % is 1 of 30 layers and 1 of 24), which is no difference in
    tolerance."""
    if len(removable) < 2:
        return ClaimVerdict(5, None, "the profile has a single decoder", "a single decoder", variant, recipe)
    bad = {m.model for m in at_chance}
    usable = [(model, f) for model, f in removable if model not in bad]
    if len(usable) < 2:
        return ClaimVerdict(5, None, _described(at_chance), _at_chance(at_chance), variant, recipe)
    fractions = [f for _, f in usable]
    listing = "largest level within the bar, by size: " + ", ".join(f"{model} {f:.0%}" for model, f in usable)
    if not any(fractions):
        return ClaimVerdict(5, None, f"{listing}: no decoder stays within the bar at the lowest level walked, so "
                            "the walks cannot tell the sizes apart (walk smaller fractions, or heal longer)",
                            f"{listing} (not informative)", variant, recipe)
    if highest is not None and all(f >= highest for f in fractions):
        return ClaimVerdict(5, None, f"{listing}: every decoder stays within the bar at the highest level walked, "
                            "so the walks cannot tell the sizes apart (walk larger fractions)",
                            f"{listing} (not informative)", variant, recipe)
    holds = all(b >= a for a, b in pairwise(fractions)) and fractions[-1] > fractions[0]
    return ClaimVerdict(5, holds, listing, listing, variant, recipe)


def claim_6(pairs: Sequence[Mapping[str, Any]], at_chance: Sequence[AtChance], *, variant: str,
            recipe: str | None = None) -> ClaimVerdict:
    """Claim 6, the ASR-derived path serves translation as well as the AST-derived one: for every decoder and
    direction (``pairs``: rows of chapter 4's summary table) both paths allow the same removable fraction
    and their BLEU differs at every level by at most ``CLAIM_6_GAP`` of the unpruned BLEU; not testable
    when a direction's unpruned BLEU is at chance."""
    if at_chance:
        return ClaimVerdict(6, None, _described(at_chance), _at_chance(at_chance), variant, recipe)
    ast, asr = "removable (AST-derived)", "removable (ASR-derived)"
    holds = all(p["largest BLEU gap"] <= CLAIM_6_GAP * p["baseline BLEU"] and p[ast] == p[asr] for p in pairs)
    finding = "; ".join(
        f"{p['model']} {p['direction']}: same block at {p['levels with the same block']:.0%} of the levels, "
        f"largest gap {p['largest BLEU gap']:.2f} of {p['baseline BLEU']:.2f} BLEU, removable {p[ast]:.0%} "
        f"(AST path) vs {p[asr]:.0%} (ASR path)" for p in pairs)
    summary = "; ".join(f"{p['model']} {p['direction']}: largest gap {p['largest BLEU gap']:.2f} of "
                        f"{p['baseline BLEU']:.2f} BLEU, removable {p[ast]:.0%} vs {p[asr]:.0%}"
                        for p in pairs)
    return ClaimVerdict(6, holds, finding, summary, variant, recipe)


def claim_7(point: Mapping[str, Any], unpruned: Mapping[str, Any], *, paper_ratio: float, paper_ideal: float,
            variant: str, recipe: str | None = None) -> ClaimVerdict:
    """Claim 7 on the whole SpeechLLM (rows of ``efficiency.measure_speech_llm``): the pruned ``point``
    against the ``unpruned`` model, ``speed_half`` of its time saving and ``memory_half`` of its peak memory
    (``both_halves``). ``paper_ratio`` and ``paper_ideal``: the paper's peak-memory ratio and its ideal,
    quoted beside this run's."""
    if point["fraction"] == 0:
        return ClaimVerdict(7, None, "the profile prunes the SpeechLLM at no fraction", "nothing pruned",
                            variant, recipe)
    saving, ideal, repeats = point["total_saving"], point["ideal_total_saving"], point["repeats"]
    speed = speed_half(point["total_saving_low"], point["total_saving_high"], ideal, repeats)
    memory = memory_half(unpruned["peak_bytes"], point["peak_bytes"], point["ideal_peak_bytes"])
    bar = SHARE_OF_IDEAL * ideal
    speed_word = {True: "above the bar beyond the spread", False: "below the bar beyond the spread",
                  None: "the bar lies within the spread" if repeats > 1 else "one repeat, no spread"}
    memory_word = {True: "reaches", False: "falls short of", None: "cannot be compared with"}
    base, pruned = unpruned["peak_bytes"] / MIB, point["peak_bytes"] / MIB
    ratio, ideal_ratio = pruned / base, point["ideal_peak_bytes"] / MIB / base
    spread = f"{point['total_saving_low']:.0%} to {point['total_saving_high']:.0%}"
    time_finding = (f"removing {point['fraction']:.0%} of the layers saved {saving:.0%} of the time "
                    f"({spread} over {repeats} repeats; ideal {ideal:.0%}, bar {bar:.0%}: "
                    f"{speed_word[speed]})")
    memory_finding = (f"peak memory {base:.0f} → {pruned:.0f} MiB, ratio {ratio:.2f} (ideal "
                      f"{ideal_ratio:.2f}; its drop {memory_word[memory]} {SHARE_OF_IDEAL:.0%} of the ideal "
                      f"drop; the paper: {paper_ratio:.2f}, ideal {paper_ideal:.2f})")
    summary = (f"time saved {saving:.0%} ({spread} over the repeats; bar {bar:.0%}); peak memory ratio "
               f"{ratio:.2f} (ideal {ideal_ratio:.2f})")
    return ClaimVerdict(7, both_halves(speed, memory), f"{time_finding}; {memory_finding}", summary, variant,
                        recipe)
