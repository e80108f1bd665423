"""Scores as the paper reports them: WER (Whisper English normaliser + jiwer), BLEU/chrF (sacrebleu),
the relative change Δ = (s − s0)/s0, and the removable fraction of decoder layers at a Δ threshold.

All scores are corpus-level and on the 0–100 scale the paper's tables use (WER 3.56 means 3.56 %).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from speechllm_redundancy.errors import UserError

# The paper's acceptance thresholds (section 4): ASR Δ_WER ≤ +25 %, AST Δ_BLEU ≥ −10 %, on every set at once.
ASR_THRESHOLD = 0.25
AST_THRESHOLD = -0.10

_NORMALIZER = None


def normalize_english(text: str) -> str:
    """Whisper's English normaliser (case, punctuation, numbers, spelling variants) — as in the paper."""
    global _NORMALIZER
    if _NORMALIZER is None:
        from whisper_normalizer.english import EnglishTextNormalizer

        _NORMALIZER = EnglishTextNormalizer()
    return " ".join(_NORMALIZER(text).split())


def _check_pairs(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if len(refs) != len(hyps):
        raise UserError(f"{len(refs)} references but {len(hyps)} hypotheses: pass one hypothesis per reference.")
    if not refs:
        raise UserError("no references to score: pass at least one (reference, hypothesis) pair.")


def word_errors(refs: Sequence[str], hyps: Sequence[str], normalize: bool = True) -> dict:
    """Corpus-level edit counts after normalisation; a reference that normalises to nothing counts every
    hypothesis word as an insertion (jiwer itself refuses empty references)."""
    _check_pairs(refs, hyps)
    if normalize:
        refs = [normalize_english(r) for r in refs]
        hyps = [normalize_english(h) for h in hyps]
    import jiwer

    kept = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    extra_ins = sum(len(h.split()) for r, h in zip(refs, hyps) if not r.strip())
    counts = dict(substitutions=0, deletions=0, insertions=extra_ins, hits=0)
    if kept:
        out = jiwer.process_words([r for r, _ in kept], [h if h.strip() else "" for _, h in kept])
        counts["substitutions"] += out.substitutions
        counts["deletions"] += out.deletions
        counts["insertions"] += out.insertions
        counts["hits"] += out.hits
    counts["ref_words"] = counts["substitutions"] + counts["deletions"] + counts["hits"]
    return counts


def wer(refs: Sequence[str], hyps: Sequence[str], normalize: bool = True) -> float:
    """Corpus WER in percent: (S + D + I) / N over all utterances, after the Whisper English normaliser."""
    c = word_errors(refs, hyps, normalize)
    errors = c["substitutions"] + c["deletions"] + c["insertions"]
    if c["ref_words"] == 0:
        return 0.0 if errors == 0 else math.inf
    return 100.0 * errors / c["ref_words"]


def bleu(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, case-sensitive), 0–100."""
    _check_pairs(refs, hyps)
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score)


def chrf(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu defaults), 0–100; steadier than BLEU on small test sets."""
    _check_pairs(refs, hyps)
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(hyps), [list(refs)]).score)


def relative_change(s: float, s0: float) -> float:
    """Δ = (s − s0) / s0. With s0 = 0: 0 if s is also 0, else ±inf (any change from a perfect score)."""
    if s0 == 0:
        return 0.0 if s == 0 else math.copysign(math.inf, s)
    return (s - s0) / s0


def acceptable(delta: float, threshold: float, higher_is_better: bool) -> bool:
    """ASR (lower is better): Δ ≤ threshold (e.g. +0.25). AST (higher is better): Δ ≥ threshold (e.g. −0.10)."""
    if math.isnan(delta):
        return False
    return delta >= threshold if higher_is_better else delta <= threshold


def removable_layers(
    points: Mapping[int, Mapping[str, float]],
    threshold: float = ASR_THRESHOLD,
    higher_is_better: bool = False,
) -> int:
    """Largest number of removed layers n whose score is acceptable on every evaluation set at once.

    ``points[n][set_name]`` is the score with n layers removed; ``points[0]`` is the unpruned baseline s0.
    Returns 0 when no pruned level is acceptable.
    """
    if 0 not in points:
        raise UserError("removable_layers needs the unpruned baseline as points[0] (n = 0 removed layers).")
    base = points[0]
    best = 0
    for n, scores in points.items():
        if n == 0:
            continue
        missing = set(base) - set(scores)
        if missing:
            raise UserError(f"pruning level n={n} lacks scores for {sorted(missing)}: score every set at every level.")
        if all(acceptable(relative_change(scores[k], base[k]), threshold, higher_is_better) for k in base):
            best = max(best, int(n))
    return best


def removable_fraction(
    points: Mapping[int, Mapping[str, float]],
    num_layers: int,
    threshold: float = ASR_THRESHOLD,
    higher_is_better: bool = False,
) -> float:
    """The paper's Table 1 number: largest n / L acceptable on every set (e.g. 8/28 = 0.286)."""
    if num_layers <= 0:
        raise UserError(f"num_layers must be positive, got {num_layers}.")
    return removable_layers(points, threshold, higher_is_better) / num_layers


CHANCE_SHIFTS = 32  # wrong-utterance pairings averaged by chance_score (all of them in a set of ≤ 33)


def chance_shifts(n: int, shifts: int = CHANCE_SHIFTS) -> list[int]:
    """The cyclic shifts k (1 ≤ k < n) that ``chance_score`` pairs reference i with reference i + k by:
    every one for a small set, else ``shifts`` of them spread evenly (deterministic)."""
    if n - 1 <= shifts:
        return list(range(1, n))
    return sorted({round(1 + i * (n - 2) / (shifts - 1)) for i in range(shifts)})


