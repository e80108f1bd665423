"""CTranslate2 Whisper → Hugging Face ``WhisperForConditionalGeneration``, without the ctranslate2 package.

A CTranslate2 ``model.bin`` is a flat little-endian file: a header (binary version, spec name, spec
revision), then named arrays (name, rank, shape, dtype id, byte count, raw bytes), then aliases (one name
standing for another, e.g. the output projection tied to the token embeddings). CTranslate2 fuses
Whisper's self-attention q/k/v into one matrix (Whisper's key projection has no bias: its slot is zero)
and the cross-attention k/v into another; we split them back.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from speechllm_redundancy.errors import UserError

SUPPORTED_VERSIONS = (4, 5, 6)  # version 4 introduced dtype ids; 6 is what ctranslate2 4.x writes
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


def read_ct2(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a CTranslate2 ``model.bin`` → (header, {name: array}); aliases appear under both names.

    Quantised weights come back as stored (int8/int16) with their ``…_scale`` arrays beside them:
    `dequantize` turns them into floats.
    """
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def string() -> str:
        nonlocal pos
        (length,) = take("H")
        text = data[pos : pos + length - 1].decode("utf-8")  # stored with a trailing NUL
        pos += length
        return text

    (version,) = take("I")
    if version not in SUPPORTED_VERSIONS:
        raise UserError(
            f"{path}: CTranslate2 binary version {version} is not supported (known: {SUPPORTED_VERSIONS}); "
            "re-convert the model with a ctranslate2 release that writes one of those versions."
        )
    header = {"version": version, "spec": string(), "revision": take("I")[0]}
    arrays: dict[str, np.ndarray] = {}
    for _ in range(take("I")[0]):
        name = string()
        (rank,) = take("B")
        shape = take("I" * rank)
        dtype_id, num_bytes = take("B")[0], take("I")[0]
        if dtype_id not in DTYPES:
            raise UserError(
                f"{path}: array {name!r} has unknown dtype id {dtype_id}; the file is not a "
                "CTranslate2 model or was written by a newer release."
            )
        raw = data[pos : pos + num_bytes]
        pos += num_bytes
        if DTYPES[dtype_id] == "bfloat16":  # numpy has no bfloat16: widen the upper halves to float32
            array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, DTYPES[dtype_id])
        arrays[name] = array.reshape(shape)
    for _ in range(take("I")[0]):
        alias, target = string(), string()
        arrays[alias] = arrays[target]
    if pos != len(data):
        raise UserError(
            f"{path}: {len(data) - pos} unexpected trailing bytes; the file is damaged — "
            "delete it and fetch it again."
        )
    return header, arrays


