"""Post-pruning healing: a short training run that lets the rest of the model adapt to a removed block.

The paper compares four strategies on a pruned SLAM model (NOTES.md, "Healing after pruning"):
``none``; ``decoder`` — LoRA on the *receiving* layer's MLP (gate/up/down projections) only;
``projector`` — the projector unfrozen (with a trained soft prompt, the other input-side weights);
``both``. Training reuses the SLAM loop (`training.train`), so healing runs are checkpointed, resumable
and cached like every other run.
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace
from pathlib import Path

import torch

from speechllm_redundancy.errors import UserError
from speechllm_redundancy.layers import decoder_layers, num_decoder_layers
from speechllm_redundancy.pruning import prune_block, receiving_layer

STRATEGIES = ("none", "decoder", "projector", "both")
INPUT_SIDE = ("projector", "both")  # strategies that train the projector (and a trained soft prompt)
DECODER_SIDE = ("decoder", "both")  # strategies that add LoRA on the receiving layer's MLP
# LoRA settings for the receiving layer (the paper's numbers were lost in extraction: peft-typical values)
HEALING_LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
HEALING_STEPS = 300  # a healing run's steps unless told otherwise (the chapters' and `slam heal`'s default)
WARMUP_SHARE = 0.1  # of a healing run's steps spent warming up (then a linear decay to zero)
# in every healing run's cache key: runs cached before the receiving layer's LoRA was drawn from the run's seed
# (it came from the global generator, so from whatever ran before) are not reused
HEALING_INIT = "lora-from-seed"
# A model of the cpu recipe reads the labels of a CTC head fixed after the warm start: healing that moves the
# projector (projector, both) moves those labels with it. Such runs keep the warm start's CTC loss beside the
# next-token loss at this weight (TrainConfig.ctc_weight), an anchor that limits how far the labels move: frozen
# SmolLM2, 3 of 30 layers removed, 20 joint healing steps, dev WER 42.1 % without it, 34.7 % with it, 31.7 %
# healing the decoder alone (book/method.md, "Healing"; benchmarks/healing_drift.py measures both ways).
CTC_ANCHOR = 1.0


def healing_config(steps: int, seed: int = 0, **overrides):
    """The training settings of a healing run of ``steps`` steps: the SLAM loop's defaults with a warm-up of
    a tenth of the run and the CTC anchor (``CTC_ANCHOR``; it acts only where ``strategy_config`` keeps it).
    A fixed warm-up longer than a short run (50 of 20 steps) would end the run at the peak rate, never
    decaying — the healed weights would be those of the largest step."""
    from speechllm_redundancy.training import TrainConfig

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"healing_steps={steps!r}: use a positive whole number of training steps.")
    settings = {"warmup_steps": max(1, round(WARMUP_SHARE * steps)), "ctc_weight": CTC_ANCHOR, **overrides}
    return TrainConfig(steps=steps, seed=seed, **settings)


def reads_ctc_labels(slam) -> bool:
    """Whether ``slam``'s decoder reads the segments of its CTC head (the cpu recipe's compression) rather
    than the projected frames."""
    return getattr(slam, "ctc", None) is not None and bool(slam.config.ctc_compress)


def strategy_config(slam, strategy: str, train_config):
    """The settings a healing run of ``strategy`` on ``slam`` trains with: ``train_config``, its CTC anchor
    (``ctc_weight``) kept only where it acts — a strategy that trains the projector of a model that reads CTC
    labels — and 0 elsewhere, so the runs it cannot change (decoder healing, the paper recipe) keep their
    settings and cache keys. Key a healing run by this, not by ``train_config``."""
    check_strategy(strategy)
    if strategy in INPUT_SIDE and reads_ctc_labels(slam) or not train_config.ctc_weight:
        return train_config
    return replace(train_config, ctc_weight=0.0)


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise UserError(f"unknown healing strategy {strategy!r}: use one of {', '.join(STRATEGIES)}.")
    return strategy


def heals_decoder(strategy: str, receiving: int, layers: int) -> bool:
    """Whether ``strategy`` adds the receiving layer's LoRA in a pruned decoder of ``layers`` layers: a block
    that ended at the last layer left no receiving layer (the final norm reads its input)."""
    return strategy in DECODER_SIDE and receiving < layers


def trains_something(strategy: str, start: int, size: int, num_layers: int, train_config) -> bool:
    """Whether healing block (start, size) of a ``num_layers``-layer decoder with ``strategy`` trains
    anything. When it does not (strategy none, no block, no steps, decoder healing of a block that ends at
    the last layer), the healed model *is* the pruned one, strategy none's: a walk scores that point once
    (``sweep.walk_path``) instead of decoding the same model again under each strategy's name."""
    check_strategy(strategy)
    if strategy == "none" or size == 0 or train_config.steps < 1:
        return False
    return strategy in INPUT_SIDE or heals_decoder(strategy, receiving_layer(start), num_layers - size)


