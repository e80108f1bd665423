"""Frozen speech encoders (Whisper, WavLM, HuBERT, wav2vec 2 through transformers) → frame features.

A SLAM model never trains its encoder, so features are computed once per corpus and cached
(`features.cached_features`). This module only turns waveforms into (T, D) frames.

Whisper's encoder was trained on 30 s windows (3000 mel frames). ``whisper_window="full"`` (default) pads
every utterance to 30 s and keeps the first ⌈50·seconds⌉ output frames — what the model saw in training,
but ~0.25 s of CPU per utterance whatever its length. ``whisper_window="trim"`` encodes only the
utterance's own frames rounded up to a whole second (positional embeddings truncated): ~6× cheaper
for 4–5 s utterances, but the frames differ (cosine 0.95 to the full-window ones) and Whisper's own
decoder reading them got 44 % instead of 24 % WER on 40 test-clean utterances of the embedded corpus
(``benchmarks/whisper_window.py``). A SLAM projector is trained on whichever frames it is given, so
"trim" is the practical choice for CPU-sized runs; it is recorded in every cache key and saved model.
``whisper_window="padded"`` encodes the utterance plus 2 s of silence (whole seconds) and keeps the same
frames as "trim": the encoder then sees the end of the speech as it did in training. On 40 test-clean
utterances of the embedded corpus Whisper's own decoder went from 32 % (trim) to 26 % WER at 1.25x trim's
cost (10 s windows: 25 %; the 30 s window with all 1500 frames decoded: 30 %).

``precision="bf16"`` runs the linear products of Whisper's layers (and its two convolutions) in bfloat16 with
fp32 accumulation, layer norms, attention and the residual stream staying fp32 (``Bf16Layer``): ~2× the fp32
throughput on a CPU that multiplies bf16 natively (AVX512-BF16, AMX), slower on one that emulates it, so
``"auto"`` (default) picks it there only. Frames differ from fp32's by bf16 rounding: on 96 utterances of
the default corpus 1.2 % relative error per utterance (median; at most 3.9 %), mean frame cosine ≥ 0.998
(``benchmarks/bench_encoding.py``). The feature cache does not record the precision, so caches written at
either stay valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from speechllm_redundancy.errors import UserError

SAMPLE_RATE = 16_000
WHISPER_MAX_SECONDS = 30.0
WHISPER_WINDOWS = ("full", "padded", "trim")
PADDED_SILENCE_SECONDS = 2  # of silence after the utterance in "padded" mode
PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware: emulated bf16 is slower than fp32, so "auto" needs it."""
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported",
                                                                   "_is_amx_tile_supported"))


def resolve_precision(precision: str, kind: str, device: str) -> str:
    """"fp32" or "bf16" for an encoder of ``kind`` on ``device``; "auto" is bf16 for Whisper on a CPU with
    native bf16 (the case measured), fp32 otherwise."""
    if precision not in PRECISIONS:
        raise UserError(f"precision={precision!r} is not one of {PRECISIONS}.")
    if precision == "auto":
        return "bf16" if kind == "whisper" and device == "cpu" and native_bf16() else "fp32"
    if precision == "bf16" and kind != "whisper":
        raise UserError("precision='bf16' is implemented for Whisper encoders only: use 'fp32' or 'auto'.")
    return precision


def resolve_model(name: str) -> str:
    """A loadable path or hub id for ``name``: the zoo's resolver (packaged names, tiny-*, local dirs)."""
    from speechllm_redundancy.zoo import resolve

    return resolve(name)


def onednn_bf16() -> bool:
    """Whether oneDNN runs bf16 products here (and torch exposes its packed-weight linear)."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")
            and hasattr(ops, "_is_mkldnn_bf16_supported") and bool(ops._is_mkldnn_bf16_supported()))


class Bf16Linear:
    """``x·Wᵀ + b`` in bf16 (fp32 accumulation), the weight cast once and, on a CPU with oneDNN, packed in its
    preferred layout (~8 % faster products than ``F.linear``); ``gelu`` fuses Whisper's exact GELU."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False):
        weight = weight.detach().to(torch.bfloat16)
        self.bias = None if bias is None else bias.detach().to(torch.bfloat16)
        self.gelu = gelu
        self.packed = weight.device.type == "cpu" and onednn_bf16()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight) if self.packed else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            post, algorithm = ("gelu", "none") if self.gelu else ("none", "")  # "none": exact (erf) GELU
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, post, [], algorithm)
        y = nn.functional.linear(x, self.weight, self.bias)
        return nn.functional.gelu(y) if self.gelu else y