def dequantize(arrays: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """The float32 value of array ``name``, undoing CTranslate2 int8 (per row) / int16 (global) scales."""
    array = arrays[name]
    scale = arrays.get(name + "_scale")
    tensor = torch.from_numpy(np.array(array, dtype=np.float32))
    if scale is not None and array.dtype in (np.int8, np.int16):
        scale = torch.from_numpy(np.array(scale, dtype=np.float32))
        tensor = tensor / (scale.reshape(-1, *([1] * (tensor.dim() - 1))) if scale.ndim else scale)
    return tensor


def _scalar(arrays: dict[str, np.ndarray], name: str, default: int) -> int:
    return int(arrays[name].reshape(-1)[0]) if name in arrays else default


def whisper_state_dict(arrays: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], dict]:
    """Map CTranslate2 Whisper arrays to HF parameter names; also the shape facts the config needs."""
    get = lambda name: dequantize(arrays, name)  # noqa: E731
    sd: dict[str, torch.Tensor] = {}

    def linear(src: str, dst: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = get(f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = get(f"{src}/bias")

    def norm(src: str, dst: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = get(f"{src}/gamma"), get(f"{src}/beta")

    def fused(src: str, dsts: list[str]) -> None:
        """Split a fused projection; Whisper's k_proj has no bias, so its (zero) slot is dropped."""
        weights = get(f"{src}/weight").chunk(len(dsts), dim=0)
        biases = get(f"{src}/bias").chunk(len(dsts), dim=0)
        for dst, weight, bias in zip(dsts, weights, biases, strict=True):
            sd[f"{dst}.weight"] = weight.contiguous()
            if not dst.endswith("k_proj"):
                sd[f"{dst}.bias"] = bias.contiguous()

    def ffn(src: str, dst: str) -> None:
        norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
        linear(f"{src}/ffn/linear_1", f"{dst}.fc2")

    def self_attention(src: str, dst: str) -> None:
        norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        fused(f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"])
        linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")

    enc_layers = _count_layers(arrays, "encoder")
    dec_layers = _count_layers(arrays, "decoder")
    for side in ("encoder", "decoder"):
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        sd[f"model.{side}.embed_positions.weight"] = get(f"{side}/position_encodings/encodings")
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    sd["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    for i in range(enc_layers):
        self_attention(f"encoder/layer_{i}", f"model.encoder.layers.{i}")
        ffn(f"encoder/layer_{i}", f"model.encoder.layers.{i}")
    for i in range(dec_layers):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        self_attention(src, dst)
        norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
        fused(f"{src}/attention/linear_1", [f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"])
        linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
        ffn(src, dst)

    embed = sd["model.decoder.embed_tokens.weight"]
    shape = {
        "vocab_size": embed.shape[0],
        "d_model": embed.shape[1],
        "encoder_layers": enc_layers,
        "decoder_layers": dec_layers,
        "encoder_attention_heads": _scalar(arrays, "encoder/num_heads", 0),
        "decoder_attention_heads": _scalar(arrays, "decoder/num_heads", 0),
        "encoder_ffn_dim": sd["model.encoder.layers.0.fc1.weight"].shape[0],
        "decoder_ffn_dim": sd["model.decoder.layers.0.fc1.weight"].shape[0],
        "num_mel_bins": sd["model.encoder.conv1.weight"].shape[1],
        "max_source_positions": sd["model.encoder.embed_positions.weight"].shape[0],
        "max_target_positions": sd["model.decoder.embed_positions.weight"].shape[0],
    }
    if "decoder/projection/weight" in arrays and not torch.equal(get("decoder/projection/weight"), embed):
        raise UserError(
            "this CTranslate2 Whisper has an output projection separate from its embeddings; "
            "HF Whisper ties them, so it cannot be converted faithfully."
        )
    return sd, shape


def _count_layers(arrays: dict[str, np.ndarray], side: str) -> int:
    count = 0
    while any(name.startswith(f"{side}/layer_{count}/") for name in arrays):
        count += 1
    return count


def convert_ct2_whisper(src_dir: Path, out_dir: Path, store_dtype: str = "float16") -> None:
    """``src_dir`` (model.bin, config.json, tokenizer.json from CTranslate2) → a HF Whisper directory."""
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    src_dir = Path(src_dir)
    header, arrays = read_ct2(src_dir / "model.bin")
    if not header["spec"].startswith("Whisper"):
        raise UserError(
            f"{src_dir / 'model.bin'} holds a CTranslate2 {header['spec']!r}, not a Whisper model."
        )
    ct2_config = (
        json.loads((src_dir / "config.json").read_text()) if (src_dir / "config.json").exists() else {}
    )
    sd, shape = whisper_state_dict(arrays)
    del arrays

    tokenizer = _whisper_tokenizer(src_dir / "tokenizer.json", out_dir)
    tok = tokenizer.convert_tokens_to_ids
    multilingual = shape["vocab_size"] >= 51865  # OpenAI's own rule: the English-only vocab is one shorter
    eot, sot = tok("<|endoftext|>"), tok("<|startoftranscript|>")
    config = WhisperConfig(
        **shape,
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
        begin_suppress_tokens=None,  # generation settings live in generation_config.json only
        suppress_tokens=None,
    )
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to the token embeddings
    if missing or unexpected:
        raise UserError(
            f"CTranslate2 → HF Whisper: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            "the model.bin does not follow the Whisper spec this converter knows."
        )
    model.tie_weights()
    model.to(getattr(torch, store_dtype)).eval()
    model.config.dtype = store_dtype
    model.generation_config = _generation_config(config, tokenizer, ct2_config, multilingual)

    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=shape["num_mel_bins"]), tokenizer=tokenizer
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def _whisper_tokenizer(tokenizer_json: Path, out_dir: Path):
    """A `WhisperTokenizer` around the package's tokenizer.json (the OpenAI BPE with its special tokens)."""
    from transformers import WhisperTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    spec = json.loads(tokenizer_json.read_text())
    spec["post_processor"] = None  # WhisperTokenizer adds its own prefix tokens (language, task)
    (out_dir / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "WhisperTokenizer"}))
    return WhisperTokenizer.from_pretrained(out_dir)


def _generation_config(config, tokenizer, ct2_config: dict, multilingual: bool):
    """What ``WhisperForConditionalGeneration.generate`` reads: special-token ids, languages, tasks."""
    from transformers import GenerationConfig

    tok = tokenizer.convert_tokens_to_ids
    settings = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "decoder_start_token_id": config.decoder_start_token_id,
        "begin_suppress_tokens": ct2_config.get("suppress_ids_begin", [220, config.eos_token_id]),
        "suppress_tokens": ct2_config.get("suppress_ids", []),
        "no_timestamps_token_id": tok("<|notimestamps|>"),
        "prev_sot_token_id": tok("<|startofprev|>"),
        "max_initial_timestamp_index": 50,
        "max_length": config.max_target_positions,
        "return_timestamps": False,
        "is_multilingual": multilingual,
        "alignment_heads": ct2_config.get("alignment_heads", []),
    }
    if multilingual:
        ids = ct2_config.get("lang_ids") or []
        settings["lang_to_id"] = {tokenizer.convert_ids_to_tokens(i): i for i in ids}
        settings["task_to_id"] = {"transcribe": tok("<|transcribe|>"), "translate": tok("<|translate|>")}
    return GenerationConfig(**settings)
