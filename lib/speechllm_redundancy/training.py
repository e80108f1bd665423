"""One training loop for every SLAM variant: projector only, projector + LoRA, and post-pruning healing.

What trains is whatever ``requires_grad`` on the model (the caller freezes/unfreezes); the loop does
AdamW, gradient clipping, linear warmup then linear warmdown to zero, optional bf16 autocast, gradient
accumulation, a checkpoint every N steps and exact resume after an interruption, through accelerate (so
``accelerate launch`` spreads the same loop over GPUs).

Under ``accelerate launch --num_processes N`` (data parallel: a replica per process, gradients averaged by
DDP) each process takes every N-th example of a batch (``distributed.shard``), and its loss is its part of
the *batch's* mean (``_mean_part``: its token losses over the token count of all processes), so N
processes take the step one process takes with the same batch, up to float rounding. SpecAugment masks
are drawn for the whole batch by every process, so they match too. Dropout masks do not (each process
draws them for its own examples): with dropout, N processes train an equally valid but different model.
Launched with an FSDP configuration (profiles/accelerate/fsdp-*.yaml) each process holds a shard of every
weight instead (FSDP2); the steps are the same, checkpoints and the final model are gathered whole, and what
needs a whole model between steps is refused before the first one (``_check_engine``).

Exact resume: the examples of step s and every random draw in it (SpecAugment masks, dropout) are
derived from (seed, phase, s) alone, so a run stopped after k steps and resumed from its checkpoint
ends with the same parameters as one that never stopped.

Three layers, each cached through the one below: ``trained_slam`` is the entry point (the model of a
recipe's settings: what chapters and experiments ask for), ``train_from_configs`` trains explicit
``SlamConfig`` + ``TrainConfig`` (the ``slam train`` CLI, the benchmarks) and ``train`` is the loop on a
model and data (healing calls it directly).

Optional CTC warm start (``ctc_warmup_steps``): before the SLAM loss, the projector is trained with CTC
against the LLM's frozen token-embedding matrix (logit of token v at a frame = scale · ⟨proj(frame), E_v⟩,
plus a learned blank). That teaches the projector to place speech near the embeddings of the spoken
tokens — cheap (no LLM forward) and it makes projector-only training converge on a CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechllm_redundancy.cache import (atomic_path, atomic_write_json, entry_lock, key_of, read_verified,
                                        verify_entry)
from speechllm_redundancy.distributed import shard
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.slam import FORMAT_VERSION as SAVED_FORMAT, RECOGNISER_PROMPTS

# fields that change how a run is logged or paced, not what it computes
_NOT_IN_KEY = ("checkpoint_every", "log_every")


@dataclass
class TrainConfig:
    steps: int = 1000  # optimiser steps with the SLAM (next-token) loss
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 50
    grad_clip: float = 1.0
    mixed_precision: str = "auto"  # "auto" (bf16 where it is faster: GPUs with bf16), "no", "bf16"
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    bucket: int = 16  # batches drawn from groups of bucket×batch_size examples sorted by length (0 = off)
    # SpecAugment-style masking of the encoder frames (training only)
    time_masks: int = 0
    time_mask_width: int = 10
    feature_masks: int = 0
    feature_mask_width: int = 32
    # CTC warm start of the projector against the frozen token embeddings
    ctc_warmup_steps: int = 0
    ctc_lr: float = 2e-3
    ctc_batch_size: int = 16
    ctc_weight: float = 0.0  # CTC loss kept beside the next-token loss afterwards (holds the compression in place)
    freeze_projector: bool = False  # next-token phase trains only the adapters (the warm start's projector stays)
    prompt_lr: float | None = None  # the soft prompt's learning rate (SlamConfig.prompt_vectors; None: lr)
    max_minutes: float | None = None  # stop (and save) once this much training time has passed

    def key(self) -> str:
        return key_of({k: v for k, v in asdict(self).items() if k not in _NOT_IN_KEY})


@dataclass
class Example:
    """One training/evaluation item: encoder frames, the task prompt and the target text."""

    id: str
    features: torch.Tensor
    prompt: str
    target: str
    ctc_target: str | None = None  # what the CTC warm start spells (None: ``target``)


@dataclass
class TrainData:
    examples: list[Example]
    fingerprint: str  # identifies the data for the result cache (features key + targets)

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class TrainResult:
    out_dir: Path
    history: list[dict] = field(default_factory=list)  # {phase, step, loss, lr, minutes, [eval…]}
    minutes: float = 0.0
    steps: dict = field(default_factory=dict)  # phase → steps done
    data: TrainData | None = None  # what it trained on (set by train_from_configs: healing runs reuse it)
    warm_start: "TrainResult | None" = None  # the shared CTC warm start it began from (trained_slam, cpu recipe)

    @property
    def total_minutes(self) -> float:
        """Training minutes including the warm start (which other models may share)."""
        return self.minutes + (self.warm_start.minutes if self.warm_start else 0.0)

    @property
    def key(self) -> str:
        """Names the trained model for caches downstream (angles, pruning walks): the run directory's name,
        which for runs in the shared cache is the hash of (model config, training config, data)."""
        return self.out_dir.name


def make_data(store, utterances, task: str = "asr",
              source: str | os.PathLike = "the training utterances") -> TrainData:
    """Pair cached features with their targets: the transcript for ``asr``, the translation for ``ast-*``
    (``source`` names where the utterances came from in the error for a missing one).

    A translation example's CTC warm start spells the *source* transcript: CTC aligns monotonically, which
    speech and its own words do and speech and a translation do not; the LLM then translates what it reads.
    """
    from speechllm_redundancy.data.manifest import targets

    examples = [Example(u.id, store[u.id], task, target, None if task == "asr" else u.text)
                for u, target in zip(utterances, targets(utterances, task, source))]
    pairs = [(e.id, e.target) if e.ctc_target is None else (e.id, e.target, e.ctc_target) for e in examples]
    fp = key_of(getattr(store, "directory", None) and str(store.directory), task, pairs)
    return TrainData(examples, fp)


# -- pieces ---------------------------------------------------------------------------------------------
def resolve_mixed_precision(choice: str, device: torch.device | str) -> str:
    """"auto": bf16 where the hardware computes it natively — CUDA GPUs that support it, and CPUs with
    AVX512-BF16 or AMX (measured on such a 2-core CPU: a SmolLM2-135M training step 1.55× faster, a
    Qwen2.5-0.5B one 1.6×); "no" elsewhere (emulated bf16 is slower than float32)."""
    if choice not in ("auto", "no", "bf16"):
        raise UserError(f"mixed_precision={choice!r}: use auto, no or bf16.")
    if choice != "auto":
        return choice
    if str(device).startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_native_bf16() else "no"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU advertises bf16 arithmetic (Linux /proc/cpuinfo flags avx512_bf16 or amx_bf16)."""
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def mask_spans(t: int, d: int, gen: torch.Generator, cfg: TrainConfig) -> tuple[list, list]:
    """SpecAugment's (start, width) spans for a (t, d) input, drawn from ``gen``: ``time_masks`` spans of
    ≤ time_mask_width frames, then ``feature_masks`` spans of ≤ feature_mask_width channels, to be zeroed."""
    time = _spans(cfg.time_masks, cfg.time_mask_width, t, gen)
    return time, _spans(cfg.feature_masks, cfg.feature_mask_width, d, gen)


