"""Reading and writing audio: everything downstream sees 16 kHz mono float32.

soundfile reads WAV/FLAC/OGG/MP3 (libsndfile ≥ 1.1); torchaudio 2.11's own ``load`` needs torchcodec,
so it is used here only for resampling.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from speechllm_redundancy.cache import atomic_path
from speechllm_redundancy.errors import UserError

SAMPLE_RATE = 16_000


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(samples as float32 array of shape (frames, channels), sample rate); UserError if unreadable."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise UserError(f"audio file {path} does not exist: fix the manifest path or rebuild the corpus")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # noqa: BLE001 - soundfile raises several types for unreadable data
        raise UserError(
            f"audio file {path} is unreadable ({err}): re-create it or convert it to WAV/FLAC"
        ) from None
    return data, rate


def to_mono_16k(data: np.ndarray, rate: int):
    """Downmix (mean of channels) and resample to 16 kHz; returns a 1-D float32 torch tensor."""
    import torch
    import torchaudio.functional as AF

    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1) if data.ndim == 2 else data))
    if rate != SAMPLE_RATE:
        wave = AF.resample(wave, rate, SAMPLE_RATE)
    return wave.to(torch.float32).contiguous()


def load_audio(path: str | os.PathLike):
    """1-D float32 tensor at 16 kHz mono, whatever the file's rate and channel count."""
    data, rate = read_audio(path)
    return to_mono_16k(data, rate)


def audio_seconds(path: str | os.PathLike) -> tuple[float, int]:
    """(duration in seconds, sample rate) from the file header."""
    import soundfile as sf

    info = sf.info(str(path))
    return info.frames / info.samplerate, info.samplerate


def write_wav(path: str | os.PathLike, samples: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    """Write 16-bit PCM WAV atomically: a killed run never leaves a truncated file under ``path``."""
    import soundfile as sf

    samples = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), samples, rate, subtype="PCM_16", format="WAV")
    return Path(path)
