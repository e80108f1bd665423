"""Healing: what each strategy trains, that it touches only the receiving layer, and that it lowers the loss."""

import pytest
import torch

from speechllm_redundancy.errors import UserError
from speechllm_redundancy.healing import (heal, prepare_healing, prune_slam, receiving_mlp_modules,
                                          trains_something)
from speechllm_redundancy.layers import num_decoder_layers
from speechllm_redundancy.training import TrainConfig
from test_training import make, toy_data

torch.set_num_threads(2)


pytestmark = pytest.mark.usefixtures("artifacts")  # a fresh artifacts folder per test (conftest.py)


def trainable(model):
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def test_prune_slam_leaves_the_original_untouched():
    slam = make(init=0.3)
    pruned = prune_slam(slam, 1, 1)
    assert num_decoder_layers(slam.llm) == 3 and num_decoder_layers(pruned.llm) == 2
    assert pruned.llm.config.num_hidden_layers == 2


def test_decoder_strategy_trains_only_the_receiving_layers_mlp():
    pruned = prune_slam(make(init=0.3), 0, 1)  # layers 1, 2 remain; old layer 1 now receives at index 0
    prepare_healing(pruned, "decoder", 0)
    names = trainable(pruned)
    assert names and all(".layers.0.mlp." in n and "lora_" in n for n in names)
    assert {n.split(".mlp.")[1].split(".")[0] for n in names} == {"gate_proj", "up_proj", "down_proj"}


def test_the_healing_lora_starts_from_the_runs_seed_whatever_ran_before():
    """A healing run is cached by its settings: its initial LoRA must follow from its seed alone (it once came
    from the global generator, so a resumed or reordered walk healed from another start), and drawing it
    leaves the caller's generator where it was."""
    def initial_lora(global_seed: int, seed: int) -> dict:
        pruned = prune_slam(make(init=0.3), 0, 1)
        torch.manual_seed(global_seed)
        before = torch.random.get_rng_state()
        prepare_healing(pruned, "decoder", 0, seed=seed)
        assert torch.equal(torch.random.get_rng_state(), before)
        return {n: p.detach().clone() for n, p in pruned.named_parameters() if "lora_A" in n}

    same, other_history, other_seed = initial_lora(1, 7), initial_lora(2, 7), initial_lora(1, 8)
    assert same and all(torch.equal(same[n], other_history[n]) for n in same)
    assert not all(torch.equal(same[n], other_seed[n]) for n in same)


@pytest.mark.parametrize("strategy, projector, lora", [
    ("none", False, False), ("projector", True, False), ("both", True, True)])
def test_strategies_unfreeze_what_they_name(strategy, projector, lora):
    pruned = prune_slam(make(init=0.3), 1, 1)
    prepare_healing(pruned, strategy, 1)
    names = trainable(pruned)
    assert any(n.startswith("projector.") for n in names) == projector
    assert any("lora_" in n for n in names) == lora


def test_projector_strategies_heal_a_soft_prompt_too():
    """A trained soft prompt is input-side, like the projector: healed with it, never by ``decoder``."""
    from test_training import D
    from slam_tiny import tiny_llm
    from speechllm_redundancy.slam import SlamConfig, SlamModel

    llm, tok = tiny_llm(init=0.3)
    slam = SlamModel(SlamConfig(encoder="e", llm="tiny", encoder_dim=D, k=1, projector_hidden=64,
                                prompt_vectors=2), llm, tok)
    for strategy, expected in (("projector", True), ("both", True), ("decoder", False), ("none", False)):
        pruned = prune_slam(slam, 1, 1)
        prepare_healing(pruned, strategy, 1)
        assert ("soft_prompt" in trainable(pruned)) == expected, strategy


def test_bad_strategy_and_layer_are_user_errors():
    pruned = prune_slam(make(init=0.3), 1, 1)
    with pytest.raises(UserError, match="strategy"):
        prepare_healing(pruned, "everything", 1)
    with pytest.raises(UserError, match="receiving layer"):
        receiving_mlp_modules(pruned.llm, 5)


def test_healing_both_lowers_the_loss_and_is_cached(tmp_path):
    slam = make(init=0.3)
    cfg = TrainConfig(steps=20, batch_size=8, lr=5e-3, warmup_steps=2, log_every=2, checkpoint_every=100)
    healed, result = heal(slam, 1, 1, "both", toy_data(), cfg, tmp_path / "heal", progress=False)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0]
    assert num_decoder_layers(healed.llm) == 2 and not trainable(healed)
    again, cached = heal(slam, 1, 1, "both", toy_data(), cfg, tmp_path / "heal", progress=False)
    assert cached.history == result.history
    proj = dict(healed.projector.named_parameters())
    assert all(torch.equal(p, proj[n]) for n, p in again.projector.named_parameters())


def test_no_healing_trains_nothing(tmp_path):
    healed, result = heal(make(init=0.3), 0, 2, "none", toy_data(), TrainConfig(steps=5), tmp_path / "h")
    assert result is None and num_decoder_layers(healed.llm) == 1


def test_trains_something_says_what_prepare_healing_unfreezes():
    """The walks decide from ``trains_something`` alone, before building a model, whether a point is strategy
    none's: it must agree with what ``prepare_healing`` unfreezes for every block of the decoder."""
    slam, cfg = make(init=0.3), TrainConfig(steps=2)
    for strategy in ("none", "decoder", "projector", "both"):
        for start, size in ((0, 1), (1, 1), (2, 1), (0, 2), (1, 2)):
            pruned = prune_slam(slam, start, size)
            prepare_healing(pruned, strategy, start)
            expected = bool(trainable(pruned))
            assert trains_something(strategy, start, size, 3, cfg) == expected, (strategy, start, size)
            assert not trains_something(strategy, start, size, 3, TrainConfig(steps=0))
    assert not trains_something("both", 0, 0, 3, cfg)
