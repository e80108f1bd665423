"""Walking the pruning path: prune n = 1, 2, … layers at l*(n), heal, evaluate every set, find the threshold.

Every point (one n, one healing strategy) is cached as a small JSON file keyed by everything it depends
on, so an interrupted walk resumes and chapters share points. The removable fraction is the paper's
Table 1 number: the largest n/L whose relative change stays within the threshold on *every* set at once.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pandas as pd
from tqdm.auto import tqdm

from speechllm_redundancy.angles import AngleMatrix
from speechllm_redundancy.cache import key_of
from speechllm_redundancy.distributed import cached_json_together
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.evaluation import (ASR_THRESHOLD, AST_THRESHOLD, relative_change,
                                             removable_fraction)
from speechllm_redundancy.healing import HEALING_INIT, check_strategy, heal, strategy_config, trains_something
from speechllm_redundancy.layers import num_decoder_layers
from speechllm_redundancy.pruning import PATH_SAMPLES
from speechllm_redundancy.slam import DECODING_RULE


def manifest_evaluator(manifests: Mapping[str, str | os.PathLike], task: str = "asr",
                       limit: int | None = None, max_new_tokens: int | None = None,
                       progress: bool = True, precision: str = "auto") -> Callable:
    """``evaluate(model, set_name) -> score`` by greedy decoding of a manifest (WER for ASR, BLEU for AST).

    ``limit`` decodes the first N utterances of each set; ``max_new_tokens`` caps every output (None: the
    decoder's default) — both bound the cost of a walk, so put them in the walk's ``key``. ``progress``
    shows a bar over each set's utterances (decoding is most of a walk's time). ``precision``: of the
    decoder's products (``SlamModel.generate``); ``evaluate.decoding_rule(model)`` names the rule and the
    precision it resolves to for ``model``, which ``walk_path`` puts in each point's key.
    """
    from speechllm_redundancy.decoding import resolve_decode_precision
    from speechllm_redundancy.evaluation import evaluate_slam

    if limit is not None and limit < 1 or max_new_tokens is not None and max_new_tokens < 1:
        raise UserError(f"limit={limit}, max_new_tokens={max_new_tokens}: use positive numbers (or None for all).")
    resolve_decode_precision(precision)  # a bad name fails here, before any walk starts
    extra = {} if max_new_tokens is None else {"max_new_tokens": int(max_new_tokens)}

    def evaluate(model, name: str) -> float:
        if name not in manifests:
            raise UserError(f"no manifest for evaluation set {name!r}: use one of {', '.join(manifests)}.")
        return evaluate_slam(model, manifests[name], task, limit=limit, progress=progress, precision=precision,
                             **extra)["score"]

    evaluate.decoding_rule = lambda model: decoding_rule(precision, model)
    return evaluate


def decoding_rule(precision: str, model) -> str:
    """``slam.DECODING_RULE`` and, where ``precision`` resolves to bf16 for ``model`` on the device it will
    decode on, that its products are bf16 (fp32 keeps the rule, and the points, of before)."""
    from speechllm_redundancy.decoding import resolve_decode_precision
    from speechllm_redundancy.distributed import process_device

    resolved = resolve_decode_precision(precision, process_device() or model.device)
    return DECODING_RULE if resolved == "fp32" else f"{DECODING_RULE}; {resolved} products"


def path_sizes(num_layers: int, fractions: Sequence[float] | None = None, max_fraction: float = 0.5) -> list[int]:
    """The block sizes n to walk: round(f·L) for each of ``fractions`` (kept within 1 … L-1, deduplicated),
    or, without fractions, every n = 1 … ⌈max_fraction·L⌉ (the paper walks every level)."""
    if num_layers < 2:
        raise UserError(f"a {num_layers}-layer decoder has no block to prune: use a decoder with at least 2 layers.")
    if fractions is None:
        if not 0 < max_fraction < 1:
            raise UserError(f"max_fraction={max_fraction}: use a fraction strictly between 0 and 1.")
        return list(range(1, min(num_layers - 1, math.ceil(max_fraction * num_layers)) + 1))
    bad = [f for f in fractions if not 0 < f < 1]
    if bad or not fractions:
        raise UserError(f"pruned fractions {list(fractions)}: give fractions strictly between 0 and 1 "
                        "(the unpruned baseline is always included).")
    return sorted({min(num_layers - 1, max(1, round(f * num_layers))) for f in fractions})


def speech_angles(slam, manifest: str | os.PathLike, key: str, limit: int | None = PATH_SAMPLES, task: str = "asr",
                  progress: bool = True, gold_text: bool = False) -> AngleMatrix:
    """D(l, n) of a trained SLAM model on its own inputs (speech of the first ``limit`` utterances of
    ``manifest`` + the ``task`` prompt): the matrix whose optimal path the walks prune along. Cached under
    the model's ``key``, the task, the manifest's bytes and ``limit``.

    ``gold_text``: the control — the same model, layout and read position with each utterance's transcript
    (token embeddings) in place of its speech (``angles.GoldTextBatches``).

    ``slam`` may also be a function that builds the model, called only when the matrix is not cached (a
    control model that costs a decoder load to build, ``Study.untrained_speech_angles``)."""
    from torch import nn

    from speechllm_redundancy.angles import GoldTextBatches, SpeechBatches, cached_angles, measure_angles
    from speechllm_redundancy.cache import file_sha256
    from speechllm_redundancy.paths import artifact_path

    name = key_of(key, task, file_sha256(manifest), limit)
    path = artifact_path("angles", f"{'gold' if gold_text else 'speech'}-{task}-{name}.json")
    batches = GoldTextBatches if gold_text else SpeechBatches

    def compute():
        model = slam if isinstance(slam, nn.Module) else slam()
        return measure_angles(model, batches(model, manifest, task=task, limit=limit), progress=progress)

    return cached_angles(path, compute)


def text_angles(llm: str, sentences: Sequence[str], device: str = "cpu", progress: bool = True) -> AngleMatrix:
    """D(l, n) of the LLM ``llm`` (zoo name / path / hub id) fed ``sentences`` as plain text (cached): the
    text-derived path. Shares its cache with chapter 1's text-only maps of the same sentences."""
    from speechllm_redundancy.angles import cached_angles, measure_angles, text_batches
    from speechllm_redundancy.paths import artifact_path
    from speechllm_redundancy.zoo import load_causal_lm

    if not sentences:
        raise UserError("no sentences to measure text angles on: pass at least one.")

    def compute():
        model, tokenizer = load_causal_lm(llm)
        return measure_angles(model.to(device), text_batches(tokenizer, list(sentences)), progress=progress)

    return cached_angles(artifact_path("angles", f"text-{key_of(llm, list(sentences))}.json"), compute)


