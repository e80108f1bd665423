"""The embedded corpus: split disjointness, OOV selection, determinism, resumption, config parsing.

Builds use a small made-up sentence pool (no download) and a tiny config, so each takes seconds.
"""

import json
import shutil
from dataclasses import asdict

import numpy as np
import pytest

from speechllm_redundancy.cache import key_of
from speechllm_redundancy.data import corpus as corpus_mod
from speechllm_redundancy.data import synth
from speechllm_redundancy.data.corpus import (
    SPLITS,
    CorpusConfig,
    build_corpus,
    corpus_config,
    corpus_name,
    plan_texts,
)
from speechllm_redundancy.data.manifest import read_manifest, validate_manifest
from speechllm_redundancy.data.readers import LIBRIVOX_TESTDATA
from speechllm_redundancy.data.text_sources import TextPools, words
from speechllm_redundancy.errors import UserError

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox (Debian) are needed to synthesise speech",
)

VOCAB = [
    "the",
    "cat",
    "dog",
    "man",
    "woman",
    "child",
    "house",
    "river",
    "stone",
    "tree",
    "bread",
    "water",
    "light",
    "fire",
    "road",
    "city",
    "king",
    "field",
    "sees",
    "finds",
    "takes",
    "gives",
    "keeps",
    "loves",
    "builds",
    "walks",
    "near",
    "under",
    "over",
    "with",
    "from",
    "into",
    "and",
    "but",
    "red",
    "old",
    "small",
    "green",
    "quiet",
    "bright",
]
GERMAN = ["der", "die", "das", "und", "mit", "von", "Haus", "Baum", "Stadt", "Wasser", "Licht"]
FRENCH = ["le", "la", "les", "et", "avec", "de", "maison", "arbre", "ville", "eau", "lumière"]


def make_pools(n_english=160, n_pairs=120, seed=0) -> TextPools:
    rng = np.random.default_rng(seed)

    def sentence(vocab, n):
        return " ".join(rng.choice(vocab, size=n)).capitalize() + "."

    english = [(f"wn:x{i}", sentence(VOCAB, 6 + i % 5)) for i in range(n_english)]
    verses = [f"web:1.{i // 30 + 1}.{i % 30 + 1}" for i in range(n_pairs)]
    web_en = {k: sentence(VOCAB, 6 + i % 7) for i, k in enumerate(verses)}
    english += list(web_en.items())  # verses are in the English pool too, as with the real sources
    en_de = [(k, web_en[k], sentence(GERMAN, 6)) for k in verses]
    fr_en = [(k, sentence(FRENCH, 6), web_en[k]) for k in verses]
    return TextPools(english=english, en_de=en_de, fr_en=fr_en, sources={"test": "made-up"})


