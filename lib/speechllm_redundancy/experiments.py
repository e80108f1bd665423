"""The chapters' experiments in the paper's terms: a trained SLAM model, its pruning path, a walk along it.

Every cache key and artifact folder a chapter depends on is decided here, so a chapter (or a user's own
script) asks for "the walk of this model along this path, healed like this" in one call, and two chapters
asking for the same thing share it::

    study = Study(Settings(corpus={"size": "smoke"}, encoder="tiny-wavlm", recipe="paper", train_steps=20))
    run = study.slam("tiny-qwen2")
    walk = study.walk(run, study.speech_path(run), fractions=[0.5], strategy="both")

``Settings`` holds what the chapters share (the profile's ``common`` block and the evaluation budget);
``Settings.of(globals())`` picks them out of a notebook's papermill parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from speechllm_redundancy import sweep
from speechllm_redundancy.angles import AngleMatrix
from speechllm_redundancy.cache import key_of
from speechllm_redundancy.data.corpus import ASR_TEST_SPLITS
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.healing import HEALING_STEPS
from speechllm_redundancy.layers import num_decoder_layers
from speechllm_redundancy.pruning import PATH_SAMPLES


@dataclass(frozen=True)
class Settings:
    """What every chapter of one run shares. The defaults are the paper-sized ones of the notebooks'
    parameter cells; a profile's ``common`` block and a chapter's parameters override them."""

    corpus: Mapping[str, Any] = field(default_factory=lambda: {"size": "default"})
    device: str = "cpu"
    seed: int = 0
    encoder: str = "whisper-base"  # frozen speech encoder of the ASR models
    recipe: str = "cpu"  # training.RECIPES
    train_steps: int | Mapping[str, int] = 3000  # next-token steps, one number or {decoder: steps}
    ctc_steps: int | None = None  # the cpu recipe's warm start (None: its default)
    whisper_window: str = "padded"
    train_limit: int | None = 8192  # ASR training utterances (None: the whole split)
    ast_train_limit: int | None = 2048  # per translation direction
    eval_limit: int | None = 100  # utterances decoded per evaluation set and pruning point
    max_new_tokens: int | None = None  # None: the decoder's default cap
    decode_precision: str = "auto"  # of the decoder's products while decoding (decoding.resolve_decode_precision)
    path_samples: int = PATH_SAMPLES  # utterances whose angles give a model's pruning path
    path_split: str | None = None  # where they come from (None: see Study.path_split)
    healing_steps: int = HEALING_STEPS  # steps of each healing run

    @classmethod
    def of(cls, namespace: Mapping[str, Any], **overrides) -> "Settings":
        """The settings found among ``namespace``'s names (a notebook's ``globals()``, holding its papermill
        parameters); names it lacks keep their defaults."""
        names = [f.name for f in dataclasses.fields(cls)]
        given = {**{n: namespace[n] for n in names if n in namespace}, **overrides}
        settings = cls(**given)
        object.__setattr__(settings, "_given", tuple(n for n in names if n in given))
        return settings

    def as_dict(self) -> dict[str, Any]:
        """The settings as a dict; for settings made by ``of``, only those the namespace set (a chapter's
        "This run" table lists the parameters it declares, not every knob of every chapter)."""
        values = dataclasses.asdict(self)
        given = getattr(self, "_given", None)
        return values if given is None else {n: values[n] for n in given}


@dataclass
class SlamRun:
    """A trained SLAM model and what names it: its decoder, task, training split and cache key."""

    llm: str
    task: str
    model: Any  # SlamModel
    result: Any  # training.TrainResult
    train_split: str
    lora: bool = False

    @property
    def key(self) -> str:
        """The trained model's cache key: part of every angle, walk and healing key downstream."""
        return self.result.key

    @property
    def data(self):
        """What it trained on (healing trains on the same)."""
        return self.result.data

    @property
    def num_layers(self) -> int:
        return num_decoder_layers(self.model.llm)

    @property
    def variant(self) -> str:
        return "LoRA decoder" if self.lora else "frozen decoder"