def walk_cache_dir(task: str, model_key: str) -> Path:
    """The folder of one trained model's walks (``model_key``, of a ``task`` model): their points and healing
    runs (``healing_dir``), shared by the chapters (``Study.walk_dir``) and ``slam heal|walk``."""
    from speechllm_redundancy.paths import artifact_path

    return artifact_path("sweeps", f"{task}-{model_key}")


def healing_dir(out_dir: str | os.PathLike, model_key: str, n: int, start: int, strategy: str, heal_config,
                heal_data) -> Path:
    """Where a walk in ``out_dir`` heals its point (n layers from ``start``, ``strategy``): keyed by the model
    (``model_key``), the block and the healing's settings and data only — not by what the point evaluates,
    so walks that decode other utterances or caps reuse the healed model instead of training it again."""
    key = key_of(model_key, n, start, strategy, heal_config and heal_config.key(),
                 getattr(heal_data, "fingerprint", None), HEALING_INIT)
    return Path(out_dir) / f"heal-n{n}-{strategy}-{key}"


def walk_path(slam, path: Mapping[int, int], sizes: Sequence[int], eval_sets: Sequence[str],
              evaluate: Callable, out_dir: str | os.PathLike, strategy: str = "none", heal_data=None,
              heal_config=None, key: str = "", model_key: str | None = None,
              progress: bool = True) -> pd.DataFrame:
    """Prune ``slam`` along ``path`` ({n: l*(n)}) for each n in ``sizes`` (0 = the unpruned baseline, always
    included), heal with ``strategy``, score every set with ``evaluate(model, set_name)``.

    ``key`` names the trained model and evaluation data (e.g. a run directory's key and the decoding
    budget): it is part of every point's cache key, with ``evaluate.decoding_rule(slam)`` where ``evaluate``
    has one (``manifest_evaluator``'s: the decoding rule and precision; else ``slam.DECODING_RULE``). ``model_key`` names the trained model alone (default
    ``key``): the healing runs are keyed by it (``healing_dir``). A point where ``strategy`` trains nothing
    (``healing.trains_something``) is the unhealed model: it shares strategy none's point, scored once.
    Under ``accelerate launch`` every process walks: each heals a replica and decodes its share of every set,
    and the first process alone reads and writes the points (``distributed.cached_json_together``).
    Returns a long frame: n, start, fraction, set, score, delta.
    """
    check_strategy(strategy)
    if strategy != "none" and (heal_data is None or heal_config is None):
        raise UserError(f"healing strategy {strategy!r} needs heal_data and heal_config (or use strategy='none').")
    num_layers = num_decoder_layers(slam.llm)
    bad = [n for n in sizes if n and (n not in path or not 0 < n < num_layers)]
    if bad:
        raise UserError(f"pruning sizes {bad} are not on the path (it covers n = {min(path)}…{max(path)} of a "
                        f"{num_layers}-layer decoder): pass sizes from the path.")
    out_dir = Path(out_dir)
    rule = evaluate.decoding_rule(slam) if hasattr(evaluate, "decoding_rule") else DECODING_RULE
    rows = []
    for n in tqdm(sorted({0, *sizes}), desc=f"pruning path ({strategy})", disable=not progress):
        start = path.get(n, 0) if n else 0
        # a point that trains nothing (the unpruned baseline; decoder healing of a block ending at the last
        # layer; no steps) scores the same model as strategy none: every walk shares none's point
        healed = trains_something(strategy, start, n, num_layers, heal_config)
        point_strategy = strategy if healed else "none"
        config = strategy_config(slam, strategy, heal_config) if healed else heal_config  # what the run trains with
        healing_keys = ((config.key(), getattr(heal_data, "fingerprint", None), HEALING_INIT) if healed
                        else (None,) * 2)
        point_key = key_of(key, n, start, point_strategy, *healing_keys, list(eval_sets), rule)

        def compute(n=n, start=start, point_strategy=point_strategy, config=config):
            model = slam
            if n:
                model, _ = heal(slam, start, n, point_strategy, heal_data, config,
                                healing_dir(out_dir, key if model_key is None else model_key, n, start,
                                            point_strategy, config, heal_data), progress=progress)
            return {"n": n, "start": start, "scores": {name: float(evaluate(model, name)) for name in eval_sets}}

        point = cached_json_together(out_dir / f"point-n{n}-{point_strategy}-{point_key}.json", compute)
        rows += [{"n": n, "start": point["start"], "fraction": n / num_layers, "set": name, "score": s}
                 for name, s in point["scores"].items()]
    frame = pd.DataFrame(rows)
    base = baseline_scores(frame)
    frame["delta"] = [relative_change(s, base[str(name)]) for s, name in zip(frame.score, frame.set)]
    frame["strategy"] = strategy
    return frame


