"""Finding the decoder layers of a Hugging Face causal LM (shared by angles, pruning, healing)."""

from __future__ import annotations

from torch import nn


def decoder_stack(model: nn.Module) -> nn.Module:
    """The module that owns ``layers`` (e.g. ``LlamaModel``), through PEFT and CausalLM wrappers."""
    seen = model
    for _ in range(6):  # PeftModel -> LoraModel -> *ForCausalLM -> *Model
        if isinstance(getattr(seen, "layers", None), nn.ModuleList):
            return seen
        inner = None
        for attr in ("base_model", "model", "decoder", "llm"):
            candidate = getattr(seen, attr, None)
            if isinstance(candidate, nn.Module) and candidate is not seen:
                inner = candidate
                break
        if inner is None:
            break
        seen = inner
    raise TypeError(
        f"{type(model).__name__} has no decoder layer list (`model.layers`): this toolkit supports "
        "decoder-only Hugging Face LMs such as Llama, Qwen2, Mistral, Gemma. Pass such a model."
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's ``nn.ModuleList`` of transformer blocks."""
    return decoder_stack(model).layers


def num_decoder_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))