TINY = {
    "size": "smoke",
    "train": 10,
    "test": 3,
    "dev": 3,
    "ast_train": 4,
    "ast_test": 2,
    "real": False,
    "piper_share": 0.0,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "tiny"
    paths = build_corpus(TINY, out, workers=2, pools=make_pools())
    return out, paths


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_split_is_built_and_valid(built):
    out, paths = built
    assert list(paths) == [s for s in SPLITS if s not in ("real", "en-de-dev", "fr-en-dev")]  # ast_dev: 0
    summary = json.loads((out / "corpus.json").read_text())
    assert summary["counts"] == {
        "train": 10,
        "test-clean": 3,
        "test-other": 3,
        "dev-ood": 3,
        "dev": 3,
        "en-de-train": 4,
        "en-de-test": 2,
        "fr-en-train": 4,
        "fr-en-test": 2,
    }
    assert summary["failed"] == 0
    for split, path in paths.items():
        assert validate_manifest(path)["utterances"] == summary["counts"][split]
        for utt in read_manifest(path):
            assert utt.sample_rate == 16000 and utt.audio.endswith(f"audio/{split}/{utt.id}.wav")
    fr = read_manifest(paths["fr-en-test"])[0]
    assert (fr.src_lang, fr.tgt_lang) == ("fr", "en") and fr.speaker.startswith("espeak:fr")
    assert all(u.tgt_lang == "de" and u.translation for u in read_manifest(paths["en-de-train"]))
    # dev-ood: only held-out voices; the others: only training voices
    held = {v.label for v in synth.HELDOUT_ESPEAK} | {synth.PIPER_VOICE.label}
    train_voices = {v.label for v in synth.FLITE_VOICES + synth.TRAIN_ESPEAK}
    assert all(u.speaker in held for u in read_manifest(paths["dev-ood"]))
    for split in ("train", "test-clean", "test-other", "en-de-train"):
        assert all(u.speaker in train_voices for u in read_manifest(paths[split]))


def test_no_sentence_or_verse_in_two_splits(built):
    out, paths = built
    plan = json.loads((out / "plan.json").read_text())
    seen_texts, seen_ids = {}, set()
    for split, path in paths.items():
        for utt in read_manifest(path):
            assert utt.id not in seen_ids
            seen_ids.add(utt.id)
            for text in filter(None, (utt.text, utt.translation)):
                norm = " ".join(words(text))
                assert seen_texts.setdefault(norm, split) == split, (
                    f"{text!r} in {seen_texts[norm]} and {split}"
                )
    verse_of = {j["id"]: j["id"].split("-web-")[-1] for j in plan["jobs"] if "-web-" in j["id"]}
    splits_of_verse = {}
    for split, path in paths.items():
        for utt in read_manifest(path):
            if utt.id in verse_of:
                assert splits_of_verse.setdefault(verse_of[utt.id], split) == split


def test_test_other_is_degraded_and_test_clean_is_not(built):
    out, _ = built
    jobs = json.loads((out / "plan.json").read_text())["jobs"]
    other = [j["params"] for j in jobs if j["id"].startswith("test-other")]
    clean = [j["params"] for j in jobs if j["id"].startswith("test-clean")]
    assert all(5 <= p["snr_db"] <= 15 for p in other)
    assert not any("snr_db" in p or "reverb" in p or "tempo" in p for p in clean)


def test_same_seed_same_manifests_and_audio(built, tmp_path):
    out, paths = built
    again = build_corpus(TINY, tmp_path / "again", workers=1, pools=make_pools())
    for split in paths:
        assert _rows(paths[split]) == _rows(again[split])
        for row in _rows(paths[split]):
            assert (out / row["audio"]).read_bytes() == (tmp_path / "again" / row["audio"]).read_bytes()
    seeds = [plan_texts(CorpusConfig(**{**TINY, "seed": s}), make_pools()) for s in (0, 0, 1)]
    assert seeds[0] == seeds[1] and seeds[0]["train"] != seeds[2]["train"]


def test_resume_makes_only_what_is_missing(built, tmp_path):
    out, paths = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    gone = [copy / r["audio"] for r in _rows(copy / "train.jsonl")[:3]]
    for path in gone:
        path.unlink()
    (copy / "corpus.json").unlink()  # as if killed before the end
    (copy / "audio" / "train" / ".x.wav.abc.tmp").mkdir()  # debris of a killed atomic write
    before = {p: p.stat().st_mtime_ns for p in (copy / "audio").rglob("*.wav") if p.exists()}
    build_corpus(TINY, copy, workers=1, pools=make_pools())
    summary = json.loads((copy / "corpus.json").read_text())
    assert summary["made_this_run"] == 3
    assert all(p.exists() for p in gone)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # untouched
    assert _rows(copy / "train.jsonl")[0]["audio"] == _rows(paths["train"])[0]["audio"]
    # a finished corpus is found, not rebuilt
    build_corpus(TINY, copy, workers=1, pools=make_pools())
    assert json.loads((copy / "corpus.json").read_text())["build_seconds"] == summary["build_seconds"]


def test_changed_settings_redo_only_changed_utterances(built, tmp_path):
    out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    wavs = {p.name: p.stat().st_mtime_ns for p in (copy / "audio").rglob("*.wav")}
    build_corpus({**TINY, "piper_share": 0.0, "flite_share": 0.9}, copy, workers=1, pools=make_pools())
    plan = {j["out"]: j for j in json.loads((copy / "plan.json").read_text())["jobs"]}
    for path in plan:
        assert (copy / path).exists()
    remade = [p.name for p in (copy / "audio").rglob("*.wav") if p.stat().st_mtime_ns != wavs.get(p.name)]
    assert 0 < len(remade) < len(wavs)  # the voice changed for some utterances only


def test_the_validation_split_leaves_every_other_split_as_it_was():
    """`dev` is drawn last: a corpus built before it existed keeps its sentences (and so its audio)."""
    pools = make_pools()
    without = plan_texts(CorpusConfig(**{**TINY, "dev": 0}), pools)
    with_dev = plan_texts(CorpusConfig(**TINY), pools)
    assert len(with_dev["dev"]) == 3 and without.get("dev", []) == []
    assert {s: p for s, p in with_dev.items() if s != "dev"} == {s: p for s, p in without.items() if s != "dev"}
    used = {it.text for s, p in with_dev.items() if s != "dev" for it in p}
    assert not used & {it.text for it in with_dev["dev"]}


def test_oov_selection_and_report(built):
    out, _ = built
    summary = json.loads((out / "corpus.json").read_text())
    assert set(summary["oov"]) == {"test-clean", "test-other", "dev-ood", "dev", "en-de-test", "fr-en-test"}
    assert 0 <= summary["oov"]["test-clean"] <= 1
    # with a training set that covers the vocabulary, selection honours the budget
    pools = make_pools(n_english=400)
    plan = plan_texts(CorpusConfig(**{**TINY, "train": 300, "test": 20, "max_oov": 0.0}), pools)
    vocab = {w for it in plan["train"] for w in words(it.text)}
    for split in ("test-clean", "test-other", "dev-ood", "dev"):
        assert len(plan[split]) == (20 if split != "dev" else 3)
        assert all(w in vocab for it in plan[split] for w in words(it.text))


def test_more_utterances_than_sentences_repeats_with_other_voices(tmp_path):
    pools = make_pools(n_english=20, n_pairs=10)
    plan = plan_texts(CorpusConfig(**{**TINY, "train": 40, "test": 1, "ast_train": 2, "ast_test": 1}), pools)
    train = plan["train"]
    assert len(train) == 40 and len({it.id for it in train}) == 40
    assert len({it.text for it in train}) < 40
    jobs = corpus_mod.make_jobs(CorpusConfig(**TINY), {"train": train}, tmp_path, piper=False)["train"]
    assert len({(j.text, j.voice, json.dumps(j.params)) for j in jobs}) == 40


def test_failed_synthesis_is_reported_not_fatal(tmp_path, monkeypatch):
    broken = [synth.Voice("no-such-engine", "xx")]
    monkeypatch.setattr(synth, "TRAIN_ESPEAK", broken)
    monkeypatch.setattr(synth, "FLITE_VOICES", broken)
    paths = build_corpus(
        {**TINY, "train": 2, "test": 1, "ast_train": 1, "ast_test": 1},
        tmp_path / "c",
        workers=1,
        pools=make_pools(),
    )
    summary = json.loads((tmp_path / "c" / "corpus.json").read_text())
    assert summary["failed"] >= 2 and summary["counts"]["train"] == 0
    assert "unknown engine no-such-engine" in summary["failures"][0]
    assert summary["counts"]["fr-en-train"] == 1  # French voices were fine
    assert paths["fr-en-train"].exists()


@pytest.mark.skipif(not LIBRIVOX_TESTDATA.is_dir(), reason="Debian pocketsphinx-testdata not installed")
def test_real_split_copies_the_librivox_clips(tmp_path):
    paths = build_corpus(
        {**TINY, "train": 2, "test": 1, "ast_train": 1, "ast_test": 1, "real": True},
        tmp_path / "c",
        workers=1,
        pools=make_pools(),
    )
    real = read_manifest(paths["real"])
    assert len(real) == 5 and all(u.audio.startswith(str(tmp_path)) for u in real)
    assert "real" in json.loads((tmp_path / "c" / "corpus.json").read_text())["oov"]


def test_external_split_from_a_manifest(built, tmp_path):
    _, paths = built
    spec = {"reader": "manifest", "path": str(paths["test-clean"])}
    out = build_corpus({**TINY, "splits": {"dev-ood": spec}}, tmp_path / "c", workers=1, pools=make_pools())
    assert [u.id for u in read_manifest(out["dev-ood"])] == [u.id for u in read_manifest(paths["test-clean"])]
    assert not (tmp_path / "c" / "audio" / "dev-ood").exists()


def test_config_from_names_yaml_and_errors(tmp_path):
    assert corpus_config("smoke").train == 48 and corpus_config("default").train == 20000
    assert corpus_name(corpus_config("default")) == "default"
    profile = tmp_path / "mine.yaml"
    profile.write_text("models: [tiny-llama]\ncorpus:\n  size: smoke\n  train: 64\n  seed: 3\n")
    cfg = corpus_config(profile)
    assert (cfg.size, cfg.train, cfg.test, cfg.seed) == ("smoke", 64, 8, 3)
    assert corpus_name(cfg).startswith("smoke-")
    profile.write_text("corpus:\n  size: smoke\n  trian: 64\n")
    with pytest.raises(UserError, match="unknown corpus setting\\(s\\) trian"):
        corpus_config(profile)
    with pytest.raises(UserError, match="none.yaml' not found: pass one of .*smoke"):
        corpus_config(tmp_path / "none.yaml")
    with pytest.raises(UserError, match="corpus size 'huge' unknown"):
        corpus_config({"size": "huge"})
    with pytest.raises(UserError, match="corpus.train must be a non-negative integer"):
        corpus_config({"train": -1})
    with pytest.raises(UserError, match="unknown split"):
        corpus_config({"splits": {"validation": {}}})


def test_paper_profile_shorthand_reads_real_corpora(tmp_path):
    cfg = corpus_config(
        {
            "librispeech": "/data/LS",
            "loquacious": "/data/loq",
            "covost2": "/data/covost",
            "common_voice_en": "/cv/en/clips",
            "common_voice_fr": "/cv/fr/clips",
            "splits": {"test-other": {"reader": "manifest", "path": "mine.jsonl"}},
        }
    )
    assert cfg.splits["train"]["subsets"] == ["train-clean-100", "train-clean-360", "train-other-500"]
    assert cfg.splits["dev-ood"] == {"reader": "loquacious", "root": "/data/loq", "split": "dev"}
    assert cfg.splits["dev"] == {"reader": "librispeech", "root": "/data/LS", "subsets": "dev-clean"}
    assert cfg.splits["fr-en-test"]["tsv"] == "/data/covost/covost_v2.fr_en.tsv"
    assert cfg.splits["en-de-dev"] == {  # the translation paths' inputs, as `dev` is for ASR
        "reader": "covost2", "tsv": "/data/covost/covost_v2.en_de.tsv", "clips_dir": "/cv/en/clips", "split": "dev"}
    assert cfg.splits["test-other"]["reader"] == "manifest"  # explicit splits win
    with pytest.raises(UserError, match="common_voice_fr"):
        corpus_config({"covost2": "/data/covost", "common_voice_en": "/cv/en/clips"})


# ------------------------------------------------------------------------------ train_other_share
def _digest(cfg, pools, out):
    """Key, folder name, and digests of the plan and of the jobs (paths relative to ``out``) of a config."""
    plan = plan_texts(cfg, pools)
    jobs = corpus_mod.make_jobs(cfg, plan, out, piper=False)
    return (
        corpus_mod.corpus_key(cfg, False, pools),
        corpus_name(cfg),
        key_of({s: [asdict(it) for it in items] for s, items in plan.items()}),
        key_of({s: corpus_mod._specs(out, js) for s, js in jobs.items()}),
    )


def test_train_other_share_at_its_default_changes_no_corpus(tmp_path):
    """Guards cache compatibility: these literals were recorded from the code BEFORE train_other_share
    existed (commit 259844b). If one changes, every cached corpus is rebuilt (or silently differs): don't
    update them unless you also bump CORPUS_VERSION on purpose."""
    before = ("dde98307f4447f5c", "smoke-61216513", "8c7427d38b689655", "cf19057fa34311b9")
    pools = make_pools()
    assert corpus_config(TINY).train_other_share == 0.0
    for share in (None, 0.0, 0):
        raw = TINY if share is None else {**TINY, "train_other_share": share}
        assert _digest(corpus_config(raw), pools, tmp_path) == before
    assert corpus_mod.corpus_key(corpus_config(TINY), False) == "e81456fa3d26306f"  # packaged pools
    assert corpus_name(corpus_config("smoke")) == "smoke"
    # a share > 0 is a different corpus, in its own folder
    other = _digest(corpus_config({**TINY, "train_other_share": 0.5}), pools, tmp_path)
    assert other[0] != before[0] and other[1] != before[1] and other[1].startswith("smoke-")
    assert other[2] == before[2]  # same sentences


def test_train_other_share_degrades_train_only(tmp_path):
    pools = make_pools()
    cfg = corpus_config(TINY)
    plan = plan_texts(cfg, pools)
    clean = corpus_mod.make_jobs(cfg, plan, tmp_path, piper=False)
    degrade_all = corpus_config({**TINY, "train_other_share": 1.0})
    full = corpus_mod.make_jobs(degrade_all, plan, tmp_path, piper=False)
    assert len(full["train"]) == 10
    for job, was in zip(full["train"], clean["train"]):
        assert 5 <= job.params["snr_db"] <= 15 and job.params["noise"] in ("white", "pink", "brown")
        # same voice and clean prosody as without the setting: the degradation is only added
        assert job.voice == was.voice and {k: job.params[k] for k in was.params} == was.params
        assert "snr_db" not in was.params
    for split in ("test-clean", "dev", "dev-ood", "en-de-train", "fr-en-train", "test-other"):
        assert full[split] == clean[split], split
    for split in ("test-clean", "dev", "dev-ood", "en-de-train", "fr-en-train", "en-de-test", "fr-en-test"):
        assert not any("snr_db" in j.params for j in full[split]), split


def test_train_other_share_is_a_share_and_deterministic(tmp_path):
    text = "The cat sees the dog."
    plan = {"train": [corpus_mod.Item(f"train-wn-x{i}", f"wn:x{i}", text) for i in range(200)]}
    cfg = corpus_config({**TINY, "train_other_share": 0.5})
    runs = [corpus_mod.make_jobs(cfg, plan, tmp_path, piper=False)["train"] for _ in range(2)]
    assert runs[0] == runs[1]
    degraded = sum("snr_db" in j.params for j in runs[0])
    assert 60 <= degraded <= 140, degraded


def test_shares_are_validated():
    for key in ("train_other_share", "flite_share", "piper_share"):
        for bad in (-0.1, 1.5, "half", True, None):
            with pytest.raises(UserError, match=f"corpus.{key} must be a number from 0 to 1, got"):
                corpus_config({**TINY, key: bad})
        assert getattr(corpus_config({**TINY, key: 1}), key) == 1


def test_corpus_json_counts_degraded_train_utterances(built, tmp_path):
    out, _ = built
    assert "degraded" not in json.loads((out / "corpus.json").read_text())
    small = {**TINY, "train": 3, "test": 1, "dev": 1, "ast_train": 1, "ast_test": 1, "train_other_share": 1.0}
    build_corpus(small, tmp_path / "c", workers=2, pools=make_pools())
    summary = json.loads((tmp_path / "c" / "corpus.json").read_text())
    assert summary["degraded"] == {"train": 3} and summary["counts"]["train"] == 3
    assert summary["config"]["train_other_share"] == 1.0


# ------------------------------------------------------------------------------ ast_dev
def test_ast_dev_at_its_default_changes_no_corpus(tmp_path):
    """Guards cache compatibility as the train_other_share test does (same literals, recorded before either
    setting existed): without translation validation a corpus is what it was."""
    before = ("dde98307f4447f5c", "smoke-61216513", "8c7427d38b689655", "cf19057fa34311b9")
    pools = make_pools()
    assert corpus_config(TINY).ast_dev == 0
    for n in (None, 0):
        cfg = corpus_config(TINY if n is None else {**TINY, "ast_dev": n})
        assert _digest(cfg, pools, tmp_path) == before
        assert not {"en-de-dev", "fr-en-dev"} & set(plan_texts(cfg, pools))
    assert corpus_mod.corpus_key(corpus_config({**TINY, "ast_dev": 0}), False) == "e81456fa3d26306f"
    # translation validation is a different corpus, in its own folder
    other = _digest(corpus_config({**TINY, "ast_dev": 2}), pools, tmp_path)
    assert other[0] != before[0] and other[1] != before[1] and other[1].startswith("smoke-")


def test_translation_validation_leaves_every_other_split_as_it_was(tmp_path):
    """Planned last: a corpus that adds it keeps every other split's sentences, ids and recipes (so a rebuild
    synthesises the new splits only), and its pairs are in no other split, in any language."""
    pools = make_pools()
    cfg, without = corpus_config({**TINY, "ast_dev": 2}), corpus_config(TINY)
    plan, before = plan_texts(cfg, pools), plan_texts(without, pools)
    assert {s: p for s, p in plan.items() if not s.endswith("-dev") or s == "dev"} == before
    assert [len(plan[s]) for s in ("en-de-dev", "fr-en-dev")] == [2, 2]
    for split, langs in (("en-de-dev", ("en", "de")), ("fr-en-dev", ("fr", "en"))):
        assert all(it.id.startswith(f"{split}-") and (it.src_lang, it.tgt_lang) == langs and it.translation
                   for it in plan[split])
    others = [it for s, p in before.items() for it in p]
    dev = plan["en-de-dev"] + plan["fr-en-dev"]
    assert not {it.key for it in others} & {it.key for it in dev}
    used, held_out = (
        {" ".join(words(t)) for it in items for t in (it.text, it.translation) if t} for items in (others, dev)
    )
    assert not used & held_out
    jobs = corpus_mod.make_jobs(cfg, plan, tmp_path, piper=False)
    jobs_before = corpus_mod.make_jobs(without, before, tmp_path, piper=False)
    assert {s: j for s, j in jobs.items() if s in before} == jobs_before
    # the direction's voices: French for Fr→En, the training voices for En→De
    assert all(j.voice in synth.FRENCH_ESPEAK for j in jobs["fr-en-dev"])
    assert all(j.voice in (*synth.FLITE_VOICES, *synth.TRAIN_ESPEAK) for j in jobs["en-de-dev"])


def test_adding_translation_validation_synthesises_only_it(built, tmp_path):
    out, paths = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    new = build_corpus({**TINY, "ast_dev": 2}, copy, workers=2, pools=make_pools())
    summary = json.loads((copy / "corpus.json").read_text())
    assert summary["made_this_run"] == 4
    assert summary["counts"]["en-de-dev"] == summary["counts"]["fr-en-dev"] == 2
    assert list(new) == [s for s in SPLITS if s != "real"]
    assert set(summary["oov"]["fr-en-dev"]) == {"source", "target"}
    for split in paths:
        assert [(r["id"], r["text"], r["speaker"]) for r in _rows(new[split])] == [
            (r["id"], r["text"], r["speaker"]) for r in _rows(paths[split])
        ]
    for u in read_manifest(new["fr-en-dev"]):
        assert (u.src_lang, u.tgt_lang) == ("fr", "en") and u.translation
        assert u.speaker.startswith("espeak:fr")


def test_translation_validation_only_beside_synthesised_training_speech():
    """A direction read from a real corpus gets no synthetic validation split (its paths then fall back to
    its training split), unless the profile names one under ``splits:``."""
    external = {"reader": "manifest", "path": "en-de-train.jsonl"}
    cfg = corpus_config({**TINY, "ast_dev": 2, "splits": {"en-de-train": external}})
    plan = plan_texts(cfg, make_pools())
    assert "en-de-dev" not in plan and len(plan["fr-en-dev"]) == 2
    cfg = corpus_config({**TINY, "ast_dev": 2, "splits": {"en-de-train": external, "en-de-dev": external}})
    assert cfg.splits["en-de-dev"] == external and "en-de-dev" not in plan_texts(cfg, make_pools())


def test_ast_dev_is_validated():
    for bad in (-1, 1.5, "8", None):
        with pytest.raises(UserError, match=r"corpus.ast_dev must be a non-negative integer, got"):
            corpus_config({**TINY, "ast_dev": bad})


def test_missing_programs_are_named(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="apt-get install sox flite"):
        synth.check_tools({"flite"})