def _spans(count: int, width: int, size: int, gen: torch.Generator) -> list[tuple[int, int]]:
    out = []
    for _ in range(count):
        w = int(torch.randint(0, width + 1, (1,), generator=gen))
        out.append((int(torch.randint(0, max(1, size - w + 1), (1,), generator=gen)), w))
    return out


def _masked(frames: torch.Tensor, spans: tuple[list, list]) -> torch.Tensor:
    x = frames.float().clone()
    for s, w in spans[0]:
        x[s : s + w] = 0
    for s, w in spans[1]:
        x[:, s : s + w] = 0
    return x


def _features_of(examples: Sequence[Example], batch: Sequence[int], mine: Sequence[int], gen: torch.Generator,
                 cfg: TrainConfig) -> list[torch.Tensor]:
    """The frames of this process's examples, SpecAugment-masked if asked. Every process draws the masks of
    the whole batch, in its order, so an example gets the masks it gets when one process trains."""
    if not (cfg.time_masks or cfg.feature_masks):
        return [examples[i].features.float() for i in mine]
    spans = {i: mask_spans(*examples[i].features.shape, gen, cfg) for i in batch}
    return [_masked(examples[i].features, spans[i]) for i in mine]


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup to the peak, then linear warmdown to zero at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


class BatchPlan:
    """Which examples form micro-batch j: per-epoch permutations seeded by (seed, phase, epoch); with
    ``bucket`` the permutation is cut into groups sorted by length so batches need little padding."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, phase: int, bucket: int):
        self.lengths, self.b, self.seed, self.phase, self.bucket = np.asarray(lengths), batch_size, seed, phase, bucket
        self._epochs: dict[int, list[list[int]]] = {}

    def _epoch(self, e: int) -> list[list[int]]:
        if e not in self._epochs:
            rng = np.random.default_rng([self.seed, self.phase, e])
            perm = rng.permutation(len(self.lengths))
            group = self.b * self.bucket if self.bucket else len(perm)
            batches = []
            for g in range(0, len(perm), group):
                chunk = perm[g : g + group]
                if self.bucket:
                    chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches += [chunk[i : i + self.b].tolist() for i in range(0, len(chunk), self.b)]
            if self.bucket:
                batches = [batches[i] for i in rng.permutation(len(batches))]
            self._epochs = {e: batches}  # keep one epoch in memory
        return self._epochs[e]

    def batch(self, j: int) -> list[int]:
        per_epoch = math.ceil(len(self.lengths) / self.b)
        return self._epoch(j // per_epoch)[j % per_epoch]


class CtcWarmup(nn.Module):
    """The CTC loss of the projector through the model's CTC head (``slam.CtcHead``)."""

    def __init__(self, slam):
        super().__init__()
        # only what the CTC loss trains is a submodule: DDP must not wait for gradients of a soft prompt or
        # adapters this loss never reaches; the decoder's embedding table is read through ``slam``
        self.projector, self.ctc = slam.projector, slam.ctc
        object.__setattr__(self, "slam", slam)
        self.remap = {int(t): i for i, t in enumerate(slam.ctc.vocab.tolist())}

    def forward(self, features, targets: Sequence[list[int]]) -> dict:
        """dict(loss = the batch mean of each utterance's CTC loss per target token (``F.ctc_loss``'s
        "mean"), example_loss (B,) those per-utterance terms, example_tokens (B,) ones: their weights)."""
        proj = self.projector(features)
        x = nn.utils.rnn.pad_sequence(proj, batch_first=True)
        logits = self.ctc.logits(x, self.slam.llm.get_input_embeddings().weight)
        logp = F.log_softmax(logits.float(), -1).transpose(0, 1)
        tgt = [torch.tensor([self.remap[t] for t in ids if t in self.remap], dtype=torch.long) for ids in targets]
        lengths = torch.tensor([len(t) for t in tgt])
        frames = torch.tensor([p.shape[0] for p in proj])
        losses = F.ctc_loss(logp, torch.cat(tgt).to(x.device), frames, lengths, blank=self.ctc.blank_id,
                            reduction="none", zero_infinity=True)
        terms = losses / lengths.clamp(min=1).to(losses)
        return {"loss": terms.mean(), "example_loss": terms, "example_tokens": torch.ones_like(terms)}

    @torch.no_grad()
    def transcribe(self, features) -> list[str]:
        """Greedy CTC transcripts (collapse repeats, drop blanks): how far the warm start alone gets."""
        ctc, emb = self.slam.ctc, self.slam.llm.get_input_embeddings().weight
        out = []
        for p in self.slam.projector(features):
            best = ctc.labels(p, emb).tolist()
            ids = [int(ctc.vocab[b]) for i, b in enumerate(best) if b != ctc.blank_id and (i == 0 or b != best[i - 1])]
            out.append(self.slam.tokenizer.decode(ids).strip())
        return out