def chance_scores(manifests: Mapping[str, str | os.PathLike], eval_sets: Sequence[str], task: str = "asr",
                  limit: int | None = None) -> dict[str, float]:
    """``evaluation.chance_score`` of each set's first ``limit`` references (those the walks decode)."""
    from speechllm_redundancy.data.manifest import read_manifest, targets
    from speechllm_redundancy.evaluation import chance_score

    refs = {name: targets(read_manifest(manifests[name])[: limit or None], task, manifests[name])
            for name in eval_sets}
    return {name: chance_score(r, task) for name, r in refs.items()}


def baseline_scores(frame: pd.DataFrame) -> dict[str, float]:
    """The unpruned model's score on each set of a walk (its n = 0 rows)."""
    base = frame[frame.n == 0]
    return {str(name): float(s) for name, s in zip(base.set, base.score)}


def working_levels(frame: pd.DataFrame, chance: Mapping[str, float], task: str = "asr") -> list[int]:
    """The pruned block sizes n (> 0) of ``frame`` (walks with a ``strategy`` column, the study's evaluation
    sets) at which some strategy's model still beats chance on every set: where none does, every model at
    that level is broken, and ranking their relative changes says nothing about healing."""
    from speechllm_redundancy.evaluation import no_better_than_chance

    levels = []
    for n, level in frame[frame.n > 0].groupby("n"):
        if any(not no_better_than_chance(dict(zip(g.set, g.score)), chance, task)
               for _, g in level.groupby("strategy")):
            levels.append(int(n))
    return levels


def removable(frame: pd.DataFrame, num_layers: int, task: str = "asr") -> float:
    """Largest n/L acceptable on every set at once (ASR: ΔWER ≤ +25 %; AST: ΔBLEU ≥ −10 %)."""
    points = {int(n): dict(zip(g.set, g.score)) for n, g in frame.groupby("n")}
    if task == "asr":
        return removable_fraction(points, num_layers, ASR_THRESHOLD, higher_is_better=False)
    return removable_fraction(points, num_layers, AST_THRESHOLD, higher_is_better=True)
