"""The experiment layer: settings from a notebook's parameters, the study's models, paths and walks through
one set of cache keys, the verdict rules and the healing schedule; and chapters free of cache plumbing."""

import re

import numpy as np
import pytest
import torch

from slam_tiny import save_tiny_llm, save_tiny_whisper, write_manifest_dir
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.experiments import Settings, Study, task_splits, validation_split
from speechllm_redundancy.healing import healing_config
from speechllm_redundancy.paths import REPO_ROOT
from speechllm_redundancy.training import lr_lambda
from speechllm_redundancy.verdicts import lora_claim, tolerance_not_raised

torch.set_num_threads(2)


pytestmark = pytest.mark.usefixtures("artifacts")  # a fresh artifacts folder per test (conftest.py)


def test_settings_come_from_a_notebooks_parameters_and_keep_defaults_for_the_rest():
    namespace = {"encoder": "tiny-wavlm", "eval_limit": 4, "text_llms": ["x"], "healing_steps": 2}
    s = Settings.of(namespace, seed=3)
    assert (s.encoder, s.eval_limit, s.healing_steps, s.seed) == ("tiny-wavlm", 4, 2, 3)
    assert s.recipe == Settings().recipe
    # the chapter's "This run" table: the settings it set, not every knob of every chapter
    assert s.as_dict() == {"seed": 3, "encoder": "tiny-wavlm", "eval_limit": 4, "healing_steps": 2}
    assert "recipe" in Settings().as_dict()


def test_task_splits_name_training_and_evaluation_splits():
    assert task_splits("asr") == ("train", ["test-clean", "test-other", "dev-ood"])
    assert task_splits("ast-fr-en") == ("fr-en-train", ["fr-en-test"])
    with pytest.raises(UserError, match="unknown task 'mt'"):
        task_splits("mt")


def test_paths_come_from_the_tasks_validation_split_where_the_corpus_has_one(tmp_path):
    assert (validation_split("asr"), validation_split("ast-fr-en")) == ("dev", "fr-en-dev")
    with pytest.raises(UserError, match="unknown task 'mt'"):
        validation_split("mt")
    names = ("train", "dev", "en-de-train", "en-de-test", "en-de-dev", "fr-en-train", "fr-en-test")
    manifests = {s: tmp_path / f"{s}.jsonl" for s in names}
    study = Study(Settings(), manifests=manifests)
    assert [study.path_split(t) for t in ("asr", "ast-en-de")] == ["dev", "en-de-dev"]
    assert study.path_split("ast-fr-en") == "fr-en-train"  # a corpus without one: the training split
    assert Study(Settings(), manifests={"train": tmp_path}).path_split() == "train"
    chosen = Study(Settings(path_split="en-de-test"), manifests=manifests)
    assert chosen.path_split("ast-en-de") == "en-de-test"


def test_a_missing_split_is_a_user_error_naming_the_splits_there_are(tmp_path):
    study = Study(Settings(), manifests={"train": tmp_path / "train.jsonl"})
    assert study.eval_sets("asr") == []
    with pytest.raises(UserError, match=r"no split 'en-de-train' \(it has train\)"):
        study.split("en-de-train")