# -- the loop -------------------------------------------------------------------------------------------
def train(model, data: TrainData, cfg: TrainConfig, out_dir: str | os.PathLike,
          evaluate: Callable[[object], dict] | None = None, eval_every: int = 0, progress: bool = True,
          stop_after: int | None = None, evaluate_ctc: Callable[[CtcWarmup], dict] | None = None) -> TrainResult:
    """Train ``model`` (a SlamModel) on ``data``; checkpoints and the final model go to ``out_dir``.

    A finished ``out_dir`` (result.json present) is a cache hit: its weights are loaded into ``model``.
    An unfinished one with a checkpoint resumes. ``evaluate(model) -> dict`` runs every ``eval_every``
    steps and at the end; its time is not counted as training time. ``stop_after`` (testing) stops the
    process after that many steps in total, as an interruption would.

    result.json, the final model and the checkpoint are sealed (``cache``: size + sha256 recorded at write
    time); a damaged one is refused with a ``UserError`` naming the file (retraining is not a silent cost).
    A second run on the same ``out_dir`` waits for the first (``cache.entry_lock``), then takes its result.
    """
    from accelerate import Accelerator

    out_dir = Path(out_dir)
    device_cpu = not torch.cuda.is_available()
    precision = resolve_mixed_precision(cfg.mixed_precision, "cpu" if device_cpu else "cuda")
    _allow_precision(precision)
    accelerator = Accelerator(cpu=device_cpu, mixed_precision=precision)
    if _sharded(accelerator) and precision == "bf16":
        _shard_precision(accelerator)
    hooks = _Hooks(evaluate, eval_every, evaluate_ctc, progress and accelerator.is_main_process, stop_after)
    # Under `accelerate launch` only the main process takes the lock (the processes of one run must not
    # exclude each other); the others wait at the barrier, so all decide (hit, resume, fresh) on one state.
    with entry_lock(out_dir) if accelerator.is_main_process else contextlib.nullcontext():
        accelerator.wait_for_everyone()
        return _train(accelerator, model, data, cfg, out_dir, hooks)


def _train(accelerator, model, data: TrainData, cfg: TrainConfig, out_dir: Path, hooks: _Hooks) -> TrainResult:
    """The loop: a cache hit returns at once; otherwise each phase (CTC warm start, then next-token) is set up
    or resumed, stepped to its end or the time budget, and checkpointed; the final model is saved."""
    from tqdm.auto import tqdm

    run_key = key_of(cfg.key(), data.fingerprint)
    model.to(accelerator.device)  # a cache hit lands where a fresh run would
    if (out_dir / "result.json").exists():
        return _cached_result(model, out_dir, run_key)
    if len(data) == 0:
        raise UserError("no training examples: check the manifest and the task.")
    _check_engine(accelerator, cfg, hooks)
    run = _RunState.resume(out_dir / "checkpoint", run_key)
    for index, (name, n_steps) in enumerate([("ctc", cfg.ctc_warmup_steps), ("slam", cfg.steps)]):
        if n_steps <= 0 or run.out_of_time:
            continue
        resuming = run.resumes(name)
        if resuming:
            _restore_params(model, run.checkpoint)
        done = run.steps.get(name, 0)
        if done >= n_steps:
            continue
        phase = _set_up_phase(accelerator, model, data.examples, cfg, index, name, n_steps,
                              run.checkpoint if resuming else None)
        model.train()
        with tqdm(total=n_steps, initial=done, desc=f"train {name}", disable=not hooks.progress) as bar:
            while done < n_steps:
                t0 = time.perf_counter()
                loss = _step(accelerator, phase, cfg, done)
                done += 1
                run.record(name, done, loss, phase.scheduler.get_last_lr()[0], time.perf_counter() - t0,
                           log=done % cfg.log_every == 0 or done == n_steps)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                run.out_of_time = _out_of_time(accelerator, cfg, run.elapsed)
                finishing = done == n_steps or run.out_of_time
                hooks.after_step(model, run, name, finishing)
                if done % cfg.checkpoint_every == 0 or finishing:
                    _save_checkpoint(accelerator, run, model, phase)
                hooks.stop_if_asked(run)
                if run.out_of_time:
                    break
        if name == "ctc" and done == n_steps:
            hooks.after_warm_start(model, phase.module, run)
    return _save_final(accelerator, model, cfg, out_dir, run)


def _allow_precision(precision: str) -> None:
    """accelerate keeps one mixed-precision setting per process; a single process (a notebook, a benchmark)
    may train runs of different settings one after another, so its state is reset between them. Under
    ``accelerate launch`` the launcher's setting stands and a different one is accelerate's error."""
    from accelerate.state import AcceleratorState

    if not AcceleratorState._shared_state:
        return
    state = AcceleratorState()
    if state.num_processes == 1 and str(state.mixed_precision) != precision:
        AcceleratorState._reset_state(reset_partial_state=True)


