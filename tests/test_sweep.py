"""Walking the pruning path: every level scored on every set, cached points, the removable fraction."""

import pandas as pd
import pytest
import torch

from speechllm_redundancy.errors import UserError
from speechllm_redundancy.layers import num_decoder_layers
from speechllm_redundancy.paths import artifacts_dir
from speechllm_redundancy.data.manifest import Utterance, write_manifest
from speechllm_redundancy.evaluation import chance_score
from speechllm_redundancy.sweep import (chance_scores, healing_dir, manifest_evaluator, path_sizes, removable,
                                        text_angles, walk_path, working_levels)
from speechllm_redundancy.training import TrainConfig
from test_training import make, toy_data

torch.set_num_threads(2)


pytestmark = pytest.mark.usefixtures("artifacts")  # a fresh artifacts folder per test (conftest.py)


class LayerCountScore:
    """A stand-in metric that depends on the model it is given: error grows as layers are removed."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, name):
        self.calls.append(name)
        removed = 3 - num_decoder_layers(model.llm)
        return {"a": 0.10, "b": 0.20}[name] * (1 + 0.2 * removed ** 2)


def test_walk_scores_every_level_and_finds_the_threshold(tmp_path):
    slam, score = make(init=0.3), LayerCountScore()
    frame = walk_path(slam, {1: 2, 2: 1}, [1, 2], ["a", "b"], score, tmp_path, progress=False)
    assert sorted(frame.n.unique()) == [0, 1, 2] and len(frame) == 6
    assert frame[frame.n == 1].start.unique().tolist() == [2]
    # Δ = 0.2 at n=1 (≤ +25 %), 0.8 at n=2: one layer of three is removable
    assert frame[frame.n == 1].delta.round(6).tolist() == [0.2, 0.2]
    assert removable(frame, 3) == pytest.approx(1 / 3)
    assert num_decoder_layers(slam.llm) == 3  # the trained model itself is never pruned


def test_points_are_cached_and_resume(tmp_path):
    slam, score = make(init=0.3), LayerCountScore()
    walk_path(slam, {1: 2}, [1], ["a"], score, tmp_path, progress=False)
    calls = len(score.calls)
    walk_path(slam, {1: 2, 2: 1}, [1, 2], ["a"], score, tmp_path, progress=False)
    assert len(score.calls) == calls + 1  # only n = 2 was new


def test_healed_walk_trains_per_level(tmp_path):
    cfg = TrainConfig(steps=4, batch_size=8, lr=5e-3, warmup_steps=1, checkpoint_every=100)
    frame = walk_path(make(init=0.3), {1: 1}, [1], ["a"], LayerCountScore(), tmp_path, strategy="both",
                      heal_data=toy_data(), heal_config=cfg, progress=False)
    assert set(frame.strategy) == {"both"}
    assert any(p.name.startswith("heal-n1-both") for p in tmp_path.iterdir())


def test_walks_with_other_strategies_share_the_unpruned_baseline(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=8, lr=5e-3, warmup_steps=1, checkpoint_every=100)
    slam, score = make(init=0.3), LayerCountScore()
    walk_path(slam, {1: 1}, [1], ["a"], score, tmp_path, progress=False)
    assert len(score.calls) == 2  # n = 0 and n = 1
    healed = walk_path(slam, {1: 1}, [1], ["a"], score, tmp_path, strategy="decoder", heal_data=toy_data(),
                       heal_config=cfg, progress=False)
    assert len(score.calls) == 3  # only the healed n = 1 was scored again
    assert healed[healed.n == 0].delta.tolist() == [0.0]


def test_bad_sizes_and_missing_heal_data_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not on the path"):
        walk_path(make(), {1: 0}, [3], ["a"], LayerCountScore(), tmp_path)
    with pytest.raises(UserError, match="heal_data"):
        walk_path(make(), {1: 0}, [1], ["a"], LayerCountScore(), tmp_path, strategy="decoder")


def test_path_sizes_round_fractions_to_whole_layers_on_the_path():
    assert path_sizes(4, [0.5]) == [2]
    assert path_sizes(6, [0.25, 0.5]) == [2, 3]  # 1.5 rounds to 2
    assert path_sizes(30, [0.1, 0.2, 0.3, 0.4]) == [3, 6, 9, 12]
    assert path_sizes(4, [0.01, 0.99]) == [1, 3]  # at least one layer, never the whole decoder
    assert path_sizes(6) == [1, 2, 3] and path_sizes(7) == [1, 2, 3, 4]  # every n up to half
    for bad in ([], [0.0], [1.0]):
        with pytest.raises(UserError, match="strictly between 0 and 1"):
            path_sizes(4, bad)
    with pytest.raises(UserError, match="at least 2 layers"):
        path_sizes(1)


def test_manifest_evaluator_passes_its_limits(monkeypatch):
    seen = []

    def fake(model, manifest, task, limit=None, **kw):
        seen.append((manifest, task, limit, kw))
        return {"score": 12.5}

    monkeypatch.setattr("speechllm_redundancy.evaluation.evaluate_slam", fake)
    assert manifest_evaluator({"a": "a.jsonl"}, limit=4, max_new_tokens=8)(None, "a") == 12.5
    assert manifest_evaluator({"a": "a.jsonl"}, progress=False, precision="fp32")(None, "a") == 12.5
    assert seen == [("a.jsonl", "asr", 4, {"max_new_tokens": 8, "progress": True, "precision": "auto"}),
                    ("a.jsonl", "asr", None, {"progress": False, "precision": "fp32"})]
    with pytest.raises(UserError, match="no manifest for evaluation set 'b'"):
        manifest_evaluator({"a": "a.jsonl"})(None, "b")
    with pytest.raises(UserError, match="positive"):
        manifest_evaluator({"a": "a.jsonl"}, max_new_tokens=0)
    with pytest.raises(UserError, match="decode precision 'fp16': use one of auto, fp32, bf16"):
        manifest_evaluator({"a": "a.jsonl"}, precision="fp16")  # before any walk starts


def test_a_walks_points_are_keyed_by_the_precision_their_sets_are_decoded_at(tmp_path):
    """fp32 keeps the points of before (the rule alone in their key); bf16 products are other points, each
    decoded by its own precision, and a second walk at either precision reads its points back."""
    from speechllm_redundancy.decoding import decoding_model
    from speechllm_redundancy.slam import DECODING_RULE

    model = make()
    assert manifest_evaluator({}, precision="fp32").decoding_rule(model) == DECODING_RULE
    assert manifest_evaluator({}, precision="bf16").decoding_rule(model) == f"{DECODING_RULE}; bf16 products"
    seen = []

    def evaluate_at(precision):
        def evaluate(m, name):
            seen.append((precision, decoding_model(m.llm, precision) is not m.llm))
            return 10.0 if precision == "fp32" else 11.0
        evaluate.decoding_rule = manifest_evaluator({}, precision=precision).decoding_rule
        return evaluate

    for precision in ("fp32", "bf16", "fp32", "bf16"):
        walk = walk_path(model, {1: 0}, [1], ["a"], evaluate_at(precision), tmp_path, progress=False)
        assert set(walk.score) == {10.0 if precision == "fp32" else 11.0}
    assert seen == [("fp32", False)] * 2 + [("bf16", True)] * 2  # the second pair came from the cache
    assert len(list(tmp_path.glob("point-*.json"))) == 4


def test_chance_scores_read_each_sets_targets(tmp_path):
    rows = [("the cat sat", "die katze sass"), ("a dog ran far", "ein hund lief weit"),
            ("birds sing", "vögel singen")]
    utts = [Utterance(f"u{i}", "u.wav", 1.0, 16000, text, "en", "de", translation)
            for i, (text, translation) in enumerate(rows)]
    asr_only = [Utterance(uid, f"{uid}.wav", 1.0, 16000, text) for uid, text in (("x", "hi"), ("y", "ho"))]
    manifests = {"full": write_manifest(tmp_path / "full.jsonl", utts),
                 "untranslated": write_manifest(tmp_path / "untranslated.jsonl", asr_only)}
    transcripts, translations = zip(*rows)
    assert chance_scores(manifests, ["full"], "asr", limit=2) == {"full": chance_score(transcripts[:2])}
    assert chance_scores(manifests, ["full"], "ast-en-de") == {"full": chance_score(translations, "ast-en-de")}
    with pytest.raises(UserError, match="untranslated.jsonl: 2 utterance\\(s\\) have no translation"):
        chance_scores(manifests, ["untranslated"], "ast-en-de")


def test_text_angles_are_cached():
    first = text_angles("tiny-qwen2", ["one two three", "four five"], progress=False)
    assert first.num_layers == 4 and first.count == 2
    saved = list((artifacts_dir() / "angles").glob("text-*.json"))
    assert len(saved) == 1
    saved[0].write_text(saved[0].read_text().replace('"count": 2', '"count": 7'))
    saved[0].with_name(f".{saved[0].name}.sha256.json").unlink()  # as stored before checksum records
    assert text_angles("tiny-qwen2", ["one two three", "four five"], progress=False).count == 7  # read back
    with pytest.raises(UserError, match="no sentences"):
        text_angles("tiny-qwen2", [])


def test_walks_that_evaluate_differently_share_their_healing_runs(tmp_path):
    """The healing run of a point is keyed by the model (``model_key``), not by what the walk evaluates: a
    second walk with another decoding budget (another ``key``) scores anew but trains nothing."""
    cfg = TrainConfig(steps=2, batch_size=8, lr=5e-3, warmup_steps=1, checkpoint_every=100)
    slam, data = make(init=0.3), toy_data()
    for budget in ("64 utterances", "128 utterances"):
        walk_path(slam, {1: 1}, [1], ["a"], LayerCountScore(), tmp_path, strategy="both", heal_data=data,
                  heal_config=cfg, key=f"model {budget}", model_key="model", progress=False)
    heal_runs = [p for p in tmp_path.iterdir() if p.name.startswith("heal-n1-both")]
    points = [p for p in tmp_path.iterdir() if p.name.startswith("point-n1-both")]
    assert len(heal_runs) == 1 and len(points) == 2
    assert heal_runs[0] == healing_dir(tmp_path, "model", 1, 1, "both", cfg, data)


def test_a_point_with_nothing_to_heal_reuses_the_unhealed_scores(tmp_path):
    """Decoder healing of a block that ends at the last layer (no receiving layer), or healing of no steps,
    leaves the pruned model as it is: the walk reads strategy none's point instead of decoding it again."""
    slam, score = make(init=0.3), LayerCountScore()
    path = {1: 2, 2: 0}  # n = 1 removes the last of 3 layers; n = 2 removes layers 0–1 (layer 2 receives)
    unhealed = walk_path(slam, path, [1, 2], ["a", "b"], score, tmp_path, progress=False)
    assert len(score.calls) == 6  # n = 0, 1, 2 on both sets
    cfg = TrainConfig(steps=2, batch_size=8, lr=5e-3, warmup_steps=1, checkpoint_every=100)
    healed = walk_path(slam, path, [1, 2], ["a", "b"], score, tmp_path, strategy="decoder",
                       heal_data=toy_data(), heal_config=cfg, progress=False)
    assert len(score.calls) == 8  # only n = 2 had a receiving layer to heal
    assert healed[healed.n == 1].score.tolist() == unhealed[unhealed.n == 1].score.tolist()
    assert not any(p.name.startswith(("point-n1-decoder", "heal-n1")) for p in tmp_path.iterdir())
    idle = TrainConfig(steps=0, batch_size=8, lr=5e-3, warmup_steps=1, checkpoint_every=100)
    walk_path(slam, path, [1, 2], ["a", "b"], score, tmp_path, strategy="both", heal_data=toy_data(),
              heal_config=idle, progress=False)
    assert len(score.calls) == 8  # no steps: nothing healed at any level


def test_working_levels_are_those_where_some_strategy_still_beats_chance():
    """A level counts when one strategy's model beats chance on every set; a set at chance for all of them
    (or every set for some) leaves it out."""
    rows = [(0, "none", "a", 20.0), (0, "none", "b", 40.0),
            (3, "none", "a", 90.0), (3, "none", "b", 120.0), (3, "both", "a", 30.0), (3, "both", "b", 50.0),
            (6, "none", "a", 101.0), (6, "none", "b", 99.0), (6, "both", "a", 99.0), (6, "both", "b", 100.0),
            (9, "none", "a", 150.0), (9, "none", "b", 130.0)]
    frame = pd.DataFrame(rows, columns=["n", "strategy", "set", "score"])
    assert working_levels(frame, {"a": 100.0, "b": 100.0}) == [3]
    assert working_levels(frame, {"a": 100.0, "b": 100.5}) == [3, 6]  # both's 99 / 100 now beat it
    bleu = frame.assign(score=frame.score / 10)  # translation: higher is better
    assert working_levels(bleu, {"a": 10.0, "b": 10.0}, "ast-en-de") == [9]
