"""How far the CTC labels a pruned SLAM model's decoder reads drift when healing moves the projector under the
fixed CTC head (issue 14, item 7), and what that does to the CTC transcripts and to the healed model's WER.

Under the ``cpu`` recipe the decoder never reads projected frames: a CTC head, fixed after the warm start,
labels them and the decoder reads one vector per labelled segment (the labels' embeddings for a frozen
decoder, p·E for a LoRA one). Healing strategies ``projector`` and ``both`` train the projector (and any
soft prompt); the head stays as it was, so the segments and labels the decoder reads move with every step
unless the warm start's CTC loss is kept beside the next-token loss as an anchor (``--ctc-weights``; the
chapters heal with ``healing.CTC_ANCHOR``). This measures by how much, on the model, pruning point and
healing runs the chapters use:

  - the pruned block is the speech-derived path's at ``--fraction`` (``Study.speech_path``, as chapter 2);
  - healing is ``healing.heal`` with the chapter's settings (``Study.heal_config``, a step count per
    ``--steps``), in the directory ``sweep.walk_path`` uses, so a run chapter 2 made is loaded, not retrained;
  - per healing run, on the first ``--limit`` utterances of ``--split``: the fixed head's greedy CTC
    transcript (``training.CtcWarmup.transcribe``) from the original projector and from the healed one, each
    scored against the gold text (``evaluation.wer``); the share of utterances whose label sequence (what
    the decoder reads) changed; the token edit rate between the two label sequences (edits per original
    label token, through ``evaluation.wer`` on the token ids); the projector's relative weight change; and
    the healed model's WER (the walk's evaluator, ``sweep.manifest_evaluator``).
0 steps is the pruned model unhealed (whatever the strategy): its drift is zero by construction, a control.

    python benchmarks/healing_drift.py     # frozen SmolLM2-135M (default profile), 0.2, projector/both
    python benchmarks/healing_drift.py --strategies projector both decoder --steps 0 20 100 300
    python benchmarks/healing_drift.py --steps 20 --ctc-weights 0 1   # healing with the CTC loss as an anchor
    python benchmarks/healing_drift.py --tiny     # tiny random models, seconds (the test)

The trained model must be in the cache (``make book``, or chapter 1 alone: ``python -m speechllm_redundancy
book run --profile profiles/default.yaml --chapter 01``); the benchmark trains none unless
``--train-missing``. Healing runs it does train are cached like the chapters' (a rerun prints at once).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from speechllm_redundancy.cache import key_of
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.evaluation import wer
from speechllm_redundancy.healing import (INPUT_SIDE, STRATEGIES, heal, healing_config, prune_slam, reads_ctc_labels,
                                          strategy_config)
from speechllm_redundancy.layers import num_decoder_layers
from speechllm_redundancy.sweep import healing_dir, path_sizes

CHAPTER = "02_healing_dynamics"  # whose settings (healing steps, evaluation budget) the measurement takes


class Subject(NamedTuple):  # not a dataclass: the tests load this script without registering it as a module
    """What the measurement needs: from the chapters' cache (``study_subject``) or tiny (``tiny_subject``)."""

    name: str  # the model, in words
    model: object  # the trained, unpruned SlamModel (its CTC head is what every healed copy keeps)
    path: dict[int, int]  # the pruning path {n: l*(n)} the walks take
    heal_data: object  # training.TrainData: what healing trains on (the model's own training data)
    heal_config: Callable[[int], object]  # steps -> the healing TrainConfig
    heal_dir: Callable[[int, int, str, object], Path]  # (n, start, strategy, config) -> its healing run
    features: list[torch.Tensor]  # the test utterances' encoder frames
    refs: list[str]  # their gold transcripts
    evaluate: Callable[[object], float]  # SlamModel -> WER % on those utterances (greedy decoding)
    split: str  # where the test utterances come from, in words