def _sharded(accelerator) -> bool:
    """Whether the launch shards the model across its processes (FSDP: ``--config_file
    profiles/accelerate/fsdp-*.yaml``): each process then holds a part of every parameter, as a DTensor."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def _shard_precision(accelerator) -> None:
    """bf16 under FSDP as under plain data parallel with autocast: the decoder's weights are gathered and
    multiplied in bf16, while gradients are averaged across processes and the loss returned in float32
    (accelerate's default policy for a bf16 launch reduces and returns in bf16; a launch configuration
    cannot say otherwise). The trained weights and AdamW keep float32 copies either way."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    accelerator.state.fsdp_plugin.mixed_precision_policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def _check_engine(accelerator, cfg: TrainConfig, hooks: "_Hooks") -> None:
    """Refuse, before the first step, what this loop cannot run the way the launch distributes it. Under FSDP
    no process holds a whole model between steps: decoding during training (each process its own
    utterances, a different number of decoder calls in each) would leave the processes waiting for each
    other, and the CTC warm start trains a second module over the projector, which FSDP cannot shard twice."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise UserError("DeepSpeed is not supported by this training loop: launch with --multi_gpu (a whole model per "
                        "GPU) or with --config_file profiles/accelerate/fsdp-qwen2.yaml or fsdp-llama.yaml (FSDP2).")
    if not _sharded(accelerator):
        return
    if not accelerator.is_fsdp2:
        raise UserError("FSDP version 1 flattens the decoder's weights into shards this loop's checkpoints cannot "
                        "read: set fsdp_version: 2 in the launch configuration (as profiles/accelerate/fsdp-*.yaml do).")
    if cfg.ctc_warmup_steps or cfg.ctc_weight:
        raise UserError("the CTC warm start (ctc_warmup_steps, ctc_weight: the cpu recipe) does not run under FSDP: "
                        "train it in plain data parallel (--multi_gpu), or use the paper recipe.")
    if hooks.evaluate or hooks.evaluate_ctc:
        raise UserError("evaluation during training (--eval) does not run under FSDP: train without it, then score "
                        "the final model with `slam evaluate` (each process decodes with a whole model).")


class TrainingInterrupted(RuntimeError):
    """Raised by ``stop_after`` (tests of resume)."""


# -- phase set-up ---------------------------------------------------------------------------------------
@dataclass
class _Phase:
    """One phase made ready to step: what computes its loss, what it trains, how, and on which batches."""

    name: str  # "ctc" (the warm start) or "slam" (next-token)
    index: int  # its place in the run: seeds its batches and its random draws
    examples: list[Example]
    module: nn.Module  # the loss: CtcWarmup or the SlamModel itself
    wrapped: nn.Module  # the same, prepared by accelerate (DDP under a launcher)
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    plan: BatchPlan
    targets: list[list[int]] | None  # the token ids the CTC loss spells, where a CTC loss runs
    aux: CtcWarmup | None  # the CTC loss kept beside the next-token loss (``ctc_weight``)
    ctc_weight: float

    def loss(self, accelerator, feats: list[torch.Tensor], idx: Sequence[int], weight: float) -> torch.Tensor:
        """This process's part (``_mean_part``) of the micro-batch's loss, for its examples ``idx``."""
        if self.name == "ctc":
            return _mean_part(accelerator, self.wrapped(feats, [self.targets[i] for i in idx]), weight)
        out = self.wrapped(feats, [self.examples[i].prompt for i in idx], [self.examples[i].target for i in idx])
        loss = _mean_part(accelerator, out, weight)
        if self.aux is not None:
            ctc = self.aux(feats, [self.targets[i] for i in idx])
            loss = loss + self.ctc_weight * _mean_part(accelerator, ctc, weight)
        return loss


def _set_up_phase(accelerator, model, examples: list[Example], cfg: TrainConfig, index: int, name: str,
                  n_steps: int, checkpoint: dict | None) -> _Phase:
    """Ready phase ``name``: which parameters train, AdamW and the warmup/warmdown schedule (their state taken
    from ``checkpoint`` when it resumes this phase), the loss module prepared by accelerate, the batch plan."""
    lengths = [e.features.shape[0] for e in examples]
    # what the CTC loss spells; tokenised only where a CTC loss runs (not in every healing run)
    targets = ([model.layout._ids((e.ctc_target or e.target).strip()) for e in examples]
               if name == "ctc" or cfg.ctc_weight else None)
    if name == "ctc":
        module, aux, params = _warm_start_trains(accelerator, model, targets, lengths)
        lr, batch_size = cfg.ctc_lr, cfg.ctc_batch_size
    else:
        module, aux, params = _next_token_trains(model, cfg)
        lr, batch_size = cfg.lr, cfg.batch_size
    if not params:
        raise UserError("nothing to train: every parameter is frozen (unfreeze the projector, add LoRA or "
                        "SlamConfig.prompt_vectors).")
    optimizer = torch.optim.AdamW(_param_groups(model, params, cfg.prompt_lr), lr=lr,
                                  betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(min(cfg.warmup_steps, n_steps), n_steps))
    sharded = _sharded(accelerator)
    if checkpoint is not None and not sharded:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
    wrapped, optimizer = accelerator.prepare(module, optimizer)
    if sharded:  # the model's parameters are now their shards (DTensors), in the optimiser too
        params = [q for group in optimizer.param_groups for q in group["params"]]
        if checkpoint is not None:
            optimizer.load_state_dict(_sharded_state(checkpoint["optimizer"], params))
            scheduler.load_state_dict(checkpoint["scheduler"])
    plan = BatchPlan(lengths, batch_size, cfg.seed, index, cfg.bucket)
    return _Phase(name, index, examples, module, wrapped, params, optimizer, scheduler, plan, targets, aux,
                  cfg.ctc_weight)


def _warm_start_trains(accelerator, model, targets: list[list[int]],
                       lengths: list[int]) -> tuple[CtcWarmup, None, list]:
    """The CTC warm start trains the projector and the CTC head, which a first warm start makes here (over
    the tokens of its targets). Returns (the loss module, no second loss, the parameters it trains)."""
    feasible = sum(len(t) <= math.ceil(n / model.projector.k) for t, n in zip(targets, lengths))
    if feasible < len(targets) / 2:
        raise UserError(f"CTC warm start: only {feasible}/{len(targets)} utterances have at least as many "
                        "projected frames as target tokens; lower k or drop ctc_warmup_steps.")
    if model.ctc is None:
        from speechllm_redundancy.slam import CtcHead

        width = model.llm.get_input_embeddings().weight.shape[1]
        model.ctc = CtcHead(width, [t for ids in targets for t in ids]).to(accelerator.device)
    model.ctc.requires_grad_(True)
    return CtcWarmup(model), None, [*model.projector.parameters(), *model.ctc.parameters()]


def _next_token_trains(model, cfg: TrainConfig) -> tuple[nn.Module, CtcWarmup | None, list]:
    """The next-token phase trains what requires grad, less the projector with ``freeze_projector``; the CTC
    head stays as the warm start left it. Returns (the loss module, the ``ctc_weight`` loss beside it or
    None, the parameters it trains)."""
    if model.ctc is not None:
        model.ctc.requires_grad_(False)
    if cfg.freeze_projector:
        model.projector.requires_grad_(False)
    if cfg.ctc_weight and model.ctc is None:
        raise UserError(f"ctc_weight={cfg.ctc_weight} needs a CTC head: add ctc_warmup_steps or start "
                        "from a model that has one (train_from_configs init_from=).")
    aux = CtcWarmup(model) if cfg.ctc_weight else None
    return model, aux, [q for q in model.parameters() if q.requires_grad]


def _param_groups(model, params: list, prompt_lr: float | None) -> list[dict]:
    """One optimiser group, or two when a trained soft prompt takes its own learning rate (prompt tuning
    wants ~10-100x the rate of weights: its vectors start at token embeddings and move far)."""
    prompt = getattr(model, "soft_prompt", None)
    if prompt_lr is None or prompt is None or not any(q is prompt for q in params):
        return [{"params": params}]
    rest = [q for q in params if q is not prompt]
    return ([{"params": rest}] if rest else []) + [{"params": [prompt], "lr": prompt_lr}]


# -- one step -------------------------------------------------------------------------------------------
def _step(accelerator, phase: _Phase, cfg: TrainConfig, step: int) -> float:
    """Optimiser step ``step`` of ``phase`` over ``grad_accum`` micro-batches. Its examples and every random
    draw in it (SpecAugment masks, dropout) follow from (seed, phase, step) alone: that makes resume exact.
    Returns the step's loss, the batch's as one process computes it."""
    torch.manual_seed(_step_seed(cfg.seed, phase.index, step))
    gen = torch.Generator().manual_seed(_step_seed(cfg.seed, phase.index, step) + 1)
    loss_sum = 0.0
    for micro in range(cfg.grad_accum):
        batch = phase.plan.batch(step * cfg.grad_accum + micro)
        idx, weight = shard(batch, accelerator.process_index, accelerator.num_processes)
        feats = _features_of(phase.examples, batch, idx, gen, cfg)
        # processes exchange gradients once a step, at its last micro-batch
        sync = accelerator.no_sync(phase.wrapped) if micro < cfg.grad_accum - 1 else contextlib.nullcontext()
        with sync, accelerator.autocast():
            loss = phase.loss(accelerator, feats, idx, weight) / cfg.grad_accum
        accelerator.backward(loss)
        loss_sum += float(accelerator.reduce(loss.detach(), "mean"))  # the batch's, as in one process
    if cfg.grad_clip:
        accelerator.clip_grad_norm_(phase.params, cfg.grad_clip)
    phase.optimizer.step()
    phase.scheduler.step()
    phase.optimizer.zero_grad(set_to_none=True)
    return loss_sum


def _step_seed(seed: int, phase: int, step: int) -> int:
    return (seed * 1_000_003 + phase * 10_007 + step) % (2**31 - 1)


def _mean_part(accelerator, out: dict, weight: float) -> torch.Tensor:
    """This process's part of the batch's mean loss Σ example_loss·example_tokens / Σ example_tokens, the
    sums over the examples of every process: N · (its own sum) / (the total count). DDP averages the N
    parts' gradients, which is then the gradient of the batch's mean, however the examples and their
    tokens fell; a per-process mean, averaged, would weigh the tokens of a process with fewer more.
    ``weight`` 0: a stand-in example (``distributed.shard``) that counts for nothing."""
    count = (out["example_tokens"].sum() * weight).detach().float()
    total = (out["example_loss"] * out["example_tokens"]).sum() * weight
    return total * accelerator.num_processes / accelerator.reduce(count, "sum")


# -- time budget and evaluation hooks -------------------------------------------------------------------
def _out_of_time(accelerator, cfg: TrainConfig, elapsed: float) -> bool:
    """Whether ``max_minutes`` of training have passed, in any process (all stop at the same step)."""
    return cfg.max_minutes is not None and _any_process(accelerator, elapsed >= cfg.max_minutes * 60)


def _any_process(accelerator, flag: bool) -> bool:
    """Whether ``flag`` holds in any process: a decision to stop must be the same in all of them (one
    process leaving the loop early would leave the others waiting for it at the next gradient exchange)."""
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum") > 0)


@dataclass
class _Hooks:
    """What the caller runs beside training: evaluations (their time not counted as training time), the
    progress bar, and a test's interruption."""

    evaluate: Callable[[object], dict] | None
    eval_every: int
    evaluate_ctc: Callable[[CtcWarmup], dict] | None
    progress: bool
    stop_after: int | None

    def after_step(self, model, run: _RunState, phase: str, finishing: bool) -> None:
        """``evaluate`` every ``eval_every`` next-token steps and at the phase's last one."""
        done = run.steps[phase]
        due = (self.eval_every and done % self.eval_every == 0) or finishing
        if self.evaluate and phase == "slam" and due:
            _log_evaluation(model, self.evaluate, model, run, phase)

    def after_warm_start(self, model, module: CtcWarmup, run: _RunState) -> None:
        """``evaluate_ctc`` once the warm start has run all its steps (how far it gets alone)."""
        if self.evaluate_ctc:
            _log_evaluation(model, self.evaluate_ctc, module, run, "ctc")

    def stop_if_asked(self, run: _RunState) -> None:
        """``stop_after``: stop once that many steps are done in all, as an interruption would."""
        if self.stop_after is not None and run.total >= self.stop_after:
            raise TrainingInterrupted(f"stopped after {run.total} steps (stop_after)")


