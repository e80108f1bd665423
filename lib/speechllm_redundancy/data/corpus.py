"""The embedded corpus: ASR and speech-translation splits synthesised offline, mirroring the paper's sets.

=============  ==============================================================================
split          what it is
=============  ==============================================================================
train          English sentences (WEB verses + WordNet examples), training voices; a share
               ``train_other_share`` (0 by default) degraded like test-other
test-clean     held-out sentences, training voices, clean (LibriSpeech test-clean analogue)
test-other     held-out sentences, training voices, noise 5–15 dB SNR, reverb, tempo change
dev-ood        held-out sentences, voices never heard in training (Piper; held-out espeak accents)
dev            held-out sentences, training voices, clean: validation (the ASR pruning paths' inputs)
real           LibriVox recordings from Debian's pocketsphinx-testdata
en-de-train/-test  English speech of WEB verses → German Elberfelder text (CoVoST 2 analogue)
fr-en-train/-test  French espeak-ng speech of Louis Segond verses → English WEB text
en-de-dev      held-out pairs, the direction's voices, clean: translation validation (the AST pruning
fr-en-dev      paths' inputs); ``ast_dev`` per direction, none by default
=============  ==============================================================================

No sentence (nor any Bible verse, in any language) is used by two splits. Test sentences are drawn at
random from what training left over, keeping a sentence only while the split's rate of words unseen
in its training transcripts stays within ``max_oov``: a synthetic corpus of a few hours cannot teach
words it never says, so this keeps the evaluation about acoustics rather than vocabulary.

``build_corpus(profile)`` writes ``<out>/<split>.jsonl`` + ``audio/<split>/<id>.wav`` (16 kHz mono
16-bit), ``plan.json`` (every utterance's text, voice and prosody) and ``corpus.json`` (counts, hours,
OOV rates, build time, how many train utterances were degraded). It is deterministic, parallel, and
resumable: a re-run makes only missing files, and after a settings change only the utterances whose
recipe changed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from speechllm_redundancy.cache import atomic_path, atomic_write_json, entry_lock, key_of
from speechllm_redundancy.data import synth
from speechllm_redundancy.data.audio import audio_seconds
from speechllm_redundancy.data.manifest import Utterance, read_manifest, write_manifest
from speechllm_redundancy.data.readers import read_external, read_librivox_testdata
from speechllm_redundancy.data.text_sources import TextPools, load_text_pools, words
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.paths import artifact_path
from speechllm_redundancy.profiles import load_profile

CORPUS_VERSION = 1  # bump when planning or synthesis changes what a given config produces
ASR_TEST_SPLITS = ("test-clean", "test-other", "dev-ood")
SPLITS = ("train", *ASR_TEST_SPLITS, "dev", "real", "en-de-train", "en-de-test", "en-de-dev", "fr-en-train",
          "fr-en-test", "fr-en-dev")
PRESETS = {
    "smoke": {"train": 48, "test": 8, "dev": 8, "ast_train": 16, "ast_test": 8},
    "default": {"train": 20000, "test": 200, "dev": 200, "ast_train": 5000, "ast_test": 200},
}


@dataclass
class CorpusConfig:
    """Sizes and knobs of the corpus (the ``corpus:`` mapping of a profile)."""

    size: str = "default"  # preset the other numbers start from: smoke | default
    train: int = 20000  # ASR training utterances
    test: int = 200  # per ASR test set (test-clean, test-other, dev-ood)
    dev: int = 200  # ASR validation utterances (held-out sentences, training voices): the pruning paths' inputs
    ast_train: int = 5000  # per translation direction
    ast_test: int = 200
    # per direction: translation validation (held-out pairs, the direction's voices), the AST pruning paths'
    # inputs. At 0 (the default) there is none: a corpus and its key are what they were before this setting
    ast_dev: int = 0
    seed: int = 0
    max_oov: float = 0.02  # test words unseen in training, at most (the target: 3 %)
    # of English utterances spoken by flite; the rest by espeak-ng, ~4× cheaper to synthesise but much harder for
    # Whisper to hear (benchmarks/voice_intelligibility.py): the default profile sets 1.0
    flite_share: float = 0.2
    piper_share: float = 0.5  # of dev-ood spoken by the Piper voice, when piper-tts is installed
    # of (synthetic) train utterances degraded like test-other (noise at 5–15 dB SNR, reverb, tempo):
    # multi-condition training, as LibriSpeech's own training set holds "other" speech; only train, not the
    # translation splits. At 0 (the default) a corpus and its key are what they were before this setting
    train_other_share: float = 0.0
    real: bool = True  # include the pocketsphinx-testdata LibriVox clips
    name: str | None = None  # folder name under artifacts/corpus (default: the size, or size-<hash>)
    splits: dict = field(default_factory=dict)  # split -> reader spec, to take it from a real corpus


def corpus_config(profile: str | os.PathLike | dict | CorpusConfig | None = "default") -> CorpusConfig:
    """A config from a preset name (``smoke``, ``default``), a profile (name or YAML path: its ``corpus:``
    mapping), a dict, or a config."""
    if isinstance(profile, CorpusConfig):
        return profile
    if profile is None:
        profile = "default"
    if isinstance(profile, (str, Path)) and str(profile) in PRESETS:
        raw: dict = {"size": str(profile)}
    elif isinstance(profile, dict):
        raw = dict(profile.get("corpus", profile))
    else:
        loaded = load_profile(profile)
        raw = dict(loaded.corpus)
        raw.setdefault("size", loaded.name if loaded.name in PRESETS else "default")
    raw = _expand_real_corpora(raw)
    size = raw.get("size", "default")
    if size not in PRESETS:
        raise UserError(
            f"corpus size {size!r} unknown: use one of {', '.join(PRESETS)} (then override numbers)"
        )
    known = {f.name for f in fields(CorpusConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"unknown corpus setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    cfg = CorpusConfig(**{**PRESETS[size], **raw})
    for key in ("train", "test", "dev", "ast_train", "ast_test", "ast_dev"):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 0:
            raise UserError(f"corpus.{key} must be a non-negative integer, got {getattr(cfg, key)!r}")
    for key in ("flite_share", "piper_share", "train_other_share"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise UserError(f"corpus.{key} must be a number from 0 to 1, got {value!r}")
    cfg.train_other_share = float(cfg.train_other_share)  # 1 and 1.0: one corpus
    bad = sorted(set(cfg.splits) - set(SPLITS))
    if bad:
        raise UserError(f"corpus.splits names unknown split(s) {bad}; splits are {', '.join(SPLITS)}")
    return cfg


LIBRISPEECH_960 = ["train-clean-100", "train-clean-360", "train-other-500"]


def _expand_real_corpora(raw: dict) -> dict:
    """Turn the paper profile's shorthand (corpus folders by name) into per-split reader specs.

    ``librispeech: ROOT`` → train (the 960 h: ``librispeech_train`` overrides the subsets), test-clean,
    test-other; ``loquacious: ROOT`` → dev-ood (its dev partition, as in the paper: its test set contains
    LibriSpeech's); ``covost2: DIR`` with ``common_voice_en`` / ``common_voice_fr`` (clips folders) →
    the En→De and Fr→En train/dev/test splits (dev: the translation paths' inputs). Splits named in
    ``splits:`` win.
    """
    raw = dict(raw)
    splits = dict(raw.pop("splits", None) or {})
    specs: dict[str, dict] = {}
    if root := raw.pop("librispeech", None):
        train = raw.pop("librispeech_train", LIBRISPEECH_960)
        specs["train"] = {"reader": "librispeech", "root": root, "subsets": train}
        specs["test-clean"] = {"reader": "librispeech", "root": root, "subsets": "test-clean"}
        specs["test-other"] = {"reader": "librispeech", "root": root, "subsets": "test-other"}
        specs["dev"] = {"reader": "librispeech", "root": root, "subsets": "dev-clean"}
    if root := raw.pop("loquacious", None):
        specs["dev-ood"] = {"reader": "loquacious", "root": root, "split": "dev"}
    covost, clips = (
        raw.pop("covost2", None),
        {"en": raw.pop("common_voice_en", None), "fr": raw.pop("common_voice_fr", None)},
    )
    if covost:
        for src, tgt in (("en", "de"), ("fr", "en")):
            if not clips[src]:
                raise UserError(
                    f"corpus.covost2 is set but corpus.common_voice_{src} (the Common Voice {src} clips folder) is not"
                )
            for split in ("train", "dev", "test"):
                specs[f"{src}-{tgt}-{split}"] = {
                    "reader": "covost2",
                    "tsv": str(Path(covost) / f"covost_v2.{src}_{tgt}.tsv"),
                    "clips_dir": clips[src],
                    "split": split,
                }
    if specs or splits:
        raw["splits"] = {**specs, **splits}
    return raw


# settings added after corpora were first built: in the key (and folder name) only when not at their default,
# so that a corpus built before a setting existed keeps its key and folder
KEYED_WHEN_SET = ("train_other_share", "ast_dev")


def keyed_config(cfg: CorpusConfig) -> dict:
    """``asdict(cfg)`` less the ``KEYED_WHEN_SET`` settings that are at their default: what keys a corpus."""
    row = asdict(cfg)
    defaults = {f.name: f.default for f in fields(CorpusConfig)}
    for name in KEYED_WHEN_SET:
        if row[name] == defaults[name]:
            del row[name]
    return row


def corpus_key(cfg: CorpusConfig, piper: bool, pools: TextPools | None = None) -> str:
    """The key a built corpus records in corpus.json: a change rebuilds (only the utterances that changed)."""
    texts = None if pools is None else key_of(pools.to_json())
    return key_of(keyed_config(cfg), CORPUS_VERSION, piper, texts)


def corpus_name(cfg: CorpusConfig) -> str:
    if cfg.name:
        return cfg.name
    plain = keyed_config(CorpusConfig(**{"size": cfg.size, **PRESETS[cfg.size]}))
    mine = keyed_config(cfg)
    return cfg.size if mine == plain else f"{cfg.size}-{key_of(mine)[:8]}"


def corpus_dir(profile: str | os.PathLike | dict | CorpusConfig | None = "default") -> Path:
    """Where ``build_corpus`` writes the corpus of a profile (its folder is named by its settings)."""
    return artifact_path("corpus", corpus_name(corpus_config(profile)))


# -------------------------------------------------------------------------------------------- planning
@dataclass
class Item:
    id: str
    key: str
    text: str
    src_lang: str = "en"
    tgt_lang: str | None = None
    translation: str | None = None


def _norm(text: str) -> str:
    return " ".join(words(text))


class _Claims:
    """Sentences (normalised, any language) and Bible verses already given to a split."""

    def __init__(self):
        self.keys: set[str] = set()
        self.texts: set[str] = set()

    def free(self, key: str, *texts: str) -> bool:
        return key not in self.keys and not any(_norm(t) in self.texts for t in texts)

    def claim(self, key: str, *texts: str) -> None:
        self.keys.add(key)
        self.texts.update(_norm(t) for t in texts)


def _take_random(cands: list[tuple], n: int, rng: np.random.Generator, claims: _Claims) -> list[tuple]:
    out = []
    for i in rng.permutation(len(cands)):
        if len(out) == n:
            break
        if claims.free(*cands[i]):
            claims.claim(*cands[i])
            out.append(cands[i])
    return out


def _take_low_oov(cands, n, rng, claims, vocabs: list[set], max_oov: float) -> list[tuple]:
    """Random free candidates, each kept only while every side's running OOV rate stays ≤ ``max_oov``
    (side i of candidate c is c[1 + i], checked against ``vocabs[i]``)."""
    out, seen, unseen = [], [0] * len(vocabs), [0] * len(vocabs)
    order = rng.permutation(len(cands))
    for i in order:
        if len(out) == n:
            return out
        cand = cands[i]
        if not claims.free(*cand):
            continue
        counts = [
            (len(ws), sum(w not in v for w in ws))
            for ws, v in ((words(cand[1 + s]), vocabs[s]) for s in range(len(vocabs)))
        ]
        if all((unseen[s] + u) <= max_oov * (seen[s] + t) for s, (t, u) in enumerate(counts)):
            claims.claim(*cand)
            out.append(cand)
            for s, (t, u) in enumerate(counts):
                seen[s], unseen[s] = seen[s] + t, unseen[s] + u
    # not enough within budget: fill with the free candidates that have the fewest unseen words
    rest = [cands[i] for i in order if claims.free(*cands[i])]
    rest.sort(key=lambda c: sum(sum(w not in vocabs[s] for w in words(c[1 + s])) for s in range(len(vocabs))))
    for cand in rest:
        if len(out) == n:
            break
        if claims.free(*cand):
            claims.claim(*cand)
            out.append(cand)
    return out


def _vocab(texts) -> set[str]:
    return {w for t in texts for w in words(t)}


def plan_texts(cfg: CorpusConfig, pools: TextPools) -> dict[str, list[Item]]:
    """Which sentence goes to which split (the synthetic splits not taken from a real corpus)."""
    rng = np.random.default_rng(cfg.seed)
    claims = _Claims()
    want = [s for s in SPLITS if s not in cfg.splits and s != "real"]
    plan: dict[str, list[Item]] = {}

    def ids(split, rows):
        return [f"{split}-{row[0].replace(':', '-')}" for row in rows]

    # training sets first, at random: as many distinct sentences as asked for (or as exist)
    if "en-de-train" in want:
        rows = _take_random(pools.en_de, cfg.ast_train, rng, claims)
        plan["en-de-train"] = [
            Item(i, k, en, "en", "de", de) for i, (k, en, de) in zip(ids("en-de-train", rows), rows)
        ]
    if "fr-en-train" in want:
        rows = _take_random(pools.fr_en, cfg.ast_train, rng, claims)
        plan["fr-en-train"] = [
            Item(i, k, fr, "fr", "en", en) for i, (k, fr, en) in zip(ids("fr-en-train", rows), rows)
        ]
    if "train" in want:
        rows = _take_random(pools.english, cfg.train, rng, claims)
        items = [Item(i, k, t) for i, (k, t) in zip(ids("train", rows), rows)]
        if rows and len(rows) < cfg.train:  # more utterances than sentences: repeat with other voices
            base = list(items)
            for r in range(cfg.train - len(base)):
                src = base[r % len(base)]
                items.append(Item(f"{src.id}-r{r // len(base) + 1}", src.key, src.text))
        plan["train"] = items
    # test sets: held-out sentences within the OOV budget
    train_vocab = _vocab(it.text for it in plan.get("train", []))
    for split in ASR_TEST_SPLITS:
        if split in want:
            rows = _take_low_oov(pools.english, cfg.test, rng, claims, [train_vocab], cfg.max_oov)
            plan[split] = [Item(i, k, t) for i, (k, t) in zip(ids(split, rows), rows)]
    if "en-de-test" in want:
        tr = plan.get("en-de-train", [])
        vocabs = [_vocab(it.text for it in tr), _vocab(it.translation for it in tr)]
        rows = _take_low_oov(pools.en_de, cfg.ast_test, rng, claims, vocabs, cfg.max_oov)
        plan["en-de-test"] = [
            Item(i, k, en, "en", "de", de) for i, (k, en, de) in zip(ids("en-de-test", rows), rows)
        ]
    if "fr-en-test" in want:
        tr = plan.get("fr-en-train", [])
        vocabs = [_vocab(it.text for it in tr), _vocab(it.translation for it in tr)]
        rows = _take_low_oov(pools.fr_en, cfg.ast_test, rng, claims, vocabs, cfg.max_oov)
        plan["fr-en-test"] = [
            Item(i, k, fr, "fr", "en", en) for i, (k, fr, en) in zip(ids("fr-en-test", rows), rows)
        ]
    # validation last, so that adding it left every other split's sentences as they were
    if "dev" in want:
        rows = _take_low_oov(pools.english, cfg.dev, rng, claims, [train_vocab], cfg.max_oov)
        plan["dev"] = [Item(i, k, t) for i, (k, t) in zip(ids("dev", rows), rows)]
    # translation validation after it, for the same reason; only beside a synthesised training split (a
    # direction read from a real corpus has its validation split from there, or none)
    for pair, pool in (("en-de", pools.en_de), ("fr-en", pools.fr_en)):
        split, src, tgt = f"{pair}-dev", *pair.split("-")
        if cfg.ast_dev and split in want and f"{pair}-train" in plan:
            tr = plan[f"{pair}-train"]
            vocabs = [_vocab(it.text for it in tr), _vocab(it.translation for it in tr)]
            rows = _take_low_oov(pool, cfg.ast_dev, rng, claims, vocabs, cfg.max_oov)
            plan[split] = [Item(i, k, s, src, tgt, t) for i, (k, s, t) in zip(ids(split, rows), rows)]
    return plan


def _voice_for(split: str, rng: np.random.Generator, cfg: CorpusConfig, piper: bool) -> synth.Voice:
    if split.startswith("fr-en"):
        return synth.FRENCH_ESPEAK[rng.integers(len(synth.FRENCH_ESPEAK))]
    if split == "dev-ood":
        if piper and rng.random() < cfg.piper_share:
            return synth.PIPER_VOICE
        return synth.HELDOUT_ESPEAK[rng.integers(len(synth.HELDOUT_ESPEAK))]
    if rng.random() < cfg.flite_share:
        return synth.FLITE_VOICES[rng.integers(len(synth.FLITE_VOICES))]
    return synth.TRAIN_ESPEAK[rng.integers(len(synth.TRAIN_ESPEAK))]


def make_jobs(
    cfg: CorpusConfig, plan: dict[str, list[Item]], out: Path, piper: bool
) -> dict[str, list[synth.Job]]:
    jobs = {}
    for split, items in plan.items():
        jobs[split] = []
        for it in items:
            rng = synth.utterance_rng(cfg.seed, it.id)
            voice = _voice_for(split, rng, cfg, piper)
            params = synth.draw_params(rng, voice, degrade=split == "test-other")
            # drawn last (and only when asked for), so that at share 0 every draw is what it was
            if split == "train" and cfg.train_other_share > 0 and rng.random() < cfg.train_other_share:
                params.update(synth.draw_degradation(rng))
            jobs[split].append(
                synth.Job(it.id, it.text, voice, params, str(out / "audio" / split / f"{it.id}.wav"))
            )
    return jobs


def _specs(out: Path, jobs: list[synth.Job]) -> list[dict]:
    """Job recipes for plan.json, with paths relative to the corpus folder (so it can be moved)."""
    return [{**j.to_json(), "out": Path(j.out).relative_to(out).as_posix()} for j in jobs]


def _reconcile(out: Path, specs: list[dict]) -> None:
    """Delete audio an earlier plan made in ``out`` whose recipe differs (or that the new plan drops)."""
    plan_file = out / "plan.json"
    if not plan_file.exists():
        return
    root = out.resolve()
    try:
        old = json.loads(plan_file.read_text()).get("jobs", [])
        paths = [(root / j["out"]).resolve() for j in old]  # (absolute in plans written before v1 was final)
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError):
        return
    new = {j["out"]: j for j in specs}
    for spec, path in zip(old, paths):
        if not path.is_relative_to(root) or path.suffix != ".wav":
            continue  # never touch anything outside this corpus
        rel = path.relative_to(root).as_posix()
        if new.get(rel) != {**spec, "out": rel} and path.exists():
            path.unlink()


# -------------------------------------------------------------------------------------------- building
def oov_rate(texts, vocab: set[str]) -> float:
    tokens = [w for t in texts for w in words(t)]
    return round(sum(w not in vocab for w in tokens) / max(len(tokens), 1), 4)


def _copy_real(out: Path) -> list[Utterance]:
    utts = []
    for utt in read_librivox_testdata():
        dest = out / "audio" / "real" / Path(utt.audio).name
        if not dest.exists():
            with atomic_path(dest) as tmp:
                shutil.copyfile(utt.audio, tmp)
        utts.append(Utterance(**{**asdict(utt), "id": f"real-{utt.id}", "audio": str(dest)}))
    return utts


def corpus_paths(out: Path, splits) -> dict[str, Path]:
    return {s: out / f"{s}.jsonl" for s in SPLITS if s in splits}


def build_corpus(
    profile_or_size="default",
    out_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    pools: TextPools | None = None,
) -> dict[str, Path]:
    """Build (or resume, or just find) a corpus; returns ``{split: manifest path}``.

    ``profile_or_size``: ``"smoke"``, ``"default"``, a profile YAML path, a dict, or a CorpusConfig.
    ``pools``: sentence pools to use instead of the packaged sources (tests).
    """
    cfg = corpus_config(profile_or_size)
    piper = synth.piper_available()
    out = Path(out_dir) if out_dir else corpus_dir(cfg)
    key = corpus_key(cfg, piper, pools)
    if (paths := _built(out, key)) is not None:
        return paths
    with entry_lock(out):  # one builder per corpus folder; a second run waits, then finds it built
        if (paths := _built(out, key)) is not None:
            return paths
        return _build(cfg, out, key, piper, workers, pools)


def _built(out: Path, key: str) -> dict[str, Path] | None:
    """The manifests of the finished corpus of ``key`` in ``out``; None when it is not (yet) there."""
    summary_file = out / "corpus.json"
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
        paths = corpus_paths(out, summary.get("counts", {}))
        if summary.get("key") == key and all(p.exists() for p in paths.values()):
            return paths
    return None


def _build(cfg: CorpusConfig, out: Path, key: str, piper: bool, workers: int | None,
           pools: TextPools | None) -> dict[str, Path]:
    summary_file = out / "corpus.json"
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)

    synthetic = [s for s in SPLITS if s not in cfg.splits and s != "real"]
    if synthetic and pools is None:
        pools = load_text_pools()
    plan = plan_texts(cfg, pools) if synthetic else {}
    jobs = make_jobs(cfg, plan, out, piper)
    all_jobs = [j for split in SPLITS if split in plan for j in jobs[split]]  # ASR first: most needed
    specs = _specs(out, all_jobs)
    _reconcile(out, specs)
    atomic_write_json(out / "plan.json", {"key": key, "config": asdict(cfg), "jobs": specs})
    made = sum(1 for j in all_jobs if not Path(j.out).exists())
    failures = synth.run_jobs(all_jobs, workers=workers, desc=f"corpus {out.name}")
    synth_seconds = time.time() - start

    manifests: dict[str, list[Utterance]] = {}
    for split, items in plan.items():
        utts = []
        for it, job in zip(items, jobs[split]):
            if Path(job.out).exists():
                seconds, rate = audio_seconds(job.out)
                utts.append(
                    Utterance(
                        it.id,
                        job.out,
                        round(seconds, 4),
                        rate,
                        it.text,
                        it.src_lang,
                        it.tgt_lang,
                        it.translation,
                        job.voice.label,
                    )
                )
        manifests[split] = utts
    for split, spec in cfg.splits.items():
        if split == "real":
            continue
        manifests[split] = read_external(spec, out / "audio" / split)
    if cfg.real:
        manifests["real"] = (
            read_external(cfg.splits["real"], out / "audio" / "real")
            if "real" in cfg.splits
            else _copy_real(out)
        )
    for split, utts in manifests.items():
        write_manifest(out / f"{split}.jsonl", utts)

    summary = summarize(manifests)
    summary.update(
        key=key,
        name=out.name,
        config=asdict(cfg),
        piper=piper,
        version=CORPUS_VERSION,
        failures=failures[:50],
        failed=len(failures),
        made_this_run=made,
        build_seconds=round(time.time() - start, 1),
        synthesis_seconds=round(synth_seconds, 1),
        sources=pools.sources if synthetic else {},
    )
    degraded = sum(1 for j in jobs.get("train", []) if "snr_db" in j.params and Path(j.out).exists())
    if degraded:  # (train_other_share > 0)
        summary["degraded"] = {"train": degraded}
    atomic_write_json(summary_file, summary)
    return corpus_paths(out, manifests)


def summarize(manifests: dict[str, list[Utterance]]) -> dict:
    """Counts, hours, voices, and OOV rates (test vs its training transcripts; translation: both sides)."""
    train_vocab = _vocab(u.text for u in manifests.get("train", []))
    oov = {}
    for split in (*ASR_TEST_SPLITS, "dev", "real"):
        if split in manifests and train_vocab:
            oov[split] = oov_rate((u.text for u in manifests[split]), train_vocab)
    for pair in ("en-de", "fr-en"):
        tr = manifests.get(f"{pair}-train")
        for split in (f"{pair}-test", f"{pair}-dev"):
            if tr and (te := manifests.get(split)):
                oov[split] = {
                    "source": oov_rate((u.text for u in te), _vocab(u.text for u in tr)),
                    "target": oov_rate((u.translation for u in te), _vocab(u.translation for u in tr)),
                }
    return {
        "splits": list(manifests),
        "counts": {s: len(u) for s, u in manifests.items()},
        "hours": {s: round(sum(x.duration for x in u) / 3600, 3) for s, u in manifests.items()},
        "distinct_sentences": {s: len({_norm(x.text) for x in u}) for s, u in manifests.items()},
        "voices": {
            s: dict(Counter((x.speaker or "?").split(":")[0] for x in u)) for s, u in manifests.items()
        },
        "oov": oov,
        "train_vocabulary": len(train_vocab),
    }


def load_corpus(profile_or_size="default", out_dir=None) -> dict[str, list[Utterance]]:
    """{split: utterances} of a built corpus (builds it first if needed)."""
    return {s: read_manifest(p) for s, p in build_corpus(profile_or_size, out_dir).items()}