def test_a_study_trains_walks_and_shares_its_points_between_chapters(tmp_path):
    """Two chapters asking for the same model and walk get one trained model and one computed walk."""
    whisper = save_tiny_whisper(tmp_path / "whisper")
    llm = save_tiny_llm(tmp_path / "llm")
    manifest = write_manifest_dir(tmp_path / "corpus", texts=["a b", "c d e", "f g", "h", "i j"])
    manifests = {"train": manifest, "test-clean": manifest}
    settings = Settings(encoder=whisper, recipe="paper", train_steps=3, train_limit=None, eval_limit=2,
                        max_new_tokens=4, path_samples=3, healing_steps=2, whisper_window="full")
    study = Study(settings, manifests)
    run = study.slam(llm)
    assert run.task == "asr" and run.train_split == "train" and run.num_layers == 3 and not run.lora
    path = study.speech_path(run)
    assert set(path) == {1, 2}
    walk = study.walk(run, path, [0.34], strategy="both")
    assert study.eval_sets() == ["test-clean"] and set(walk.set) == {"test-clean"}
    assert sorted(walk.n.unique()) == [0, 1] and set(walk.strategy) == {"both"}
    heal_runs = list((tmp_path / "artifacts" / "sweeps").glob("asr-*/heal-n1-both-*"))
    assert len(heal_runs) == 1

    again = Study(settings, manifests)  # another chapter, same settings
    run2 = again.slam(llm)
    assert run2.key == run.key
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "artifacts").rglob("point-*.json")}
    walk2 = again.walk(run2, again.speech_path(run2), [0.34], strategy="both")
    assert walk2.score.tolist() == walk.score.tolist()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "artifacts").rglob("point-*.json")} == mtimes
    # a map on another split is another cache entry, not the path's; its gold-transcript control a third
    other = study.speech_angles(run, "test-clean", 2)
    assert len(list((tmp_path / "artifacts" / "angles").glob("speech-asr-*.json"))) == 2
    control = study.gold_text_angles(run, "test-clean", 2)
    assert other.num_layers == control.num_layers == 3 and not np.allclose(other.distances, control.distances,
                                                                            equal_nan=True)
    # the unpruned baseline is every walk's n = 0 point: read from the cache, not decoded again
    base = again.baseline(run2)
    assert base.score.tolist() == walk[walk.n == 0].score.tolist()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "artifacts").rglob("point-*.json")} == mtimes


def test_the_untrained_control_reads_the_same_decoder_through_the_front_end_at_its_initialisation(tmp_path):
    """Chapter 1's control of the cpu recipe's by-construction agreement: the same frozen decoder and layout,
    the speech read through the projector, CTC head and soft prompt as they were before training. Its map
    is not the trained model's, it is the same on every call and for every training of one config, and it
    equals a speech map only of a model that was not trained."""
    from types import SimpleNamespace

    from speechllm_redundancy.experiments import SlamRun

    whisper = save_tiny_whisper(tmp_path / "whisper")
    llm = save_tiny_llm(tmp_path / "llm")
    manifest = write_manifest_dir(tmp_path / "corpus", texts=["a b", "c d e", "f g", "h", "i j"])
    manifests = {"train": manifest, "test-clean": manifest}
    settings = Settings(encoder=whisper, recipe="cpu", ctc_steps=3, train_steps=3, train_limit=None,
                        path_samples=3, whisper_window="full")
    study = Study(settings, manifests)
    run = study.slam(llm)
    assert run.model.ctc is not None and run.model.soft_prompt is not None
    weights = {k: v.clone() for k, v in run.model.state_dict().items()}
    trained = study.speech_angles(run, "test-clean", 3)
    untrained = study.untrained_speech_angles(run, "test-clean", 3)
    assert untrained.num_layers == trained.num_layers == 3
    assert not np.allclose(untrained.distances, trained.distances, equal_nan=True)
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in weights.items())  # the run untouched

    # the front end at initialisation: the trained model's config and CTC vocabulary, fresh weights
    control = study.untrained(run)
    assert control.llm is run.model.llm and control.config == run.model.config
    assert torch.equal(control.ctc.vocab, run.model.ctc.vocab) and not control.ctc.blank.any()
    assert not torch.equal(control.projector.net[0].weight, run.model.projector.net[0].weight)
    assert not torch.equal(control.soft_prompt, run.model.soft_prompt)
    twin = study.untrained(run)
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in control.state_dict().items())  # seeded
    lora_run = study.slam(llm, lora={"r": 2})  # at initialisation LoRA is no LoRA: no adapters
    lora_control = study.untrained(lora_run)
    assert lora_control.config.lora is None and not hasattr(lora_control.llm, "peft_config")
    assert hasattr(lora_run.model.llm, "peft_config")  # the run keeps its adapters

    # deterministic and independent of the training: a longer-trained model of the same config, measured
    # afresh (another cache entry), gives the same control map; a cache hit gives it again
    longer = study.slam(llm, steps=5)
    assert longer.key != run.key
    other = study.untrained_speech_angles(longer, "test-clean", 3)
    np.testing.assert_allclose(other.distances, untrained.distances, atol=1e-6)
    built = []
    real_untrained = study.untrained
    study.untrained = lambda r: built.append(r) or real_untrained(r)
    np.testing.assert_array_equal(study.untrained_speech_angles(run, "test-clean", 3).distances,
                                  untrained.distances)
    assert built == []  # a cache hit builds no control model (a LoRA run's would load the decoder again)
    del study.untrained
    assert len(list((tmp_path / "artifacts" / "angles").glob("speech-asr-*.json"))) == 3

    # a model that was not trained reads its speech exactly as the control does
    as_built = SlamRun(run.llm, run.task, control, SimpleNamespace(key="not trained"), run.train_split)
    np.testing.assert_allclose(study.speech_angles(as_built, "test-clean", 3).distances, untrained.distances,
                               atol=1e-6)