def _log_evaluation(model, evaluate: Callable, subject, run: _RunState, phase: str) -> None:
    model.eval()
    scores = evaluate(subject)
    run.history.append({"phase": phase, "step": run.steps[phase], "minutes": run.elapsed / 60, **scores})
    model.train()


# -- checkpoints and the cached result ------------------------------------------------------------------
@dataclass
class _RunState:
    """Where a run stands, which is what its checkpoint saves and a resumed run starts from."""

    key: str  # the run's settings and data: a checkpoint or result of another key is refused
    ckpt_dir: Path
    history: list[dict] = field(default_factory=list)
    elapsed: float = 0.0  # training seconds, evaluation not counted
    steps: dict = field(default_factory=dict)  # phase → steps done
    checkpoint: dict | None = None  # the saved state this run resumed from
    out_of_time: bool = False

    @classmethod
    def resume(cls, ckpt_dir: Path, run_key: str) -> _RunState:
        """From the checkpoint in ``ckpt_dir`` (it must be of this run), or from step 0 without one."""
        if not ckpt_dir.exists():
            return cls(run_key, ckpt_dir)
        state = _load_checkpoint(ckpt_dir, run_key)
        return cls(run_key, ckpt_dir, state["history"], state["elapsed"], dict(state["steps"]), state)

    def resumes(self, phase: str) -> bool:
        """Whether the checkpoint was saved in ``phase``: its parameters (and optimiser) are then where the
        phase continues."""
        return self.checkpoint is not None and self.checkpoint["phase"] == phase

    @property
    def total(self) -> int:
        return sum(self.steps.values())

    def record(self, phase: str, done: int, loss: float, lr: float, seconds: float, log: bool) -> None:
        """Step ``done`` of ``phase`` took ``seconds``; with ``log`` its loss joins the history."""
        self.elapsed += seconds
        self.steps[phase] = done
        if log:
            self.history.append({"phase": phase, "step": done, "loss": loss, "lr": lr,
                                 "minutes": self.elapsed / 60})