def task_splits(task: str) -> tuple[str, list[str]]:
    """(training split, evaluation splits) of a task: ``asr`` or ``ast-<src>-<tgt>``."""
    if task == "asr":
        return "train", list(ASR_TEST_SPLITS)
    if task.startswith("ast-"):
        direction = task[len("ast-"):]
        return f"{direction}-train", [f"{direction}-test"]
    raise UserError(f"unknown task {task!r}: use 'asr' or 'ast-<source>-<target>' (e.g. ast-en-de).")


def validation_split(task: str) -> str:
    """The validation split of a task (``dev``, ``<src>-<tgt>-dev``): inputs a model is neither trained nor
    scored on, which a corpus may lack (the embedded one has translation validation only with ``ast_dev``)."""
    train = task_splits(task)[0]
    return "dev" if task == "asr" else train.removesuffix("-train") + "-dev"


class Study:
    """One run's corpus and settings: its SLAM models, their pruning paths and walks, all cached on disk and
    shared between chapters through keys of their inputs."""

    def __init__(self, settings: Settings, manifests: Mapping[str, Path] | None = None):
        import torch

        from speechllm_redundancy.data import build_corpus

        self.settings = settings
        self.manifests = dict(manifests) if manifests is not None else build_corpus(dict(settings.corpus))
        torch.manual_seed(settings.seed)

    # ------------------------------------------------------------------------------------------ data
    def eval_sets(self, task: str = "asr") -> list[str]:
        """The task's evaluation splits present in this corpus (a custom corpus may lack some)."""
        return [s for s in task_splits(task)[1] if s in self.manifests]

    def split(self, name: str) -> Path:
        if name not in self.manifests:
            raise UserError(f"the corpus has no split {name!r} (it has {', '.join(self.manifests)}): build a "
                            "corpus that has it, or choose another task or direction.")
        return Path(self.manifests[name])

    def references(self, name: str, task: str = "asr", limit: int | None = None) -> list[str]:
        """What a model is scored against on split ``name``: transcripts (ASR) or translations (AST)."""
        from speechllm_redundancy.data import read_manifest

        return [u.target(task) for u in read_manifest(self.split(name))[:limit]]

    def path_split(self, task: str = "asr") -> str:
        """The split a model's pruning path is measured on ("task-representative inputs", in the paper a
        validation set: ones the model was neither trained nor scored on): ``settings.path_split`` if given;
        else the task's validation split (``dev``; ``<src>-<tgt>-dev`` for translation) where the corpus has
        it; else, in a corpus without one, the task's training split (so the path then comes from utterances
        the model may have trained on)."""
        if self.settings.path_split:
            return self.settings.path_split
        if (dev := validation_split(task)) in self.manifests:
            return dev
        return task_splits(task)[0]

    def path_sentences(self) -> list[str]:
        """The transcripts of the utterances the ASR path is measured on (the text-derived path's input)."""
        return self.references(self.path_split("asr"), "asr", self.settings.path_samples)

    # ---------------------------------------------------------------------------------------- models
    def slam(self, llm: str, task: str = "asr", *, lora: dict | None = None, steps=None,
             encoder: str | None = None) -> SlamRun:
        """The SLAM model of decoder ``llm`` for ``task`` (frozen decoder, or LoRA on it), trained once through
        the shared cache. A translation model from English whose encoder is the ASR one starts from the ASR
        models' CTC warm start (the same skill on more speech)."""
        from speechllm_redundancy.training import trained_slam

        s = self.settings
        train_split = task_splits(task)[0]
        encoder = encoder or s.encoder
        english = task.startswith("ast-en-") and encoder == s.encoder
        model, result = trained_slam(
            encoder, llm, self.split(train_split), task=task, steps=s.train_steps if steps is None else steps,
            seed=s.seed, recipe=s.recipe, ctc_steps=s.ctc_steps, whisper_window=s.whisper_window,
            train_limit=s.train_limit if task == "asr" else s.ast_train_limit, lora=lora, device=s.device,
            warm_start_manifest=self.split("train") if english else None,
            warm_start_limit=s.train_limit if english else None)
        return SlamRun(llm, task, model, result, train_split, lora=bool(lora))

    # ----------------------------------------------------------------------------------------- paths
    def speech_angles(self, run: SlamRun, split: str | None = None, samples: int | None = None) -> AngleMatrix:
        """D(l, n) of a SLAM model on its own inputs: the speech of the first ``samples`` utterances of
        ``split`` (default: ``path_split`` and ``path_samples``, the pruning path's inputs) with the task's
        prompt."""
        split = split or self.path_split(run.task)
        samples = self.settings.path_samples if samples is None else samples
        return sweep.speech_angles(run.model, self.split(split), run.key, limit=samples, task=run.task)

    def gold_text_angles(self, run: SlamRun, split: str, samples: int) -> AngleMatrix:
        """D(l, n) of a SLAM model given the transcripts of ``split``'s first ``samples`` utterances as token
        embeddings in its speech slot: the clean control of ``speech_angles`` (same layout, same position)."""
        return sweep.speech_angles(run.model, self.split(split), run.key, limit=samples, task=run.task,
                                   gold_text=True)

    def untrained(self, run: SlamRun):
        """``run``'s SLAM model before any training: built from the same ``SlamConfig`` under the study's
        seed, so its projector, soft prompt (if any) and CTC head (if any: over the same token subset, blank
        and scale as a warm start creates them) are the initial weights its training started from — seeded,
        the same every time. The decoder is the run's own frozen one (shared, not copied; a LoRA run's decoder
        is loaded again without adapters, LoRA at initialisation being the identity)."""
        from dataclasses import replace

        import torch

        from speechllm_redundancy.slam import CtcHead, SlamModel

        trained = run.model
        config = replace(trained.config, lora=None)
        llm, tokenizer = (None, None) if run.lora else (trained.llm, trained.tokenizer)
        with torch.random.fork_rng(devices=[]):  # the same draws as training's SlamModel (training.py)
            torch.manual_seed(self.settings.seed)
            model = SlamModel(config, llm, tokenizer)
        if trained.ctc is not None:
            width = model.llm.get_input_embeddings().weight.shape[1]
            model.ctc = CtcHead(width, trained.ctc.vocab.tolist()).requires_grad_(False)
        model.projector.eval()  # no dropout in the control (the shared decoder's mode is left as it is)
        return model.to(trained.device)

    def untrained_speech_angles(self, run: SlamRun, split: str | None = None,
                                samples: int | None = None) -> AngleMatrix:
        """``speech_angles`` of ``run``'s model through its untrained front end (``untrained``): the same
        frozen decoder, layout and utterances, the speech reaching the decoder through the projector (and CTC
        head, soft prompt) at their initialisation. The control that tells how much of a speech map's
        agreement with text is the trained front end and how much the decoder's own. Cached beside the
        trained model's maps; the control model is built only when its map is not cached."""
        split = split or self.path_split(run.task)
        samples = self.settings.path_samples if samples is None else samples
        return sweep.speech_angles(lambda: self.untrained(run), self.split(split),
                                   key_of(run.key, "untrained front end", self.settings.seed), limit=samples,
                                   task=run.task)

    def speech_path(self, run: SlamRun) -> dict[int, int]:
        """The speech-derived optimal path {n: l*(n)} of a model."""
        return self.speech_angles(run).optimal_path()

    def text_angles(self, llm: str, sentences: Sequence[str] | None = None) -> AngleMatrix:
        """D(l, n) of the decoder alone fed ``sentences`` as plain text (default: the path's transcripts)."""
        sentences = self.path_sentences() if sentences is None else list(sentences)
        return sweep.text_angles(llm, sentences, self.settings.device)

    # ----------------------------------------------------------------------------------------- walks
    def heal_config(self):
        """The training settings of every healing run (healing.healing_config)."""
        from speechllm_redundancy.healing import healing_config

        return healing_config(self.settings.healing_steps, seed=self.settings.seed)

    def walk(self, run: SlamRun, path: Mapping[int, int], fractions: Sequence[float] | None = None,
             strategy: str = "none", sets: Sequence[str] | None = None) -> pd.DataFrame:
        """Prune ``run``'s model along ``path`` at each of ``fractions`` (rounded to whole layers; None: every
        n up to half), heal with ``strategy`` (on the model's own training data), and score each evaluation
        set by greedy decoding of ``eval_limit`` utterances. A long frame (n, start, fraction, set, score,
        delta, strategy); every point is cached, and points two walks share are computed once."""
        return self._walk(run, path, sweep.path_sizes(run.num_layers, fractions), strategy, sets)

    def baseline(self, run: SlamRun, sets: Sequence[str] | None = None) -> pd.DataFrame:
        """The unpruned model scored on its task's evaluation sets: every walk's n = 0 point, shared."""
        return self._walk(run, {}, [], "none", sets)

    def _walk(self, run: SlamRun, path, sizes, strategy, sets) -> pd.DataFrame:
        s = self.settings
        evaluate = sweep.manifest_evaluator(self.manifests, run.task, limit=s.eval_limit,
                                            max_new_tokens=s.max_new_tokens, precision=s.decode_precision)
        healing = {} if strategy == "none" else {"heal_data": run.data, "heal_config": self.heal_config()}
        return sweep.walk_path(run.model, path, sizes, list(sets) if sets is not None else self.eval_sets(run.task),
                               evaluate, self.walk_dir(run), strategy=strategy,
                               key=key_of(run.key, s.eval_limit, s.max_new_tokens), model_key=run.key, **healing)

    def walk_dir(self, run: SlamRun) -> Path:
        """The folder of ``run``'s walks: their points and healing runs (``sweep.healing_dir``, keyed by
        ``run.key``)."""
        return sweep.walk_cache_dir(run.task, run.key)

    def removable(self, walk: pd.DataFrame, run: SlamRun) -> float:
        """The paper's removable fraction of a walk (ASR: ΔWER ≤ +25 %, AST: ΔBLEU ≥ −10 % on every set)."""
        return sweep.removable(walk, run.num_layers, "asr" if run.task == "asr" else "ast")

    # ------------------------------------------------------------------------------------ references
    def chance(self, task: str = "asr") -> dict[str, float]:
        """Each evaluation set's chance level (evaluation.chance_score) on the utterances the walks decode."""
        return sweep.chance_scores(self.manifests, self.eval_sets(task), task, self.settings.eval_limit)

    def ceiling(self, run: SlamRun) -> dict[str, dict]:
        """Each evaluation set's gold-input ceiling of a model's decoder, in the layout the model decodes with
        and with any adapters off (ceilings.cached_gold_ceiling)."""
        from speechllm_redundancy.ceilings import cached_gold_ceiling

        return {name: cached_gold_ceiling(run.model, run.task, self.split(name), self.settings.eval_limit)
                for name in self.eval_sets(run.task)}

    def unusable(self, walk: pd.DataFrame, task: str = "asr") -> dict[str, tuple[float, float]]:
        """The sets on which a walk's unpruned model does no better than chance ({set: (score, chance)})."""
        from speechllm_redundancy.evaluation import no_better_than_chance

        return no_better_than_chance(sweep.baseline_scores(walk), self.chance(task), task)

    def record_baseline(self, run: SlamRun, walk: pd.DataFrame) -> None:
        """Put a walk's unpruned scores, with their chance levels and gold-input ceilings, in the results file."""
        from speechllm_redundancy.results import record_baseline

        record_baseline(run.llm, run.variant, run.task, sweep.baseline_scores(walk), self.chance(run.task),
                        self.ceiling(run), recipe=self.settings.recipe)
