"""Tiny random-init models built from configs (fixed seed): the whole pipeline runs on them in seconds.

They have the real architectures (Llama, Qwen2, Whisper, WavLM, HuBERT) and the real frame rates
(Whisper: 80 mels, 1500 encoder positions for 30 s; WavLM/HuBERT: 320× downsampling = 50 Hz), only
narrow and shallow. The causal LMs share one offline byte-level tokenizer with a ChatML chat template.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_VERSION = 1  # bump when a config below changes: cached builds are then rebuilt
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (what byte-level BPE vocabularies are made of)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer():
    """256 byte tokens + ChatML specials, as a `PreTrainedTokenizerFast`; needs no files and no network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        chat_template=CHATML_TEMPLATE,
    )


def _save_causal_lm(config_cls, out_dir: Path, seed: int, **shape) -> None:
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = byte_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    vocab_size = -(-len(tokenizer) // 8) * 8
    config = config_cls(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|pad|>"),
        **shape,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")],
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _wav_feature_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )


def _ssl_shape() -> dict:
    """WavLM-large-like layout (layer-norm conv stack, stable layer norm), narrow: 50 Hz, 64 wide."""
    return dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32,) * 7,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        vocab_size=32,
    )


def build_tiny(name: str, out_dir: Path, seed: int = 0) -> None:
    """Write the tiny model ``name`` to ``out_dir`` as a HF directory."""
    from transformers import (
        HubertConfig,
        HubertModel,
        LlamaConfig,
        Qwen2Config,
        WavLMConfig,
        WavLMModel,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    if name == "tiny-llama":
        _save_causal_lm(LlamaConfig, out_dir, seed, num_hidden_layers=6, tie_word_embeddings=True)
    elif name == "tiny-qwen2":
        _save_causal_lm(Qwen2Config, out_dir, seed, num_hidden_layers=4, tie_word_embeddings=False)
    elif name == "tiny-whisper":
        config = WhisperConfig(
            vocab_size=264,
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            num_mel_bins=80,
            max_source_positions=1500,
            max_target_positions=448,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            decoder_start_token_id=1,
            begin_suppress_tokens=None,
            suppress_tokens=None,
        )
        torch.manual_seed(seed)
        WhisperForConditionalGeneration(config).eval().save_pretrained(out_dir)
        WhisperFeatureExtractor(feature_size=80).save_pretrained(out_dir)
    elif name in ("tiny-wavlm", "tiny-hubert"):
        config_cls, model_cls = (
            (WavLMConfig, WavLMModel) if name == "tiny-wavlm" else (HubertConfig, HubertModel)
        )
        torch.manual_seed(seed)
        model_cls(config_cls(**_ssl_shape())).eval().save_pretrained(out_dir)
        _wav_feature_extractor().save_pretrained(out_dir)
    else:
        raise KeyError(name)