def _save_checkpoint(accelerator, run: _RunState, model, phase: _Phase) -> None:
    """What resuming ``phase`` needs: the trained parameters, the optimiser and schedule, the run's state.
    Every process takes part (under FSDP each tensor is gathered whole from their shards); the first writes it."""
    accelerator.wait_for_everyone()
    params, optimizer = _model_state(model), _whole(phase.optimizer.state_dict())
    if not accelerator.is_main_process:
        return
    state = {
        "run_key": run.key, "phase": phase.name, "params": params,
        "optimizer": optimizer, "scheduler": phase.scheduler.state_dict(),
        "history": _plain(run.history), "elapsed": float(run.elapsed), "steps": _plain(run.steps),
    }
    with atomic_path(run.ckpt_dir, seal=True) as tmp:
        tmp.mkdir()
        torch.save(state, tmp / "state.pt")


def _model_state(model) -> dict[str, torch.Tensor]:
    """What training changes: trainable parameters plus the projector and CTC head (trainable or not), whole
    (under FSDP: gathered, so every process must call this)."""
    trainable = {n for n, q in model.named_parameters() if q.requires_grad}
    return {n: _whole(v).detach().cpu().clone() for n, v in model.state_dict().items()
            if n in trainable or n.startswith(("projector.", "ctc."))}


def _whole(value):
    """``value`` (a tensor, or dicts and lists of them) with each FSDP shard (DTensor) gathered into the whole
    tensor. A collective under FSDP: every process calls it, on the same structure."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return value.full_tensor()
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_whole(v) for v in value)
    return value


def _sharded_state(state: dict, params: list) -> dict:
    """An optimiser state saved whole (``_whole``) laid out again as ``params`` are: each per-parameter tensor
    of a sharded parameter becomes this process's shard of it (a collective, like ``_whole``)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    def shard(value, param):
        if isinstance(param, DTensor) and torch.is_tensor(value) and value.shape == param.shape:
            return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
        return value

    return {**state, "state": {i: {k: shard(v, params[int(i)]) for k, v in s.items()}
                               for i, s in state["state"].items()}}


def _restore_params(model, state: dict) -> None:
    """Load a checkpoint's parameters into ``model``, making the CTC head it has and the model lacks."""
    params = state["params"]
    if "ctc.vocab" in params and getattr(model, "ctc", None) is None:
        from speechllm_redundancy.slam import CtcHead

        head = {k.removeprefix("ctc."): v for k, v in params.items() if k.startswith("ctc.")}
        model.ctc = CtcHead.from_state(head).to(model.device)
    missing = set(params) - set(model.state_dict())
    if missing:
        raise UserError(f"checkpoint does not fit this model ({sorted(missing)[:3]}): use a new output directory.")
    model.load_state_dict(params, strict=False)