# -- what the decoder reads -----------------------------------------------------------------------------
@torch.inference_mode()
def label_sequences(model, features: Sequence[torch.Tensor]) -> list[list[int]]:
    """The token ids of the CTC segments the decoder reads per utterance (``CtcHead.segment_tokens``, the
    segments ``compress`` forms). A frozen decoder reads these tokens' embeddings; a LoRA one reads p·E
    averaged over the same segments."""
    return model.ctc.segment_tokens(model.projector(features), model.llm.get_input_embeddings().weight)


def ctc_transcripts(model, features: Sequence[torch.Tensor]) -> list[str]:
    """The fixed head's greedy CTC transcripts through ``model``'s projector (the library's CTC decoding)."""
    from speechllm_redundancy.training import CtcWarmup

    model.eval()
    return CtcWarmup(model).transcribe(list(features))


def token_edit_rate(before: Sequence[Sequence[int]], after: Sequence[Sequence[int]]) -> float:
    """Token edits (substitutions + deletions + insertions) turning each ``before`` label sequence into its
    ``after``, per ``before`` token, in %: ``evaluation.wer`` over token ids as words, unnormalised."""
    as_words = lambda seqs: [" ".join(map(str, ids)) for ids in seqs]  # noqa: E731
    return wer(as_words(before), as_words(after), normalize=False)


def relative_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """‖θ_after − θ_before‖ / ‖θ_before‖ over a module's weights, in %."""
    diff = sum(float((after[k].float() - v.float()).pow(2).sum()) for k, v in before.items())
    norm = sum(float(v.float().pow(2).sum()) for v in before.values())
    return 100.0 * math.sqrt(diff / norm) if norm else 0.0


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())


# -- the measurement ------------------------------------------------------------------------------------
def measure(subject: Subject, fraction: float, strategies: Sequence[str], steps: Sequence[int],
            ctc_weights: Sequence[float] | None = None, prompt_lr: float | None = None,
            progress: bool = True) -> dict:
    """Prune the subject's model at ``fraction`` along its path; for each step count (0: unhealed, once) and
    strategy, heal and compare the fixed CTC head's labels and transcripts through the original and the
    healed projector. Strategies that train the projector run once per ``ctc_weights`` entry (None: the
    chapters' anchor, ``healing.CTC_ANCHOR``): the weight of the warm start's CTC loss kept beside the
    next-token loss (``TrainConfig.ctc_weight``), an anchor that limits how far the labels move; ``prompt_lr``
    (None: the healing run's rate) is their soft prompt's learning rate (``TrainConfig.prompt_lr``). Every
    run is keyed by the settings it trains with (``healing.strategy_config``), as the chapters key theirs.
    Returns dict(n, start, layers, unpruned, original, rows)."""
    model = subject.model
    model.eval()
    if not reads_ctc_labels(model):
        raise UserError(f"{subject.name} reads no CTC labels (ctc_compress off, or no CTC head): the drift "
                        "exists only for models of the cpu recipe (recipe: cpu).")
    layers = num_decoder_layers(model.llm)
    n = path_sizes(layers, [fraction])[0]
    if n not in subject.path:
        raise UserError(f"the pruning path has no block of {n} layers (it covers {sorted(subject.path)}).")
    start = subject.path[n]
    refs, feats = subject.refs, subject.features
    labels0, hyps0 = label_sequences(model, feats), ctc_transcripts(model, feats)
    projector0, ctc0 = _state(model.projector), _state(model.ctc)
    original = {"ctc_wer": wer(refs, hyps0), "segments": sum(map(len, labels0)) / len(labels0)}
    unpruned = subject.evaluate(model)
    weights = [None] if ctc_weights is None else list(dict.fromkeys(float(w) for w in ctc_weights)) or [None]
    runs = [(0, "none", None)] * (0 in steps) + [
        (s, st, w) for s in sorted(set(steps) - {0}) for st in strategies
        for w in (weights if st in INPUT_SIDE else [None])]
    rows = []
    for count, strategy, weight in tqdm(runs, desc="healing drift", disable=not progress):
        config = None
        if count:
            config = subject.heal_config(count)
            if strategy in INPUT_SIDE:
                config = replace(config, prompt_lr=prompt_lr, **({} if weight is None else {"ctc_weight": weight}))
            config = strategy_config(model, strategy, config)
            healed, result = heal(model, start, n, strategy, subject.heal_data, config,
                                  subject.heal_dir(n, start, strategy, config), progress=progress)
        else:  # the pruned model as it is (what strategy none walks)
            healed, result = prune_slam(model, start, n), None
        healed.eval()
        labels, ctc = label_sequences(healed, feats), _state(healed.ctc)
        rows.append({
            "strategy": strategy, "steps": count, "ctc_weight": config.ctc_weight if config else 0.0,
            "projector_change": relative_change(projector0, _state(healed.projector)),
            "ctc_head_fixed": _same(ctc0, ctc),
            "ctc_wer": wer(refs, ctc_transcripts(healed, feats)),
            "changed": 100.0 * sum(a != b for a, b in zip(labels0, labels)) / len(labels),
            "token_edits": token_edit_rate(labels0, labels),
            "segments": sum(map(len, labels)) / len(labels),
            "wer": subject.evaluate(healed),
            "minutes": result.minutes if result is not None else 0.0,
        })
        del healed
    return dict(n=n, start=start, layers=layers, unpruned=unpruned, original=original, rows=rows)