class Bf16Layer:
    """A Whisper encoder layer (pre-norm attention + GELU MLP) with its four linear products in bf16 and its
    layer norms, attention and residual stream in fp32: ~10 % sooner than autocast (bf16 products and
    attention), as the weights are cast (and packed) once, q, k and v come from one product of the normed
    input, and GELU is fused into fc1."""

    def __init__(self, layer: nn.Module):
        att = layer.self_attn
        self.heads, self.scaling = att.num_heads, att.scaling
        k_bias = torch.zeros_like(att.q_proj.bias)  # Whisper's k_proj has none
        self.qkv = Bf16Linear(torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]),
                              torch.cat([att.q_proj.bias, k_bias, att.v_proj.bias]))
        self.out = Bf16Linear(att.out_proj.weight, att.out_proj.bias)
        exact_gelu = layer.activation_fn.__class__.__name__ == "GELUActivation"
        self.act = None if exact_gelu else layer.activation_fn
        self.fc1 = Bf16Linear(layer.fc1.weight, layer.fc1.bias, gelu=exact_gelu)
        self.fc2 = Bf16Linear(layer.fc2.weight, layer.fc2.bias)
        self.norm1, self.norm2 = layer.self_attn_layer_norm, layer.final_layer_norm

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) fp32 → the layer's fp32 output, written into ``x`` (the caller's intermediate).

        Attention runs in fp32: CPU's fused attention is no faster in bf16, and fp32 scores keep the
        frames closer to fp32's."""
        b, t, d = x.shape
        qkv = self.qkv(self.norm1(x).to(torch.bfloat16)).float().view(b, t, 3, self.heads, d // self.heads)
        att = nn.functional.scaled_dot_product_attention(*qkv.permute(2, 0, 3, 1, 4), scale=self.scaling)
        x.add_(self.out(att.transpose(1, 2).reshape(b, t, d).to(torch.bfloat16)))
        h = self.fc1(self.norm2(x).to(torch.bfloat16))
        return x.add_(self.fc2(h if self.act is None else self.act(h)))


@dataclass
class SpeechEncoder:
    """A frozen encoder; ``encode`` maps 16 kHz mono waveforms to frames at ``frame_rate`` Hz, ``dim`` wide."""

    name: str
    path: str
    kind: str  # "whisper" or "ssl" (wav2vec 2 family: WavLM, HuBERT, wav2vec 2)
    model: nn.Module
    feature_extractor: object
    frame_rate: float
    dim: int
    whisper_window: str = "full"
    device: str = "cpu"
    precision: str = "fp32"  # of the encoder's matrix products: "fp32" or "bf16" (resolved, never "auto")
    _bf16_layers: list | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_name(cls, name: str, whisper_window: str = "full", device: str | None = None,
                  precision: str = "auto") -> "SpeechEncoder":
        """Load by zoo name (``whisper-base``, ``tiny-wavlm`` …), local Hugging Face directory, or hub id.

        ``precision``: "auto" (bf16 for Whisper on a CPU with native bf16, else fp32), "fp32" or "bf16"."""
        from transformers import AutoConfig

        if whisper_window not in WHISPER_WINDOWS:
            raise UserError(f"whisper_window={whisper_window!r} is not one of {WHISPER_WINDOWS}.")
        path = resolve_model(name)
        try:
            config = AutoConfig.from_pretrained(path)
        except OSError as err:
            raise UserError(
                f"cannot load speech encoder {name!r} ({err.__class__.__name__}): pass a zoo name "
                "(`python -m speechllm_redundancy models list`), a local Hugging Face directory, or a hub id "
                "reachable from this machine."
            ) from err
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if config.model_type == "whisper":
            from transformers import WhisperFeatureExtractor, WhisperModel

            full = WhisperModel.from_pretrained(path, dtype=torch.float32)
            model = full.get_encoder()
            del full.decoder
            try:
                fe = WhisperFeatureExtractor.from_pretrained(path)
            except OSError:  # converted checkpoints may lack preprocessor_config.json
                fe = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
            kind, rate, dim = "whisper", SAMPLE_RATE / (fe.hop_length * 2), config.d_model
        elif config.model_type in ("wavlm", "hubert", "wav2vec2", "wav2vec2-conformer", "data2vec-audio"):
            from transformers import AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor

            model = AutoModel.from_pretrained(path, dtype=torch.float32)
            try:
                fe = AutoFeatureExtractor.from_pretrained(path)
            except (OSError, ValueError):  # tiny/random checkpoints ship without preprocessor_config.json
                fe = Wav2Vec2FeatureExtractor(
                    do_normalize=True, return_attention_mask=config.feat_extract_norm == "layer"
                )
            kind, rate, dim = "ssl", SAMPLE_RATE / math.prod(config.conv_stride), config.hidden_size
        else:
            raise UserError(
                f"{name!r} is a {config.model_type!r} model, not a supported speech encoder: use Whisper, "
                "WavLM, HuBERT or wav2vec 2."
            )
        model.eval().requires_grad_(False).to(device)
        precision = resolve_precision(precision, kind, device)
        return cls(name, path, kind, model, fe, rate, dim, whisper_window, device, precision)

    # -- frames -------------------------------------------------------------------------------------------
    def num_frames(self, num_samples: int) -> int:
        """How many output frames an utterance of ``num_samples`` gets."""
        if self.kind == "whisper":
            return max(1, math.ceil(num_samples / (SAMPLE_RATE / self.frame_rate)))
        return int(self.model._get_feat_extract_output_lengths(torch.tensor(num_samples)).item())

    def batch_key(self, num_samples: int) -> int:
        """Utterances with equal keys are encoded together without changing each other's result."""
        if self.kind == "whisper":
            return self._mel_frames(num_samples) if self.whisper_window != "full" else 0
        uses_mask = getattr(self.feature_extractor, "return_attention_mask", False)
        # group-norm feature encoders (base models) see padding: batch only equal lengths
        return 0 if uses_mask else num_samples

    def _mel_frames(self, num_samples: int) -> int:
        """Mel frames fed to Whisper in trim / padded mode: the utterance rounded up to whole seconds (even
        count), plus ``PADDED_SILENCE_SECONDS`` in padded mode; never more than the 30 s window."""
        per_second = SAMPLE_RATE // self.feature_extractor.hop_length  # 100
        full = int(self.model.config.max_source_positions * 2)
        seconds = max(1, math.ceil(num_samples / SAMPLE_RATE))
        if self.whisper_window == "padded":
            seconds += PADDED_SILENCE_SECONDS
        return min(full, per_second * seconds)

    @torch.inference_mode()
    def encode(self, waves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Encode one batch; returns float32 CPU tensors (T_i, dim), T_i = ``num_frames(len(wave_i))``
        (computed at ``precision``).

        Callers wanting batch-independent results batch only waves with equal ``batch_key`` (as the
        feature cache does); mixing keys still works but padding may then leak into the frames.
        """
        waves = [torch.as_tensor(w, dtype=torch.float32).reshape(-1) for w in waves]
        for w in waves:
            if w.numel() == 0:
                raise UserError("an utterance has no audio samples: remove empty recordings from the manifest.")
        if self.kind == "whisper":
            return self._encode_whisper(waves)
        return self._encode_ssl(waves)

    def _encode_whisper(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        too_long = [w.numel() / SAMPLE_RATE for w in waves if w.numel() > WHISPER_MAX_SECONDS * SAMPLE_RATE]
        if too_long:
            raise UserError(
                f"an utterance lasts {max(too_long):.1f} s but the Whisper encoder sees at most 30 s: split long "
                "recordings into segments first (or drop them with validate_manifest(max_seconds=30))."
            )
        if self.whisper_window != "full":
            # log-mel of the trimmed window (+2 frames of silence, so the STFT's reflection at the end never
            # reaches a kept frame) only: the first n_mel frames equal the 30 s features' at a tenth of the cost
            n_mel = max(self._mel_frames(w.numel()) for w in waves)
            fe = self.feature_extractor
            pad = {"padding": "max_length", "max_length": min((n_mel + 2) * fe.hop_length, fe.n_samples),
                   "truncation": True}
        else:
            pad = {}  # (B, mels, 3000): each utterance padded to 30 s
        feats = self.feature_extractor(
            [w.numpy() for w in waves], sampling_rate=SAMPLE_RATE, return_tensors="pt", **pad
        ).input_features.to(self.device)
        if self.whisper_window == "full" and self.precision == "fp32":
            hidden = self.model(feats).last_hidden_state
        else:  # the same layers on the trimmed window (or all 3000 frames: the 30 s window)
            hidden = self._trimmed_forward(feats[:, :, :n_mel] if self.whisper_window != "full" else feats)
        return [hidden[i, : self.num_frames(w.numel())].float().cpu() for i, w in enumerate(waves)]

    def _trimmed_forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Whisper's encoder on up to 3000 mel frames, positional embeddings cut to fit (Hugging Face's
        forward insists on the 30 s window); at bf16 the convolutions run under autocast and the layers are
        ``Bf16Layer``s, the residual stream staying fp32."""
        enc = self.model
        with torch.autocast(torch.device(self.device).type, torch.bfloat16, enabled=self.precision == "bf16"):
            x = nn.functional.gelu(enc.conv1(mel))
            x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        if self.precision == "bf16":
            if self._bf16_layers is None:  # weights cast and packed once per encoder
                self._bf16_layers = [Bf16Layer(layer) for layer in enc.layers]
            for layer in self._bf16_layers:
                x = layer(x)
        else:
            for layer in enc.layers:
                x = layer(x, None)
                x = x[0] if isinstance(x, tuple) else x
        return enc.layer_norm(x)

    def _encode_ssl(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        inputs = self.feature_extractor(
            [w.numpy() for w in waves], sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_values", "attention_mask")}
        hidden = self.model(**inputs).last_hidden_state
        return [hidden[i, : self.num_frames(w.numel())].float().cpu() for i, w in enumerate(waves)]