def _plain(value):
    """``value`` in JSON types (numpy / tensor scalars as Python numbers, anything else as its str): a numpy
    scalar from an ``evaluate`` callback would otherwise make the checkpoint unloadable with
    ``weights_only=True``."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _load_checkpoint(ckpt_dir: Path, run_key: str) -> dict:
    """The checkpoint's state, checked against the size and sha256 recorded when it was written (a
    checkpoint from before records is unverified), then unpickled with ``weights_only=True``: tensors and
    plain containers only, so a file planted or altered in the artifacts folder cannot run code."""
    path = ckpt_dir / "state.pt"
    verify_entry(ckpt_dir, fix=f"delete {ckpt_dir} to restart the run from step 0", hash_limit=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:  # OSError: a file cut short
        # torch's message opens with how to bypass the check; the user needs only what was refused
        found = re.search(r"WeightsUnpickler error: (.+?)(?:\.\s|$)", str(err), re.M)
        reason = found.group(1) if found else str(err).split(". ")[0][:200]
        raise UserError(f"{path} is not a checkpoint this toolkit wrote (it holds more than tensors and "
                        f"plain containers, or is damaged: {reason}); delete {ckpt_dir} to restart the run "
                        "from step 0.") from None
    if state["run_key"] != run_key:
        raise UserError(f"{ckpt_dir} is a checkpoint of a run with other settings or data: choose another output "
                        "directory (or delete it to start over).")
    return state


def _save_final(accelerator, model, cfg: TrainConfig, out_dir: Path, run: _RunState) -> TrainResult:
    """The final model and result.json: the cache entry the next call with these settings hits."""
    model.eval()
    given = {}
    if _sharded(accelerator):  # what save_pretrained writes (input side, adapters), gathered by every process
        given["state"] = {n: _whole(v) for n, v in model.state_dict().items()
                          if not n.startswith("llm.") or "lora_" in n}
    if accelerator.is_main_process:
        if hasattr(model, "save_pretrained"):
            accelerator.unwrap_model(model).save_pretrained(out_dir / "final", **given)
        atomic_write_json(out_dir / "result.json", {"run_key": run.key, "history": run.history,
                                                    "minutes": run.elapsed / 60, "steps": run.steps,
                                                    "config": asdict(cfg)}, seal=True)
    accelerator.wait_for_everyone()
    return TrainResult(out_dir, run.history, run.elapsed / 60, run.steps)


def _cached_result(model, out_dir: Path, run_key: str) -> TrainResult:
    """A finished run's result, its weights loaded into ``model``; result.json and the final model are
    checked against their records, and a run of other settings or data is refused."""
    fix = f"delete {out_dir} to train it again"
    result_path = out_dir / "result.json"
    try:
        saved = json.loads(read_verified(result_path, fix=fix))
    except ValueError as err:  # written before records existed, and damaged since
        raise UserError(f"{result_path} is damaged (not JSON: {err}): {fix}.") from None
    if (out_dir / "final").exists():
        verify_entry(out_dir / "final", fix=fix, hash_limit=None)
    if saved.get("run_key") != run_key:
        raise UserError(f"{out_dir} holds a finished run with other settings or data: choose another output "
                        "directory (or delete that one to retrain).")
    model.load_weights(out_dir / "final")
    return TrainResult(out_dir, saved["history"], saved["minutes"], saved["steps"])


# -- a cached run of explicit configs (under the entry point) -------------------------------------------
def slam_run_dir(slam_config, cfg: TrainConfig, data: TrainData) -> Path:  # data.fingerprint covers any init
    """Where the trained result of (model config, training config, data) lives in the shared cache; the saved
    format is part of the key, so a model saved in an older layout is retrained, never misread."""
    from speechllm_redundancy.paths import artifacts_dir

    return artifacts_dir() / "slam" / key_of(asdict(slam_config), cfg.key(), data.fingerprint, SAVED_FORMAT)


def train_from_configs(slam_config, train_config: TrainConfig, train_manifest: str | os.PathLike,
                       task: str = "asr", out_dir: str | os.PathLike | None = None,
                       eval_manifest: str | os.PathLike | None = None, eval_every: int = 0,
                       eval_limit: int | None = 200, progress: bool = True, train_limit: int | None = None,
                       init_from: str | os.PathLike | None = None):
    """A SLAM model of explicit configs, cached: encoder features (shared cache) → SlamModel → ``train``.
    The layer under ``trained_slam`` (which picks the configs from a recipe), for callers that set fields
    no recipe names: the ``slam train`` CLI and the benchmarks.

    Without ``out_dir`` the run lives in ``artifacts/slam/<key of configs + data>``, so a second call with
    the same inputs returns the trained model at once (and an interrupted one resumes). ``train_limit``
    trains on the first N utterances of the manifest only (and encodes only those: on a CPU, encoding a
    large corpus can cost more than a short training run). ``init_from``: a saved SLAM model (e.g. a cached
    CTC warm start) whose projector and CTC head this run starts from; a hash of its weights joins the key.
    ``eval_manifest``: scored every ``eval_every`` steps and at the end (and the warm start's CTC transcripts
    once it is over, for ASR). Returns (model, TrainResult).
    """
    from dataclasses import replace

    from speechllm_redundancy.data.manifest import read_manifest, targets
    from speechllm_redundancy.features import cached_features, fingerprint
    from speechllm_redundancy.slam import SlamModel

    utts = read_manifest(train_manifest)[:train_limit]
    targets(utts, task, train_manifest)  # a row without its target fails now, not after the encoding
    store = cached_features(slam_config.encoder, train_manifest, whisper_window=slam_config.whisper_window,
                            limit=train_limit, progress=progress)
    slam_config = replace(slam_config, encoder_dim=store.dim)
    data = make_data(store, utts, task, train_manifest)
    with torch.random.fork_rng(devices=[]):  # the projector's (and adapters') initial weights follow the seed
        torch.manual_seed(train_config.seed)
        model = SlamModel(slam_config)
    if init_from is not None:
        init_from = Path(init_from)
        model.load_weights(init_from, adapters=False)  # refuses a folder save_pretrained did not write, named
        # keyed by the saved weights, not the path: two models saved under the same names are two inits
        data = TrainData(data.examples, key_of(data.fingerprint, "init", fingerprint(str(init_from))))
    evaluate = evaluate_ctc = None
    if eval_manifest:
        evaluate, evaluate_ctc = _evaluators(slam_config, eval_manifest, task, eval_limit, progress)
    out_dir = Path(out_dir) if out_dir else slam_run_dir(slam_config, train_config, data)
    result = train(model, data, train_config, out_dir, evaluate=evaluate, eval_every=eval_every, progress=progress,
                   evaluate_ctc=evaluate_ctc)
    result.data = data
    return model, result


def _evaluators(slam_config, eval_manifest: str | os.PathLike, task: str, eval_limit: int | None,
                progress: bool):
    """``train``'s hooks scoring ``eval_manifest``: the model's ``task`` score, and for ASR the WER of the
    warm start's CTC transcripts (None for other tasks)."""
    from speechllm_redundancy.data.manifest import read_manifest
    from speechllm_redundancy.evaluation import evaluate_slam
    from speechllm_redundancy.features import cached_features

    eval_store = cached_features(slam_config.encoder, eval_manifest, whisper_window=slam_config.whisper_window,
                                 progress=progress)
    eval_utts = read_manifest(eval_manifest)[: eval_limit or None]

    def evaluate(m):
        res = evaluate_slam(m, eval_manifest, task, limit=eval_limit)
        return {f"eval_{res['metric']}": res["score"], "eval_seconds": res["seconds"]}

    def evaluate_ctc(module):
        from speechllm_redundancy.evaluation import wer

        hyps = module.transcribe([eval_store[u.id] for u in eval_utts])
        return {"eval_ctc_wer": wer([u.text for u in eval_utts], hyps)}

    return evaluate, (evaluate_ctc if task == "asr" else None)


# -- the entry point: the models the chapters share -----------------------------------------------------
# How a chapter's SLAM models are trained. "paper": the paper's recipe (next-token loss from scratch, the
# LLM reading every projected frame) — for GPUs and long runs. "cpu": the recipe measured on a 2-core CPU
# (book/method.md, benchmarks/slam_training.py): a CTC warm start of the projector against the frozen token
# embeddings, trained once per (encoder, decoder, speech data) and shared by every model built on it (frozen
# and LoRA alike); the LLM then reads one vector per CTC segment (speech placed where the decoder already
# understands it). A frozen decoder reads the embeddings of the segments' labels ("hard") in the
# RECOGNISED_COPY layout, and its next-token steps train 8 soft-prompt vectors only (prompt tuning; training
# the projector through a frozen decoder made the transcripts worse, and p·E input let it drift on noisy
# speech: test-other 56.0 vs 48.1 % WER with hard labels; book/method.md). LoRA models read p·E and train
# their adapters only, at lr 5·10⁻⁴, the warm start's projector kept as it is (trained along, it drifts
# under the fixed CTC head and the WER rose with every step; kept fixed, SmolLM2's went from 36 % to
# 31–33 %). "train" applies to every model of the recipe, "lora_train" to those with LoRA on the decoder,
# "frozen_slam" / "frozen_train" to those without, "prompt_tuning" to those without that train at all.
RECIPES = {
    "paper": {"slam": {}, "train": {}, "lora_train": {}, "frozen_slam": {}, "frozen_train": {}, "prompt_tuning": {},
              "ctc_steps": 0},
    "cpu": {"slam": {"ctc_compress": True, "ctc_embed": "soft", "ctc_temperature": 1.0},
            "train": {}, "lora_train": {"lr": 5e-4, "freeze_projector": True},
            "frozen_slam": {"ctc_embed": "hard", "prompts": RECOGNISER_PROMPTS},
            "frozen_train": {"freeze_projector": True, "prompt_lr": 1e-2, "warmup_steps": 10, "batch_size": 16,
                             "bucket": 0},  # one prompt for every length: batches mix them (test-other 49.7 vs 51.2)
            "prompt_tuning": {"prompt_vectors": 8}, "ctc_steps": 900},
}