def report(subject: Subject, fraction: float, out: dict) -> list[str]:
    """The side-by-side table, then the one-line summary (last)."""
    o = out["original"]
    lines = [f"{subject.name}: {out['n']} of {out['layers']} decoder layers removed from layer "
             f"{out['start']} (fraction {fraction}, speech-derived path); {len(subject.refs)} utterances of "
             f"{subject.split}",
             f"unpruned: SLAM WER {out['unpruned']:.1f} %; original projector through the fixed CTC head: "
             f"CTC WER {o['ctc_wer']:.1f} %, {o['segments']:.1f} segments per utterance", "",
             f"{'strategy':>9} {'steps':>5} | {'projector Δ':>11} | {'CTC WER orig → healed':>21} | "
             f"{'labels changed':>14} | {'token edits':>11} | {'segments':>8} | {'SLAM WER':>8} | "
             f"{'heal min':>8}"]
    for r in out["rows"]:
        lines.append(f"{_strategy_name(r):>9} {r['steps']:>5} | {r['projector_change']:>9.2f} % | "
                     f"{o['ctc_wer']:>8.1f} → {r['ctc_wer']:>6.1f} % | {r['changed']:>12.0f} % | "
                     f"{r['token_edits']:>9.1f} % | {r['segments']:>8.1f} | {r['wer']:>6.1f} % | "
                     f"{r['minutes']:>8.1f}")
    healers = {"decoder", "both"} & {r["strategy"] for r in out["rows"]}
    if out["start"] + out["n"] == out["layers"] and healers:
        lines.append("the block ends at the last layer: no receiving layer, so decoder healing trains "
                     "nothing (both = projector)")
    moved = [r for r in out["rows"] if not r["ctc_head_fixed"]]
    if moved:
        lines.append("the CTC head changed during healing of "
                     + ", ".join(f"{_strategy_name(r)} {r['steps']}" for r in moved) + " (it should stay fixed)")
    if any(r["ctc_weight"] for r in out["rows"]):
        lines.append("+ctcW: the warm start's CTC loss (weight W) kept beside the next-token loss while healing")
    parts = [f"{_run_name(r)}: CTC WER {o['ctc_wer']:.1f}% -> {r['ctc_wer']:.1f}%, labels changed in "
             f"{r['changed']:.0f}% of utterances ({r['token_edits']:.1f}% token edits), "
             f"SLAM WER {r['wer']:.1f}%" for r in out["rows"]]
    lines += ["", "healing drift: " + "; ".join(parts)]
    return lines


