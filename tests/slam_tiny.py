"""Tiny random-init pieces for the SLAM tests: a Llama decoder with a byte-level ChatML tokenizer, Whisper
and WavLM encoders, and a manifest of synthetic waveforms — all built from configs, no network.

The decoder uses a large init range so greedy outputs vary from input to input (with 0.02 every prompt
decodes to the same token, and the batching tests would prove little).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_chatml_tokenizer(merges: tuple[tuple[str, str], ...] = ()):
    """Byte-level BPE, one token per byte unless ``merges`` (byte-level symbols, e.g. ``(".", '"')`` or
    ``("Ġ", '"')`` for a space) add merged tokens — as real vocabularies put a quote inside longer tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = CHATML
    return fast


def tiny_llm(seed: int = 0, init: float = 0.3, layers: int = 3, merges: tuple[tuple[str, str], ...] = ()):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_chatml_tokenizer(merges)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      initializer_range=init, tie_word_embeddings=False, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


def save_tiny_llm(directory: Path, **kw) -> str:
    model, tok = tiny_llm(**kw)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


def save_tiny_whisper(directory: Path) -> str:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                        max_source_positions=1500, max_target_positions=64, pad_token_id=1,
                        bos_token_id=2, eos_token_id=3, decoder_start_token_id=2)
    WhisperModel(cfg).save_pretrained(directory)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(directory)
    return str(directory)


def save_tiny_wavlm(directory: Path, norm: str = "group") -> str:
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    cfg = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                      feat_extract_norm=norm, do_stable_layer_norm=norm == "layer", num_buckets=32, max_bucket_distance=80)
    WavLMModel(cfg).save_pretrained(directory)
    return str(directory)


def tone(seconds: float, freq: float = 220.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * math.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def write_manifest_dir(directory: Path, durations=(0.7, 1.3, 2.2, 0.4, 1.9), texts=None) -> Path:
    """WAV files + a JSON Lines manifest in ``directory``; returns the manifest path."""
    import soundfile as sf

    from speechllm_redundancy.data.manifest import Utterance, write_manifest

    directory.mkdir(parents=True, exist_ok=True)
    utts = []
    for i, d in enumerate(durations):
        path = directory / f"u{i}.wav"
        sf.write(path, tone(d, 150 + 40 * i, seed=i), 16000)
        text = texts[i] if texts else f"utterance number {i}"
        utts.append(Utterance(id=f"u{i}", audio=str(path), duration=d, sample_rate=16000, text=text))
    return write_manifest(directory / "train.jsonl", utts)