def prune_slam(slam, start: int, size: int):
    """A pruned copy of a SLAM model (the original is untouched). A LoRA decoder is merged first, so the
    healing adapter is the only one on the pruned model."""
    pruned = copy.deepcopy(slam)
    if hasattr(pruned.llm, "merge_and_unload"):
        pruned.llm = pruned.llm.merge_and_unload()
        pruned.config.lora = None
    prune_block(pruned.llm, start, size, inplace=True)
    return pruned


def receiving_mlp_modules(llm, layer: int) -> list[str]:
    """Fully qualified names of the receiving layer's MLP projections, as peft's ``target_modules``."""
    layers = decoder_layers(llm)
    if not 0 <= layer < len(layers):
        raise UserError(f"receiving layer {layer} is outside the pruned decoder's {len(layers)} layers: "
                        "a block that ends at the last layer has no receiving layer to heal; heal the projector.")
    target = layers[layer]
    names = [name for name, module in llm.named_modules()
             if name.rsplit(".", 1)[-1] in MLP_PROJECTIONS and any(module is m for m in target.modules())]
    if not names:
        raise UserError(f"layer {layer} has no MLP gate/up/down projections ({', '.join(MLP_PROJECTIONS)}): "
                        "decoder healing supports Llama/Qwen2-style MLPs.")
    return names


def prepare_healing(slam, strategy: str, receiving: int, lora: dict | None = None, seed: int = 0) -> None:
    """Freeze everything, then unfreeze what ``strategy`` trains (adding the receiving-layer LoRA). The LoRA's
    initial weights are drawn from ``seed`` (the healing run's), not from the global generator: a cached
    healing run is keyed by its settings, so its start must follow from them, whatever ran before it."""
    from peft import LoraConfig, get_peft_model

    check_strategy(strategy)
    slam.requires_grad_(False)
    if heals_decoder(strategy, receiving, len(decoder_layers(slam.llm))):
        spec = {**HEALING_LORA, **(lora or {})}
        config = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"],
                            target_modules=receiving_mlp_modules(slam.llm, receiving), bias="none")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            slam.llm = get_peft_model(slam.llm, config, adapter_name="healing")
    if strategy in INPUT_SIDE:  # the input side: the projector and any trained soft prompt
        slam.projector.requires_grad_(True)
        if getattr(slam, "soft_prompt", None) is not None:
            slam.soft_prompt.requires_grad_(True)


def heal(slam, start: int, size: int, strategy: str, data, train_config, out_dir: str | os.PathLike,
         lora: dict | None = None, progress: bool = True):
    """Prune block (start, size) from a trained SLAM model and heal it with ``strategy``.

    Returns ``(healed_model, TrainResult | None)``; a point with nothing to train (``trains_something``:
    ``none``, for one) returns the pruned model and None. ``out_dir`` caches the run (a finished one is
    loaded, an interrupted one resumes): key it by ``strategy_config(slam, strategy, train_config)``, the
    settings the run trains with.
    """
    from speechllm_redundancy.training import train

    trains = trains_something(strategy, start, size, num_decoder_layers(slam.llm), train_config)
    pruned = prune_slam(slam, start, size)
    if not trains:
        pruned.requires_grad_(False)
        return pruned, None
    prepare_healing(pruned, strategy, receiving_layer(start), lora, seed=train_config.seed)
    # healing continues a trained model: never the projector's CTC warm start again
    train_config = replace(strategy_config(slam, strategy, train_config), ctc_warmup_steps=0)
    result = train(pruned, data, train_config, Path(out_dir), progress=progress)
    pruned.requires_grad_(False)
    return pruned, result