def _strategy_name(row: dict) -> str:
    return f"{row['strategy']}+ctc{row['ctc_weight']:g}" if row["ctc_weight"] else row["strategy"]


def _run_name(row: dict) -> str:
    return f"{row['steps']} {_strategy_name(row)} steps" if row["steps"] else "unhealed"


# -- the subjects ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def refuse_training(what: str, fix: str):
    """Within: a training run that is not already finished in the cache (``training.train`` on a folder
    without result.json) raises a UserError naming ``what`` and ``fix`` instead of training."""
    from unittest import mock

    from speechllm_redundancy import training

    real = training.train

    def cached_only(*args, **kwargs):
        out_dir = Path(kwargs["out_dir"] if "out_dir" in kwargs else args[3])
        if not (out_dir / "result.json").exists():
            raise UserError(f"{what} is not in the cache ({out_dir} holds no finished run), and this "
                            f"benchmark trains none unless asked: {fix}")
        return real(*args, **kwargs)

    with mock.patch.object(training, "train", cached_only):
        yield


def study_subject(args) -> Subject:
    """The profile's frozen SLAM model of ``--llm`` as chapter 2 gets it (its settings, cache and path)."""
    from speechllm_redundancy.data.corpus import corpus_dir
    from speechllm_redundancy.data.manifest import read_manifest
    from speechllm_redundancy.experiments import Settings, Study
    from speechllm_redundancy.features import cached_features, features_dir
    from speechllm_redundancy.profiles import chapter_namespace, load_profile
    from speechllm_redundancy.sweep import manifest_evaluator

    profile = load_profile(args.profile)
    params = chapter_namespace(profile, CHAPTER)  # the notebook's defaults + the profile, as chapter 2
    settings = Settings.of(params)
    llm = args.llm or params.get("speech_llms", [None])[0]
    if llm is None:
        raise UserError(f"profile {profile.name} names no speech_llms for {CHAPTER}: pass --llm.")
    if settings.recipe != "cpu":
        raise UserError(f"profile {profile.name} trains recipe {settings.recipe!r}, whose decoders read the "
                        "projected frames, not CTC labels: the drift exists only under recipe cpu.")
    fix = (f"run chapter 1 first (`make book`, or `python -m speechllm_redundancy book run --profile "
           f"{profile.path} --chapter 01`), or pass --train-missing to train it here")
    if not args.train_missing and not (corpus_dir(dict(settings.corpus)) / "corpus.json").exists():
        raise UserError(f"the corpus of profile {profile.name} is not built (`make data`), so neither is its "
                        f"{llm} SLAM model: {fix}.")
    study = Study(settings)
    train_split = study.split("train")
    if not args.train_missing and not (features_dir(settings.encoder, train_split, settings.whisper_window)
                                       / "index.json").exists():
        raise UserError(f"the {settings.encoder} features of {train_split} are not in the cache, so neither "
                        f"is the {llm} SLAM model trained on them: {fix}.")
    guard = contextlib.nullcontext() if args.train_missing else refuse_training(
        f"the {llm} SLAM model of profile {profile.name}", fix + ".")
    with guard:
        run = study.slam(llm)
    path = study.speech_path(run)
    walk_dir = study.walk_dir(run)
    manifest = study.split(args.split)
    utts = read_manifest(manifest)[: args.limit]
    config = run.model.config
    store = cached_features(config.encoder, manifest, whisper_window=config.whisper_window, limit=args.limit,
                            progress=not args.quiet)
    feats = [store[u.id] for u in utts]
    evaluate = manifest_evaluator(study.manifests, "asr", limit=args.limit, progress=not args.quiet,
                                  max_new_tokens=args.max_new_tokens or settings.max_new_tokens)
    return Subject(
        name=f"{llm} ({run.variant}, {settings.recipe} recipe, profile {profile.name})", model=run.model,
        path=path, heal_data=run.data, heal_config=lambda steps: healing_config(steps, seed=settings.seed),
        heal_dir=lambda n, start, strategy, cfg: healing_dir(walk_dir, run.key, n, start, strategy, cfg,
                                                             run.data),
        features=feats, refs=[u.text for u in utts], evaluate=lambda m: evaluate(m, args.split),
        split=args.split)


