"""Healing: what each strategy trains, that it touches only the receiving layer, and that it lowers the loss."""

import pytest
import torch

from speechllm_redundancy.errors import UserError
from speechllm_redundancy.healing import (CTC_ANCHOR, heal, healing_config, prepare_healing, prune_slam,
                                          receiving_mlp_modules, strategy_config, trains_something)
from speechllm_redundancy.layers import num_decoder_layers
from speechllm_redundancy.training import CtcWarmup, TrainConfig, train
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


def reading_ctc_labels(tmp_path):
    """The cpu recipe's frozen layout on the tiny model: a CTC warm start, then the decoder reads the hard
    labels of the fixed head's segments."""
    slam = make(init=0.3)
    warm = TrainConfig(steps=0, ctc_warmup_steps=40, ctc_batch_size=8, ctc_lr=3e-2, warmup_steps=3,
                       log_every=1000, checkpoint_every=1000)
    train(slam, toy_data(), warm, tmp_path / "warm", progress=False)
    slam.config.ctc_compress, slam.config.ctc_embed = True, "hard"
    slam.requires_grad_(False)
    return slam


def test_the_ctc_anchor_acts_only_where_healing_moves_the_labels_the_decoder_reads(tmp_path):
    """Healing runs keep the warm start's CTC loss beside the next-token loss (``CTC_ANCHOR``) only for a
    strategy that trains the projector of a model that reads CTC labels; elsewhere the setting is 0, so
    decoder healing and models of the paper recipe keep the settings (and cache keys) they had."""
    cfg = healing_config(10)
    assert cfg.ctc_weight == CTC_ANCHOR > 0 and healing_config(10, ctc_weight=0.0).ctc_weight == 0.0
    labels, frames = reading_ctc_labels(tmp_path), make(init=0.3)
    for strategy in ("projector", "both"):
        assert strategy_config(labels, strategy, cfg) == cfg
        assert strategy_config(frames, strategy, cfg) == TrainConfig(**{**vars(cfg), "ctc_weight": 0.0})
    for strategy in ("none", "decoder"):
        assert strategy_config(labels, strategy, cfg).ctc_weight == 0.0
    assert strategy_config(labels, "decoder", cfg).key() == healing_config(10, ctc_weight=0.0).key()
    plain = healing_config(10, ctc_weight=0.0)
    assert strategy_config(labels, "both", plain) is plain  # an explicit 0 stays 0: healing without anchor


def test_the_anchor_holds_the_ctc_labels_that_projector_healing_moves(tmp_path):
    """Projector healing of a model reading CTC labels: the next-token loss alone moves the projector under
    the fixed head and the CTC loss of what the decoder reads rises; with the anchor it stays near where the
    warm start left it."""
    slam, data = reading_ctc_labels(tmp_path), toy_data()
    feats = [e.features for e in data.examples]
    targets = [slam.layout._ids(e.target) for e in data.examples]

    def ctc_loss(model):
        with torch.no_grad():
            return float(CtcWarmup(model)(feats, targets)["loss"])

    before = ctc_loss(slam)
    healed = {}
    for weight in (0.0, CTC_ANCHOR):
        cfg = healing_config(15, batch_size=8, lr=2e-2, ctc_weight=weight, log_every=1000)
        healed[weight], _ = heal(slam, 1, 1, "projector", data, cfg, tmp_path / f"heal-{weight}", progress=False)
    plain, anchored = ctc_loss(healed[0.0]), ctc_loss(healed[CTC_ANCHOR])
    assert plain > 2 * before  # drift: the labels move far from the transcripts (1.6 -> 7.3 here)
    assert anchored < 1.1 * before  # held (1.7 here)
    assert torch.equal(healed[0.0].ctc.vocab, slam.ctc.vocab)  # the head itself never trains
    assert all(torch.equal(a, b) for a, b in zip(healed[CTC_ANCHOR].ctc.parameters(), slam.ctc.parameters()))
