"""GGUF (llama.cpp) → a plain Hugging Face causal-LM directory, through transformers' own GGUF loader.

transformers 5 de-quantises a GGUF file into a dense model and rebuilds its tokenizer (chat template
included), but the model it returns still says it is GGUF-quantised (`config.quantization_config`), which
would make every later `from_pretrained`, PEFT wrap or training run treat it specially. So we rebuild the
model from its config without that flag, move the de-quantised weights over, and save plain safetensors.
"""

from __future__ import annotations

from pathlib import Path

import torch

END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "</s>")


def convert_gguf(
    src_dir: Path, out_dir: Path, gguf_file: str = "model.gguf", store_dtype: str = "bfloat16"
) -> None:
    """Write ``out_dir`` (config, generation config, safetensors, tokenizer) from ``src_dir/gguf_file``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = ""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)  # shares the tensors: no copy
    del loaded
    model.tie_weights()
    model.to(getattr(torch, store_dtype)).eval()
    model.config.dtype = store_dtype
    model.generation_config = _generation_config(model, tokenizer)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _generation_config(model, tokenizer):
    """Greedy by default; stop on any of the chat/document end tokens the vocabulary has."""
    from transformers import GenerationConfig

    added = tokenizer.get_added_vocab()  # only added tokens: Qwen's BPE also has an ordinary "</s>"
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    eos += [added[t] for t in END_TOKENS if t in added and added[t] not in eos]
    if not eos:
        raise ValueError("the GGUF tokenizer has no end-of-sequence token; generation could not stop")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[-1]
    model.config.eos_token_id, model.config.pad_token_id = eos[0], pad
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos if len(eos) > 1 else eos[0], pad_token_id=pad
    )
