"""Frozen speech encoders (Whisper, WavLM, HuBERT, wav2vec 2 through transformers) → frame features.

A SLAM model never trains its encoder, so features are computed once per corpus and cached
(`features.cached_features`, re-exported here). This module only turns waveforms into (T, D) frames.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from speechllm_redundancy.errors import UserError

SAMPLE_RATE = 16_000
WHISPER_MAX_SECONDS = 30.0
WHISPER_WINDOWS = ("full", "padded", "trim")
PADDED_SILENCE_SECONDS = 2  # of silence after the utterance in "padded" mode


def resolve_model(name: str) -> str:
    """A loadable path or hub id for ``name``: the zoo's resolver (packaged names, tiny-*, local dirs)."""
    from speechllm_redundancy.zoo import resolve

    return resolve(name)


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

    @classmethod
    def from_name(cls, name: str, whisper_window: str = "full", device: str | None = None) -> "SpeechEncoder":
        """Load by zoo name (``whisper-base``, ``tiny-wavlm`` …), local Hugging Face directory, or hub id."""
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
        return cls(name, path, kind, model, fe, rate, dim, whisper_window, device)

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
        """Encode one batch; returns float32 CPU tensors (T_i, dim), T_i = ``num_frames(len(wave_i))``.

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
        enc = self.model
        if self.whisper_window != "full":
            x = feats[:, :, :n_mel]
            x = nn.functional.gelu(enc.conv1(x))
            x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
            x = x + enc.embed_positions.weight[: x.shape[1]]
            for layer in enc.layers:
                x = layer(x, None)
                x = x[0] if isinstance(x, tuple) else x
            hidden = enc.layer_norm(x)
        else:
            hidden = enc(feats).last_hidden_state
        return [hidden[i, : self.num_frames(w.numel())].float().cpu() for i, w in enumerate(waves)]

    def _encode_ssl(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        inputs = self.feature_extractor(
            [w.numpy() for w in waves], sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_values", "attention_mask")}
        hidden = self.model(**inputs).last_hidden_state
        return [hidden[i, : self.num_frames(w.numel())].float().cpu() for i, w in enumerate(waves)]


def __getattr__(name: str):
    # the feature cache lives in features.py; re-exported so `encoders.cached_features` works as agreed
    if name in ("FeatureStore", "cached_features", "features_dir"):
        from speechllm_redundancy import features

        return getattr(features, name)
    raise AttributeError(name)