def test_tolerance_comparisons_that_cannot_tell_the_decoders_apart_are_not_informative():
    assert tolerance_not_raised(0.0, 0.0, 0.4) is None  # neither removes anything
    assert tolerance_not_raised(0.4, 0.4, 0.4) is None  # both reach the highest level walked
    assert tolerance_not_raised(0.2, 0.2, 0.4) is True
    assert tolerance_not_raised(0.2, 0.4, 0.4) is False
    assert tolerance_not_raised(0.4, 0.0, 0.4) is True


def test_claim_2_needs_both_halves_and_an_informative_second():
    assert lora_claim(True, {"a": True, "b": True}) is True
    assert lora_claim(True, {"a": True, "b": False}) is False
    assert lora_claim(True, {"a": None, "b": True}) is None
    assert lora_claim(False, {"a": None}) is False  # the first half decides
    assert lora_claim(True, {}) is None


def test_a_short_healing_run_warms_up_for_a_tenth_then_decays_to_zero():
    cfg = healing_config(20, seed=1)
    assert cfg.steps == 20 and cfg.warmup_steps == 2 and cfg.seed == 1
    f = lr_lambda(cfg.warmup_steps, cfg.steps)
    rates = [f(step) for step in range(cfg.steps)]
    assert rates[1] == 1.0 and rates[-1] < 0.1 and rates == sorted(rates[:2]) + sorted(rates[2:], reverse=True)
    assert healing_config(3).warmup_steps == 1
    with pytest.raises(UserError, match="healing_steps=0"):
        healing_config(0)


def test_chapters_hold_no_cache_plumbing():
    """Cache keys and artifact folders are the library's business: a chapter asks for models and walks."""
    for chapter in sorted((REPO_ROOT / "notebooks").glob("0*.py")):
        code = chapter.read_text()
        assert not re.search(r"\b(artifact_path|key_of|cached_json)\b", code), chapter.name


def test_the_gold_transcript_control_reads_the_words_in_the_speech_slot_of_the_same_layout():
    """Claim 1's control: the SLAM layout, soft prompt and read position, the transcript's token embeddings
    where the speech goes — so its map differs from the speech map only in the input."""
    from dataclasses import replace

    from speechllm_redundancy.slam import SlamModel
    from test_training import make

    slam = make()
    slam = SlamModel(replace(slam.config, prompt_vectors=2), slam.llm, slam.tokenizer)
    batch = slam.embed_text_batch(["ab cd", "e"], "asr")
    embed = slam.llm.get_input_embeddings()
    before, after = slam.layout.pieces("asr")
    for row, text in enumerate(["ab cd", "e"]):
        words = slam.layout._ids(text)
        n = len(before) + 2 + len(words) + len(after)
        assert batch["attention_mask"][row].sum() == n and batch["speech_lengths"][row] == len(words)
        got = batch["inputs_embeds"][row, :n]
        torch.testing.assert_close(got[: len(before)], embed(torch.tensor(before)))
        torch.testing.assert_close(got[len(before): len(before) + 2], slam.soft_prompt)
        torch.testing.assert_close(got[len(before) + 2: len(before) + 2 + len(words)], embed(torch.tensor(words)))
        torch.testing.assert_close(got[n - len(after):], embed(torch.tensor(after)))
    with pytest.raises(UserError, match="one entry per utterance"):
        slam.embed_text_batch(["a"], ["asr", "asr"])


def test_the_low_distance_share_counts_measured_blocks_only():
    from speechllm_redundancy.angles import AngleMatrix, low_distance_share

    d = np.full((3, 4), np.nan)
    d[0, 1:], d[1, 1:3], d[2, 1] = [0.1, 0.3, 0.5], [0.2, 0.4], 0.05
    m = AngleMatrix(d)
    assert low_distance_share(m, 0.2) == pytest.approx(3 / 6)
    assert low_distance_share(m, 0.0) == 0.0 and low_distance_share(m, 1.0) == 1.0
