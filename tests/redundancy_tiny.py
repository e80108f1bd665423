"""Tiny random-init decoders and a byte-level tokenizer for the angles / pruning / efficiency tests.

Built from configs, no network. Weights use a large init range so layers change the hidden state
visibly (with the usual 0.02 every block looks redundant and the tests would prove little).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

VOCAB = 260  # 256 bytes + <pad> <s> </s> <unk>
COMMON = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3,
              pad_token_id=256, bos_token_id=257, eos_token_id=258, tie_word_embeddings=False)


def _randomise_norms(model):
    """RMSNorm weights start at 1, where the final norm only rescales (angles unchanged): make them not."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.2, 1.8)
    return model


def tiny_llama(layers: int = 6, seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **COMMON))
    return _randomise_norms(model).to(dtype).eval()


def tiny_qwen2(layers: int = 6, seed: int = 0, dtype: torch.dtype = torch.float32) -> Qwen2ForCausalLM:
    """Qwen2 with sliding-window attention on the upper half: pruning must keep ``layer_types`` right."""
    torch.manual_seed(seed)
    config = Qwen2Config(num_hidden_layers=layers, use_sliding_window=True, sliding_window=6,
                         max_window_layers=layers // 2, **COMMON)
    return _randomise_norms(Qwen2ForCausalLM(config)).to(dtype).eval()


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges; prepends <s> by default (a 'default special token')."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({"<pad>": 256, "<s>": 257, "</s>": 258, "<unk>": 259})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 257)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}<s>assistant:{% endif %}")
    return fast


def save_tiny(directory: Path, kind: str = "llama", layers: int = 6) -> Path:
    model = tiny_llama(layers) if kind == "llama" else tiny_qwen2(layers)
    model.save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return Path(directory)


def random_batch(lengths: list[int], *, side: str = "right", seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token rows of the given lengths, padded on ``side``."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), COMMON["pad_token_id"])
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        seq = torch.randint(0, 256, (n,), generator=gen)
        span = slice(0, n) if side == "right" else slice(width - n, width)
        ids[row, span], mask[row, span] = seq, 1
    return {"input_ids": ids, "attention_mask": mask}