def steps_for(steps: int | Mapping[str, int], llm: str, minimum: int = 1) -> int:
    """``steps`` is one number for every decoder or a mapping decoder → steps (a 0.5B decoder's step costs
    ~2.5× a 135M one's on a CPU, so a time budget buys it fewer)."""
    if isinstance(steps, Mapping):
        llm = llm if llm in steps else str(llm)
        if llm not in steps:
            raise UserError(f"train_steps gives no number for decoder {llm!r} (it has {', '.join(map(str, steps))}): "
                            "add it, or give one number for every decoder.")
        steps = steps[llm]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < minimum:
        raise UserError(f"train_steps={steps!r} for {llm!r}: use a whole number ≥ {minimum}.")
    return steps


def ctc_warm_start(encoder: str, llm: str, manifest: str | os.PathLike, *, steps: int, seed: int = 0,
                   whisper_window: str = "full", train_limit: int | None = None, progress: bool = True):
    """The cached CTC warm start of (encoder, decoder, speech data): the projector + CTC head learn to spell
    each utterance's transcript in the decoder's tokens (no LLM forward). It depends on the speech and its
    transcript only, so every SLAM model of the ``cpu`` recipe on the same encoder and decoder can start
    from one: frozen and LoRA variants, and a translation model whose source language is the ASR corpus's.
    ``trained_slam`` calls it for the cpu recipe; the training benchmark calls it to score the warm start
    alone. Returns a TrainResult (its ``out_dir / "final"`` is the saved model)."""
    from speechllm_redundancy.slam import SlamConfig

    config = SlamConfig(encoder=encoder, llm=llm, whisper_window=whisper_window, prompts={})  # prompts: unused
    _, result = train_from_configs(config, TrainConfig(steps=0, seed=seed, ctc_warmup_steps=steps), manifest,
                                   task="asr", train_limit=train_limit, progress=progress)
    return result


def trained_slam(encoder: str, llm: str, train_manifest: str | os.PathLike, *, steps: int | Mapping[str, int],
                 seed: int = 0, task: str = "asr", recipe: str = "paper", whisper_window: str = "full",
                 train_limit: int | None = None, lora: dict | None = None, device: str | None = None,
                 ctc_steps: int | None = None, warm_start_manifest: str | os.PathLike | None = None,
                 warm_start_limit: int | None = None, progress: bool = True):
    """The entry point: the SLAM model of (encoder, decoder, task, recipe, data), trained once through the
    shared cache, so every chapter asking for the same one gets the same weights. ``result.key`` names it
    for downstream caches; ``result.data`` is what it trained on (healing reuses it); ``result.warm_start``
    is the shared CTC warm start it began from (cpu recipe). ``steps``: next-token steps, one number or a
    mapping decoder → steps (0 allowed in the cpu recipe: the LLM reads the warm start as it is).
    ``ctc_steps``: the cpu recipe's warm-start length (None: the recipe's default). ``warm_start_manifest``
    / ``warm_start_limit``: the speech the warm start spells (default: the training manifest and limit; a
    translation model can name the ASR corpus of its source language, and share that warm start).
    Returns (model, TrainResult)."""
    from speechllm_redundancy.slam import SlamConfig

    if recipe not in RECIPES:
        raise UserError(f"unknown training recipe {recipe!r}: use one of {', '.join(RECIPES)}.")
    spec = RECIPES[recipe]
    steps = steps_for(steps, llm, minimum=0 if spec["ctc_steps"] else 1)
    if ctc_steps is not None and (isinstance(ctc_steps, bool) or not isinstance(ctc_steps, int) or ctc_steps < 0):
        raise UserError(f"ctc_steps={ctc_steps!r}: use a whole number of steps (or None for the recipe's default).")
    if ctc_steps and not spec["ctc_steps"]:
        raise UserError(f"ctc_steps={ctc_steps} but recipe {recipe!r} has no CTC warm start: use recipe='cpu' "
                        "or ctc_steps=None.")
    if ctc_steps == 0 and spec["ctc_steps"]:
        raise UserError(f"ctc_steps=0 but recipe {recipe!r} reads the speech through the CTC head: give it at least "
                        "one warm-start step (or use recipe='paper').")
    slam_over = {**spec["slam"], **({} if lora else spec["frozen_slam"]),
                 **(spec["prompt_tuning"] if not lora and steps else {})}
    slam_config = SlamConfig(encoder=encoder, llm=llm, whisper_window=whisper_window, lora=lora, **slam_over)
    train_config = TrainConfig(steps=steps, seed=seed, **spec["train"],
                               **(spec["lora_train"] if lora else spec["frozen_train"]))
    warm = None
    if spec["ctc_steps"]:
        if warm_start_manifest is None:
            warm_start_manifest, warm_start_limit = train_manifest, train_limit
        warm = ctc_warm_start(encoder, llm, warm_start_manifest, steps=ctc_steps or spec["ctc_steps"], seed=seed,
                              whisper_window=whisper_window, train_limit=warm_start_limit, progress=progress)
    model, result = train_from_configs(slam_config, train_config, train_manifest, task=task,
                                       train_limit=train_limit, progress=progress,
                                       init_from=warm.out_dir / "final" if warm else None)
    result.warm_start = warm
    if device:
        model.to(device)
    return model, result