def chance_score(refs: Sequence[str], task: str = "asr", shifts: int = CHANCE_SHIFTS) -> float:
    """The best score of an answer that ignores the speech: an empty output (WER 100 %, BLEU 0) or a perfect
    answer for the *wrong* utterance — every reference scored against another one's, averaged over the
    cyclic shifts of ``chance_shifts`` (each pairs every reference with a different one). Unrelated
    sentences share words, so the second gets BLEU above 0 — though, sentence lengths differing, usually
    WER above 100 %. One shift alone is a noisy estimate: on the first 64 verses of the default corpus's
    fr-en-test its BLEU ranged from 0.24 to 1.39 with the shift, around a mean of 0.54. A model that does
    no better is not recognising (translating) the speech, and a relative change from its score says
    nothing of pruning."""
    refs = list(refs)
    if len(refs) < 2:
        raise UserError("chance level needs at least two references (each is scored against another).")
    if isinstance(shifts, bool) or not isinstance(shifts, int) or shifts < 1:
        raise UserError(f"shifts={shifts!r}: use a whole number ≥ 1 of wrong-utterance pairings to average.")
    ks = chance_shifts(len(refs), shifts)
    if task == "asr":  # normalised once: every shift pairs the same texts
        norm = [normalize_english(r) for r in refs]
        return min(100.0, sum(wer(norm, norm[k:] + norm[:k], normalize=False) for k in ks) / len(ks))
    return max(0.0, sum(score(task, refs, refs[k:] + refs[:k])[1] for k in ks) / len(ks))


def no_better_than_chance(scores: Mapping[str, float], chance: Mapping[str, float],
                          task: str = "asr") -> dict[str, tuple[float, float]]:
    """The sets on which a model does no better than chance (``chance_score``): {set: (score, chance)}, in
    ``chance``'s order (the evaluation sets as listed), so every verdict names them alike.
    A pruning claim cannot be tested from such a baseline: the chapters say so instead of a verdict."""
    worse = (lambda s, c: s >= c) if task == "asr" else (lambda s, c: s <= c)
    return {name: (scores[name], chance[name]) for name in sorted(scores, key=list(chance).index)
            if worse(scores[name], chance[name])}


def describe_unusable(model: str, bad: Mapping[str, tuple[float, float]], task: str = "asr") -> str:
    """One sentence for a verdict: on which sets a model is at chance before any pruning, and why it matters."""
    metric, unit = ("WER", " %") if task == "asr" else ("BLEU", "")
    listing = ", ".join(f"{name} {s:.1f}{unit} (chance {c:.1f}{unit})" for name, (s, c) in bad.items())
    return (f"{model} unpruned scores {metric} {listing}, no better than an answer that ignores the speech, so "
            "its relative change under pruning is not evidence (train it longer: train_steps)")


def score(task: str, refs: Sequence[str], hyps: Sequence[str]) -> tuple[str, float]:
    """The paper's metric for a task: ("wer", WER %) for ``asr``, ("bleu", BLEU) for ``ast-*``."""
    return ("wer", wer(refs, hyps)) if task == "asr" else ("bleu", bleu(refs, hyps))


def evaluate_slam(model, manifest_path, task: str = "asr", limit: int | None = None, batch_size: int | None = None,
                  max_new_tokens: int = 200, progress: bool = True, precision: str = "auto") -> dict:
    """Greedy-decode a manifest with a SlamModel (features from the shared cache) and score it.

    Returns dict(metric, score, chrf (AST only), ids, refs, hyps, seconds, utterances); ``limit`` keeps
    the first N utterances (the manifest's order), e.g. 200 for a quick check; ``batch_size``: rows decoded
    at once (None: ``slam.DECODE_WIDTH``). ``progress`` shows bars over
    the utterances encoded (first use of a manifest) and decoded. Under ``accelerate launch``
    each process decodes a share of the utterances on its own device (the model moves there) and every
    process returns all of them, in the manifest's order (``distributed.map_in_order``; a row's output
    does not depend on its batch). ``precision``: of the decoder's products (``SlamModel.generate``).
    """
    import time

    from speechllm_redundancy.data.manifest import read_manifest, targets
    from speechllm_redundancy.distributed import map_in_order, process_device
    from speechllm_redundancy.features import cached_features
    from speechllm_redundancy.slam import DECODE_WIDTH

    batch_size = batch_size or DECODE_WIDTH
    utts = read_manifest(manifest_path)[: limit or None]
    refs = targets(utts, task, manifest_path)  # before encoding: a missing reference fails at once
    store = cached_features(model.config.encoder, manifest_path, whisper_window=model.config.whisper_window,
                            limit=limit or None, progress=progress)
    if (device := process_device()) is not None:
        model.to(device)
    start = time.perf_counter()

    def decode(share):  # each process loads the features of its share only
        return model.generate([store[u.id] for u in share], task, max_new_tokens=max_new_tokens,
                              batch_size=batch_size, progress=progress, precision=precision)

    hyps = map_in_order(decode, utts, cost=lambda u: u.duration)
    metric, value = score(task, refs, hyps)
    out = {"metric": metric, "score": value, "ids": [u.id for u in utts], "refs": refs, "hyps": hyps,
           "seconds": time.perf_counter() - start, "utterances": len(utts)}
    if task != "asr":
        out["chrf"] = chrf(refs, hyps)
    return out