# tiny: each character (and the space) a fixed random frame pattern held for 2 frames, so the CTC warm start
# learns to spell the byte tokenizer's tokens from them
TINY_WORDS = ("cat", "dog", "bird", "fish", "cow", "hen")
TINY_DIM = 16


def tiny_utterances(n: int, seed: int) -> list[tuple[torch.Tensor, str]]:
    """n utterances of 2–3 words: (frames (T, 16), transcript)."""
    g = torch.Generator().manual_seed(seed)
    chars = sorted(set("".join(TINY_WORDS)) | {" "})
    protos = {c: 2 * torch.randn(TINY_DIM, generator=torch.Generator().manual_seed(100 + i))
              for i, c in enumerate(chars)}
    out = []
    for i in range(n):
        text = " ".join(TINY_WORDS[j] for j in torch.randint(0, len(TINY_WORDS), (2 + i % 2,), generator=g))
        frames = torch.cat([protos[c] + 0.5 * torch.randn(2, TINY_DIM, generator=g) for c in text])
        out.append((frames, text))
    return out


def tiny_subject(args) -> Subject:
    """A tiny random Llama (4 layers, byte tokenizer) in the cpu recipe's frozen layout (hard CTC labels, 2
    soft-prompt vectors), its CTC warm start trained on toy words; the path measured on the test inputs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from slam_tiny import tiny_llm

    from speechllm_redundancy.angles import measure_angles
    from speechllm_redundancy.evaluation import score
    from speechllm_redundancy.paths import artifact_path
    from speechllm_redundancy.slam import RECOGNISER_PROMPTS, SlamConfig, SlamModel
    from speechllm_redundancy.training import Example, TrainConfig, TrainData, train

    llm, tok = tiny_llm(seed=1, layers=4)  # its path's 1-layer block is not the last: both adds LoRA
    config = SlamConfig(encoder="tiny", llm="tiny", encoder_dim=TINY_DIM, k=1, projector_hidden=32,
                        prompts=RECOGNISER_PROMPTS, prompt_vectors=2)
    torch.manual_seed(args.seed)
    model = SlamModel(config, llm, tok)
    data = TrainData([Example(f"t{i}", f.half(), "asr", text)
                      for i, (f, text) in enumerate(tiny_utterances(32, args.seed))],
                     f"tiny-drift-{args.seed}")
    warm = TrainConfig(steps=0, seed=args.seed, ctc_warmup_steps=args.tiny_ctc_steps, ctc_batch_size=8,
                       ctc_lr=3e-2, warmup_steps=3, log_every=1000, checkpoint_every=1000)
    folder = artifact_path("healing_drift", f"tiny-{key_of(warm.key(), data.fingerprint)}")
    train(model, data, warm, folder / "warm", progress=False)
    model.config.ctc_compress, model.config.ctc_embed = True, "hard"  # the cpu recipe's frozen model
    model.requires_grad_(False)
    model.eval()
    test = tiny_utterances(args.limit or 12, args.seed + 1)
    feats, refs = [f.half() for f, _ in test], [t for _, t in test]  # fp16, as the feature cache holds them
    with torch.inference_mode():
        batches = [model.embed_batch(feats[i : i + 8], "asr") for i in range(0, len(feats), 8)]
    path = measure_angles(model, batches, progress=False).optimal_path()

    def evaluate(m) -> float:
        return score("asr", refs, m.generate(feats, "asr", max_new_tokens=args.max_new_tokens or 16))[1]

    return Subject("tiny random Llama (hard CTC labels)", model, path, data,
                   lambda steps: healing_config(steps, seed=args.seed, batch_size=8, lr=args.tiny_lr),
                   lambda n, start, strategy, cfg: healing_dir(folder, "tiny", n, start, strategy, cfg, data),
                   feats, refs, evaluate, "toy words")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default",
                        help="profile whose cached model and chapter-2 settings are measured")
    parser.add_argument("--llm", help="decoder of the SLAM model (default: the profile's first speech_llms)")
    parser.add_argument("--fraction", type=float, default=0.2,
                        help="fraction of decoder layers pruned, rounded to whole layers (default 0.2)")
    parser.add_argument("--strategies", nargs="+", default=["projector", "both"],
                        choices=[s for s in STRATEGIES if s != "none"],
                        help="healing strategies (default: projector both; decoder is a control: the "
                             "projector stays; none is --steps 0)")
    parser.add_argument("--steps", nargs="+", type=int,
                        help="healing steps, 0 = pruned and unhealed (default: 0, the profile's "
                             "healing_steps, 100; with --tiny 0 3 10)")
    parser.add_argument("--ctc-weights", nargs="+", type=float,
                        help="weights of the warm start's CTC loss kept beside the next-token loss while "
                             "healing the projector (projector, both), one run each (default: the chapters' "
                             "anchor, healing.CTC_ANCHOR); e.g. 0 1 compares no anchor with the anchor")
    parser.add_argument("--prompt-lr", type=float,
                        help="learning rate of the soft prompt while healing the projector (default: the "
                             "healing run's own, as the chapters heal)")
    parser.add_argument("--split", default="test-clean", help="corpus split of the test utterances")
    parser.add_argument("--limit", type=int, help="test utterances (default 64; 12 with --tiny)")
    parser.add_argument("--max-new-tokens", type=int,
                        help="cap per decoded output (default: the profile's chapter-2 one; 16 with --tiny)")
    parser.add_argument("--train-missing", action="store_true",
                        help="train the SLAM model if it is not cached (default: fail, naming what to run)")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default 2; 1 with --tiny: a tiny model gains nothing from a "
                             "second, which spins on a busy CPU)")
    parser.add_argument("--seed", type=int, default=0, help="--tiny only: the tiny models' and data's seed")
    parser.add_argument("--tiny", action="store_true", help="tiny random models, seconds (the test)")
    parser.add_argument("--tiny-ctc-steps", type=int, default=60, help="--tiny only: CTC warm-start steps")
    parser.add_argument("--tiny-lr", type=float, default=5e-3, help="--tiny only: healing learning rate")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or (1 if args.tiny else 2))
    if any(s < 0 for s in args.steps or []):
        parser.error("--steps: use whole numbers ≥ 0")
    if any(not (w >= 0 and math.isfinite(w)) for w in args.ctc_weights or []):
        parser.error("--ctc-weights: use numbers ≥ 0 (0: no CTC loss beside the next-token loss)")
    if args.prompt_lr is not None and not (args.prompt_lr > 0 and math.isfinite(args.prompt_lr)):
        parser.error("--prompt-lr: use a positive learning rate")
    try:
        if args.tiny:
            subject = tiny_subject(args)
            steps = args.steps if args.steps is not None else [0, 3, 10]
        else:
            args.limit = args.limit or 64
            subject = study_subject(args)
            from speechllm_redundancy.experiments import Settings
            from speechllm_redundancy.profiles import load_profile

            default = Settings.of(load_profile(args.profile).parameters(CHAPTER)).healing_steps
            steps = args.steps if args.steps is not None else [0, default, 100]
        out = measure(subject, args.fraction, args.strategies, steps, args.ctc_weights, args.prompt_lr,
                      progress=not args.quiet)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(report(subject, args.fraction, out)))
    return 1 if any(not r["ctc_head_fixed"] for r in out["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
