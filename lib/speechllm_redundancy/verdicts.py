"""Deciding the paper's claims from measured numbers: the rules that turn a chapter's tables into "holds",
"does not hold" or "not testable" (None), kept apart from the chapters so they are tested like any code."""

from __future__ import annotations

from typing import Mapping


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
