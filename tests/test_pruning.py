"""Block removal: the pruned model is the unpruned one with the block skipped, and a valid HF model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from redundancy_tiny import random_batch, save_tiny, tiny_llama, tiny_qwen2
from speechllm_redundancy.cli import main as cli_main
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.pruning import prune_block, receiving_layer

torch.set_num_threads(1)
BUILDERS = {"llama": tiny_llama, "qwen2": tiny_qwen2}
# (start, size): a middle block, one at the start, one ending at the last layer, a single layer
BLOCKS = [(2, 2), (0, 3), (4, 2), (5, 1)]


def logits_with_block_skipped(model, batch, start, size):
    """The unpruned model with layers start..start+size-1 replaced by identities (forward hooks)."""
    def identity(module, args, kwargs, output):
        return args[0] if args else kwargs["hidden_states"]

    layers = model.model.layers
    handles = [layers[i].register_forward_hook(identity, with_kwargs=True)
               for i in range(start, start + size)]
    try:
        with torch.no_grad():
            return model(**batch).logits
    finally:
        for handle in handles:
            handle.remove()


def greedy(model, ids, use_cache, new=12):
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, use_cache=use_cache,
                             pad_token_id=model.config.pad_token_id)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_pruned_equals_skipped_block_and_config_is_consistent(kind):
    model = BUILDERS[kind](layers=6, dtype=torch.float64)
    batch = random_batch([7, 11, 4], side="left")
    for start, size in BLOCKS:
        pruned = prune_block(model, start, size)
        assert pruned is not model and model.config.num_hidden_layers == 6  # original untouched
        assert len(model.model.layers) == 6
        with torch.no_grad():
            got = pruned(**batch).logits
        skipped = logits_with_block_skipped(model, batch, start, size)
        torch.testing.assert_close(got, skipped, rtol=0, atol=1e-10)
        kept = [i for i in range(6) if not start <= i < start + size]
        cfg = pruned.config
        assert cfg.num_hidden_layers == len(pruned.model.layers) == 6 - size
        assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == list(range(6 - size))
        assert cfg.pruned_layers == list(range(start, start + size))
        if kind == "qwen2":
            assert cfg.layer_types == [model.config.layer_types[i] for i in kept]
            assert cfg.max_window_layers == sum(i < 3 for i in kept)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_cached_and_uncached_greedy_generation_agree(kind):
    model = BUILDERS[kind](layers=6)
    ids = random_batch([9])["input_ids"]
    pruned = prune_block(model, 1, 3)
    cached, uncached = greedy(pruned, ids, True), greedy(pruned, ids, False)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, greedy(model, ids, True))  # the pruning did change the model


def test_save_load_round_trip_and_repeated_pruning(tmp_path):
    model = tiny_qwen2(layers=6)
    once = prune_block(model, 3, 2)  # removes original 3, 4
    twice = prune_block(once, 0, 1)  # removes original 0
    assert twice.config.pruned_layers == [0, 3, 4]
    twice.save_pretrained(tmp_path / "p")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "p").eval()
    assert back.config.num_hidden_layers == 3 and back.config.pruned_layers == [0, 3, 4]
    assert back.config.layer_types == twice.config.layer_types
    batch = random_batch([6, 8])
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).logits, twice(**batch).logits, rtol=0, atol=0)
    ids = batch["input_ids"][:1]
    assert torch.equal(greedy(back, ids, True), greedy(back, ids, False))


def test_pruning_nothing_is_identity():
    model = tiny_llama(layers=4)
    same = prune_block(model, 2, 0)
    assert same is not model and same.config.to_dict() == model.config.to_dict()
    batch = random_batch([5, 3])
    with torch.no_grad():
        assert torch.equal(same(**batch).logits, model(**batch).logits)
    assert prune_block(model, 0, 0, inplace=True) is model


def test_receiving_layer_is_old_start_plus_size():
    model = tiny_llama(layers=6)
    start, size = 1, 3
    pruned = prune_block(model, start, size)
    index = receiving_layer(start, num_layers=pruned.config.num_hidden_layers)
    assert index == start
    old = model.model.layers[start + size].state_dict()
    new = pruned.model.layers[index].state_dict()
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    assert new["mlp.up_proj.weight"].data_ptr() != old["mlp.up_proj.weight"].data_ptr()  # a copy
    with pytest.raises(UserError, match="no receiving layer"):
        receiving_layer(4, num_layers=4)  # block (4, 2) of 6 ended at the last layer


def test_inplace_peft_and_holder_models():
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(layers=5)
    batch = random_batch([6])
    expected = logits_with_block_skipped(model, batch, 1, 2)
    peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    pruned_peft = prune_block(peft, 1, 2)
    assert type(pruned_peft) is type(peft)
    with torch.no_grad():
        torch.testing.assert_close(pruned_peft(**batch).logits, expected, rtol=0, atol=1e-5)

    class Holder(nn.Module):  # a SlamModel holds its LLM as .llm
        def __init__(self, llm):
            super().__init__()
            self.llm = llm

    holder = Holder(copy.deepcopy(model))
    assert prune_block(holder, 1, 2, inplace=True) is holder
    assert holder.llm.config.num_hidden_layers == 3 and len(holder.llm.model.layers) == 3
    with torch.no_grad():
        torch.testing.assert_close(holder.llm(**batch).logits, expected, rtol=0, atol=1e-5)


def test_errors():
    model = tiny_llama(layers=4)
    for start, size in [(0, 4), (0, -1), (3, 2), (-1, 1)]:
        with pytest.raises(UserError):
            prune_block(model, start, size)
    with pytest.raises(UserError, match="decoder"):
        prune_block(nn.Linear(2, 2), 0, 1)


def test_cli_prune(tmp_path, capsys):
    src = save_tiny(tmp_path / "m", "qwen2", layers=6)
    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(src), "--start", "2", "--size", "3", "--output", str(out)]
    assert cli_main(argv) == 0
    back = AutoModelForCausalLM.from_pretrained(out)
    assert back.config.num_hidden_layers == 3 and (out / "tokenizer.json").exists()
    assert cli_main(argv) == 2 and "--force" in capsys.readouterr().err
    assert cli_main(argv + ["--force"]) == 0
    assert cli_main(["prune", "--model", str(src), "--start", "0", "--size", "6",
                     "--output", str(tmp_path / "x")]) == 2
    assert "out of range" in capsys.readouterr().err and not (tmp_path / "x").exists()
