"""The chapters' analyses (speechllm_redundancy.chapters) on tiny models: each measures through the study's
caches, shows tables with readable headers, hands the prose the numbers its tables show, and words its
verdict from those same numbers. Plus report.glue_finding, which publishes them."""

from dataclasses import replace

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from slam_tiny import save_tiny_llm, save_tiny_whisper, write_manifest_dir
from speechllm_redundancy import angles, report, verdicts
from speechllm_redundancy.chapters import efficiency, healing_dynamics, origin, scales, translation
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.experiments import Settings, Study

matplotlib.use("Agg")
torch.set_num_threads(2)
pytestmark = pytest.mark.slow
LORA = {"r": 2, "alpha": 4, "dropout": 0.0}
RAW = ("mean_abs_difference", "path_agreement", "mean_removed_overlap", "decode_peak_bytes", "prefill_s", "_")


def headers(table) -> list[str]:
    """Every column and index name a table shows (a Styler's data, or a frame)."""
    frame = getattr(table, "data", table)
    names = [*frame.columns.to_flat_index(), *frame.index.names, *frame.columns.names]
    return [" ".join(map(str, n)) if isinstance(n, tuple) else str(n) for n in names if n is not None]


def readable(table) -> bool:
    return not any(raw in name for name in headers(table) for raw in RAW)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny corpus (recognition and en-de translation splits), a tiny Whisper encoder and two tiny
    decoders of different depths, in a private artifacts folder."""
    from speechllm_redundancy.data.manifest import read_manifest, write_manifest

    root = tmp_path_factory.mktemp("chapters")
    mp = pytest.MonkeyPatch()
    mp.setenv("SPEECHLLM_ARTIFACTS", str(root / "artifacts"))
    texts = ["a b", "c d e", "f g", "h", "i j"]
    asr = write_manifest_dir(root / "corpus", texts=texts)
    ast = write_manifest(root / "corpus" / "en-de.jsonl",
                         [replace(u, src_lang="en", tgt_lang="de", translation=f"{u.text} x")
                          for u in read_manifest(asr)])
    manifests = {"train": asr, "dev": asr, "test-clean": asr, "en-de-train": ast, "en-de-test": ast}
    settings = Settings(encoder=save_tiny_whisper(root / "whisper"), recipe="paper", train_steps=3,
                        train_limit=None, ast_train_limit=None, eval_limit=2, max_new_tokens=4, path_samples=3,
                        healing_steps=2, whisper_window="full")
    study = Study(settings, manifests)
    study.llms = [save_tiny_llm(root / "llm3"), save_tiny_llm(root / "llm4", layers=4, seed=1)]
    yield study
    mp.undo()


def test_glue_finding_glues_plain_numbers_and_text_and_returns_the_table(monkeypatch):
    import myst_nb

    glued = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: glued.update({name: (value, display)}))
    table = pd.DataFrame({"x": [1]})
    shown = report.glue_finding("ch9", report.Finding(table, {"n": np.int64(3), "share": np.float64(0.5),
                                                             "spread": "1% to 2%"}))
    assert shown is table
    assert glued == {"ch9_n": (3, False), "ch9_share": (0.5, False), "ch9_spread": ("1% to 2%", False)}
    assert type(glued["ch9_n"][0]) is int and type(glued["ch9_share"][0]) is float
    assert repr(glued["ch9_spread"][0]) == "1% to 2%"  # pasted into the prose without quotes
    assert report.glue_finding("ch9", report.Finding(numbers={"n": 1})) is None


def test_chapter_1_maps_their_comparison_and_the_lora_tolerance(study):
    llm = study.llms[0]
    maps = origin.measure(study, [llm], [llm], [llm], 3, lora=LORA)
    inputs = maps.inputs()
    assert inputs.numbers == {"samples": 3} and len(inputs.table) == 3
    assert [ax.get_title() for ax in maps.heatmaps().axes if ax.get_title()] == [
        f"{llm} (text)", f"{llm} (SLAM, speech)", f"{llm} (SLAM + LoRA, speech)"]
    assert len(maps.path_figure().axes) == 1

    comparison = maps.comparison()
    assert readable(comparison.table)
    assert comparison.numbers == {
        "mean_abs_delta": pytest.approx(angles.mean_abs_difference(maps.gold[llm], maps.speech[llm])),
        "path_agreement": pytest.approx(angles.path_agreement(maps.gold[llm], maps.speech[llm]))}
    # the control of the by-construction agreement: the same decoder through its untrained front end
    front_ends = maps.front_ends()
    assert readable(front_ends.table)
    assert front_ends.table.data.index.tolist() == [(llm, origin.TRAINED), (llm, origin.UNTRAINED)]
    assert not np.allclose(maps.untrained[llm].distances, maps.speech[llm].distances, equal_nan=True)
    untrained = (angles.mean_abs_difference(maps.gold[llm], maps.untrained[llm]),
                 angles.path_agreement(maps.gold[llm], maps.untrained[llm]))
    assert maps.untrained_agreement() == pytest.approx(untrained)
    assert front_ends.numbers == {
        "untrained_mean_abs_delta": pytest.approx(untrained[0]),
        "untrained_path_agreement": pytest.approx(untrained[1]),
        "front_end_reading": origin.front_end_reading(maps.control_agreement(), untrained)}
    assert f"{untrained[0]:.3f}" in front_ends.numbers["front_end_reading"]
    depth = maps.depth()
    profiles = [origin.depth_profile(m) for m in (maps.text[llm], maps.speech[llm])]
    assert depth.numbers["deep_share"] == pytest.approx(np.mean([p[origin.DEEP] for p in profiles]))
    assert readable(maps.lora_table())

    verdict = maps.claim_1()
    assert verdict.claim == 1 and verdict.recipe == "paper"
    assert f"{comparison.numbers['mean_abs_delta']:.3f}" in verdict.finding
    assert f"through an untrained front end: mean |ΔD| = {untrained[0]:.3f}" in verdict.finding
    assert verdict.holds == verdicts.claim_1(*maps.control_agreement(), maps.at_chance, variant="v").holds
    assert f"{depth.numbers['last_share']:.0%}" in maps.claim_3().finding

    walked = origin.tolerance(study, [llm], [0.34], "none", lora=LORA)
    assert list(walked.frame["decoder training"]) == ["frozen", "LoRA"] and readable(walked.table())
    assert walked.parameters == {"pruned_fractions": [0.34], "healing": "none"}
    claim_2 = origin.claim_2(maps, walked)
    frozen, lora = maps._lora.loc[llm, origin.FROZEN], maps._lora.loc[llm, origin.LORA]
    assert f"{llm} {frozen:.3f} → {lora:.3f}" in claim_2.finding and claim_2.variant.endswith(", no healing")
    skipped = origin.tolerance(study, [llm], [], "both", lora=LORA)
    assert skipped.table() is None
    assert "pruning tolerance not tested" in origin.claim_2(maps, skipped).finding


def test_the_front_end_reading_says_which_front_end_the_agreement_comes_with():
    both = origin.front_end_reading((0.001, 1.0), (0.002, 0.9))
    assert both.startswith("An untrained front end already meets claim 1's bar (mean |ΔD| 0.002 against "
                           "0.001 trained, the same optimal block for 90% of block sizes against 100%)")
    assert "the frozen decoder's own" in both
    assert "comes with the trained front end" in origin.front_end_reading((0.001, 1.0), (0.2, 0.5))
    assert "comes with the trained" in origin.front_end_reading((0.001, 1.0), (0.01, 0.5))  # both bars
    assert origin.front_end_reading((0.1, 0.5), (0.2, 0.9)).endswith("no closer to the text control")
    assert origin.front_end_reading((0.1, 0.5), (0.06, 0.9)).endswith("is closer to the text control")


def test_chapter_2_walks_every_strategy_and_compares_the_paths(study):
    with pytest.raises(UserError, match=r"text_path_strategies \['heal'\] unknown"):
        healing_dynamics.measure(study, study.llms[0], [0.34], ["heal"])
    walks = healing_dynamics.measure(study, study.llms[0], [0.34], ["none"])
    assert set(walks.walks[walks.walks.path == "speech-derived"].strategy) == {"none", "decoder", "projector",
                                                                              "both"}
    assert set(walks.walks[walks.walks.path == "text-derived"].strategy) == {"none"}
    assert walks.paths_table().numbers == {"layers": 3}
    strategies = walks.strategies()
    speech = walks.walks[(walks.walks.path == "speech-derived") & (walks.walks.strategy == "decoder")]
    assert strategies.numbers["mean_delta_decoder"] == pytest.approx(speech[speech.n > 0].delta.mean())
    assert set(strategies.numbers) == {*(f"{k}_{s}" for k in ("removable", "mean_delta")
                                         for s in ("none", "decoder", "projector", "both")), "worst_none"}
    assert "largest_path_gap" in walks.path_gaps().numbers
    assert len(walks.delta_figure().axes) == 2
    verdict = walks.claim_4()
    assert verdict.claim == 4 and verdict.variant.endswith("speech-derived path, 2 healing steps")
    assert walks.parameters == {"speech_llm": study.llms[0], "pruned_fractions": [0.34],
                                "text_path_strategies": ["none"]}


def test_chapter_2_ranks_the_strategies_only_where_a_healed_model_still_works(study, monkeypatch):
    """Claim 4 averages over the levels where some strategy beats chance on every set; a level where every
    model is broken is left out and named, and with none left the verdict is not informative."""
    walks = healing_dynamics.measure(study, study.llms[0], [0.34], ["none"])
    monkeypatch.setattr(study, "chance", lambda task="asr": {"x": 100.0, "y": 100.0})
    scores = {0: {s: (20.0, 40.0) for s in ("none", "decoder", "projector", "both")},
              1: {"none": (60.0, 80.0), "decoder": (30.0, 50.0), "projector": (56.0, 76.0), "both": (24.0, 44.0)},
              2: {s: (110.0, 100.0) for s in ("none", "decoder", "projector", "both")}}
    rows = [{"path": "speech-derived", "strategy": s, "n": n, "set": name, "score": v,
             "delta": v / base - 1}
            for n, by in scores.items() for s, pair in by.items()
            for name, v, base in zip(("x", "y"), pair, (20.0, 40.0))]
    verdict = replace(walks, walks=pd.DataFrame(rows)).claim_4()
    assert verdict.holds is True  # decided at 1 layer: none +150 %, both +15 %
    assert "none +150%" in verdict.finding and "both +15%" in verdict.finding
    assert verdict.finding.endswith("left out, every model at or past chance on some set: 2/3 layers")
    broken = replace(walks, walks=pd.DataFrame([r for r in rows if r["n"] != 1])).claim_4()
    assert broken.holds is None and broken.summary.startswith("not informative")


def test_chapter_3_sets_removable_fractions_against_decoder_size(study):
    models = scales.measure(study, study.llms, strategy="none", fractions=[0.34, 0.5])
    assert list(models.summary.model) == study.llms and list(models.summary.layers) == [3, 4]
    table = models.table_1()
    assert readable(table) and set(table.index.get_level_values("model")) == set(study.llms)
    assert all(c.startswith("WER ") and c.endswith(" (%)") for c in table.columns)
    removable = models.removable()
    by_size = models.summary.sort_values("parameters (M)")
    assert removable.numbers == {"smallest": by_size["removable fraction"].iloc[0],
                                 "largest": by_size["removable fraction"].iloc[-1]}
    width = models.width()
    assert width.numbers["tau"] == scales.TAU and 0 <= width.numbers["width_smallest"] <= 1
    for figure in (models.delta_figure(), models.size_figure(), models.width_figure()):
        assert figure.axes
    verdict = models.claim_5()
    assert verdict.claim == 5 and verdict.variant == f"frozen decoders of {', '.join(by_size.model)}, no healing"


def test_chapter_3_compares_decoders_by_the_level_walked_not_by_rounding():
    """0.04 of a 30-layer and of a 24-layer decoder both round to one layer (3.3 % and 4.2 %): the same
    level, which must not read as the deeper decoder tolerating less."""
    assert scales.walked_level(1, 30, [0.04, 0.1]) == scales.walked_level(1, 24, [0.04, 0.1]) == 0.04
    assert scales.walked_level(2, 24, [0.04, 0.1]) == 0.1  # 0.1 of 24 layers is 2
    assert scales.walked_level(2, 30, [0.04, 0.1]) == 0.04  # 0.1 of 30 is 3: not reached
    assert scales.walked_level(0, 30, [0.04, 0.1]) == 0.0
    assert scales.walked_level(5, 30, None) == 5 / 30  # every n walked: the paper's n / L


def test_chapter_3_heals_a_lora_row_beside_the_frozen_decoders(study):
    """Table 1's LoRA row (issue 14): the LoRA variant of a decoder, walked and healed like the frozen ones,
    is in the summary and in Table 1 but not in the by-size comparison claim 5 is decided on."""
    llm = study.llms[0]
    models = scales.measure(study, study.llms, [llm], lora=LORA, strategy="both", fractions=[0.34])
    lora_row = f"{llm} + LoRA"
    assert list(models.summary.model) == [*study.llms, lora_row]
    assert list(models.summary.LoRA) == [False, False, True]
    assert [run.lora for run in models.runs] == [False, False, True]
    assert set(models.walks[lora_row].strategy) == {"both"}
    assert lora_row not in set(models.by_size.model) and sorted(models.by_size.model) == sorted(study.llms)
    assert lora_row in set(models.table_1().index.get_level_values("model"))
    assert lora_row not in set(models._width.model)
    verdict = models.claim_5()
    by_size = models.by_size
    assert verdict.variant == f"frozen decoders of {', '.join(by_size.model)}, both healing, 2 steps"
    assert "LoRA" not in verdict.finding
    assert models.parameters["healing"] == "both" and models.parameters["lora_llms"] == [llm]


def test_chapter_4_walks_translation_along_both_paths(study):
    llm = study.llms[0]
    transfer = translation.measure(study, [llm], ["en-de"], study.settings.encoder, [0.34], ["none"])
    assert set(transfer.everything.path) == {"AST-derived", "ASR-derived"}
    table = transfer.table_2()
    assert readable(table) and table.index.names == ["model", "layers removed"]
    starts = transfer.starts_table()
    assert "same block" in starts.columns and "block size n" in starts.index.names
    summary = transfer.summary()
    row = transfer._summary.iloc[0]
    assert summary.numbers["max_gap"] == row["largest BLEU gap"]
    assert summary.numbers["removable_ast"] == row["removable (AST-derived)"]
    healing = transfer.healing()
    assert np.isnan(healing.numbers["mean_delta_both"]) and not np.isnan(healing.numbers["mean_delta_none"])
    verdict = transfer.claim_6()
    assert verdict.claim == 6 and verdict.variant.endswith("without healing")
    with pytest.raises(UserError, match="healing is empty"):
        translation.measure(study, [llm], ["en-de"], study.settings.encoder, [0.34], [])


def test_chapter_5_times_the_decoder_alone_and_the_whole_speech_llm(study):
    llm = study.llms[0]
    costs = efficiency.measure(study, [llm], [0.0, 0.34], [0.34], "test-clean", 2, 1)
    for table in (costs.decoder_table(), costs.speech_llm_table()):
        assert readable(table) and "layers removed" in table.data.index.names
    for figure in (costs.decoder_figure(), costs.speech_llm_figure()):
        assert figure.axes
    finding = costs.finding().numbers
    pruned = costs.speech[costs.speech.fraction > 0].iloc[0]
    assert finding["saving"] == pruned["total_saving"] and finding["fraction"] == pruned["fraction"]
    assert finding["saving_spread"] == f"{pruned['total_saving_low']:.0%} to {pruned['total_saving_high']:.0%}"
    verdict = costs.claim_7()
    assert verdict.holds is None or verdict.holds is False  # one repeat: the speed half cannot hold
    assert verdict.variant == f"{llm} SpeechLLM, {study.settings.encoder} encoder + projector + decoder, 2 " \
                              "test-clean utterances, cpu"


def test_a_directions_encoder_comes_from_the_mapping_or_the_study():
    """chapter 4 and `slam train --profile` pick an AST model's encoder in one place."""
    from types import SimpleNamespace

    study = SimpleNamespace(settings=SimpleNamespace(encoder="whisper-base"))
    per_direction = {"fr-en": "openai/whisper-large-v3"}
    assert translation.direction_encoder(study, per_direction, "fr-en") == "openai/whisper-large-v3"
    assert translation.direction_encoder(study, per_direction, "en-de") == "whisper-base"
    assert translation.direction_encoder(study, "tiny-whisper", "en-de") == "tiny-whisper"
