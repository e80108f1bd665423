"""Walking the pruning path: every level scored on every set, cached points, the removable fraction."""

import pytest
import torch

from speechllm_redundancy.errors import UserError
from speechllm_redundancy.layers import num_decoder_layers
from speechllm_redundancy.sweep import removable, walk_path
from speechllm_redundancy.training import TrainConfig
from test_training import make, toy_data

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / "artifacts"))


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


def test_bad_sizes_and_missing_heal_data_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not on the path"):
        walk_path(make(), {1: 0}, [3], ["a"], LayerCountScore(), tmp_path)
    with pytest.raises(UserError, match="heal_data"):
        walk_path(make(), {1: 0}, [1], ["a"], LayerCountScore(), tmp_path, strategy="decoder")
