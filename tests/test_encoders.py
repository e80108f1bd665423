"""Speech encoders (tiny random Whisper / WavLM) and the feature cache."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from slam_tiny import save_tiny_llm, save_tiny_wavlm, save_tiny_whisper, tone, write_manifest_dir
from speechllm_redundancy import encoders
from speechllm_redundancy.encoders import Bf16Layer, Bf16Linear, SpeechEncoder
from speechllm_redundancy.errors import UserError

torch.set_num_threads(2)


pytestmark = pytest.mark.usefixtures("artifacts")  # a fresh artifacts folder per test (conftest.py)


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return save_tiny_whisper(tmp_path_factory.mktemp("whisper"))


def wav(seconds, seed=0):
    return torch.from_numpy(tone(seconds, 200 + 50 * seed, seed))


def test_whisper_frames_at_50_hz(whisper_dir):
    enc = SpeechEncoder.from_name(whisper_dir)
    assert (enc.kind, enc.frame_rate, enc.dim) == ("whisper", 50.0, 32)
    feats = enc.encode([wav(0.7), wav(1.0, 1)])
    assert [f.shape for f in feats] == [(35, 32), (50, 32)]
    assert all(f.dtype == torch.float32 and torch.isfinite(f).all() for f in feats)


def test_whisper_trim_equals_full_window_when_the_window_is_full(whisper_dir):
    # the trimmed encoder path re-implements the HF forward with truncated positions: at 30 s they must agree
    # (fp32: at bf16 both windows run the trimmed path)
    full = SpeechEncoder.from_name(whisper_dir, whisper_window="full", precision="fp32")
    trim = SpeechEncoder.from_name(whisper_dir, whisper_window="trim", precision="fp32")
    x = wav(30.0)
    torch.testing.assert_close(trim.encode([x])[0], full.encode([x])[0], atol=1e-5, rtol=1e-5)


def test_whisper_trim_computes_the_same_log_mel_as_the_30_s_window(whisper_dir):
    # trim mode computes log-mel over the trimmed window only; it must equal the start of the 30 s one
    fe = SpeechEncoder.from_name(whisper_dir, whisper_window="trim").feature_extractor
    for seconds in (0.7, 2.0, 4.3):
        x = wav(seconds).numpy()
        n_mel = 100 * int(np.ceil(seconds))
        full = fe([x], sampling_rate=16000, return_tensors="pt").input_features[:, :, :n_mel]
        trimmed = fe([x], sampling_rate=16000, return_tensors="pt", padding="max_length",
                     max_length=(n_mel + 2) * fe.hop_length, truncation=True).input_features
        torch.testing.assert_close(trimmed[:, :, :n_mel], full, atol=1e-6, rtol=0)
    enc = SpeechEncoder.from_name(whisper_dir, whisper_window="trim")
    x = wav(2.0)  # ends exactly on a second: the case where the STFT's end reflection could leak in
    assert enc.encode([x])[0].shape == (100, 32)


def test_whisper_padded_window_is_trim_with_two_seconds_of_silence_after_the_speech(whisper_dir):
    # padded keeps trim's frames but computes them with 2 s of silence after the utterance in the window
    trim = SpeechEncoder.from_name(whisper_dir, whisper_window="trim")
    padded = SpeechEncoder.from_name(whisper_dir, whisper_window="padded")
    x = wav(1.3)
    got = padded.encode([x])[0]
    assert got.shape == trim.encode([x])[0].shape == (65, 32)
    with_silence = torch.cat([x, torch.zeros(2 * 16000)])
    torch.testing.assert_close(got, trim.encode([with_silence])[0][:65], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, trim.encode([x])[0], atol=1e-3)  # the silence changes the frames
    assert padded.batch_key(x.numel()) == trim.batch_key(x.numel()) + 200  # mel frames: 2 s more
    # near 30 s there is no room for silence: the window stops at Whisper's 30 s
    full = SpeechEncoder.from_name(whisper_dir, whisper_window="full")
    y = wav(29.5)
    torch.testing.assert_close(padded.encode([y])[0], full.encode([y])[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("window", ["trim", "padded", "full"])
def test_whisper_batching_does_not_change_features(whisper_dir, window, precision):
    enc = SpeechEncoder.from_name(whisper_dir, whisper_window=window, precision=precision)
    a, b = wav(1.2), wav(1.7, 1)  # same whole-second bucket → one batch (full: every length shares one)
    assert enc.batch_key(a.numel()) == enc.batch_key(b.numel())
    together = enc.encode([a, b])
    tol = 1e-5 if precision == "fp32" else 1e-3
    for x, f in zip((a, b), together):
        torch.testing.assert_close(enc.encode([x])[0], f, atol=tol, rtol=tol)


# -- bf16 ---------------------------------------------------------------------------------------------------
def roughen(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights at which every layer matters: the tiny model's init (std 0.02, zero biases) leaves each layer
    close to the identity, which would hide a wrong head split or a lost bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("packed", [True, False])
def test_bf16_layer_computes_the_whisper_layer(whisper_dir, packed, monkeypatch):
    """Bf16Layer (fused q/k/v, packed or plain bf16 products, fused GELU) = the HF layer, to bf16 rounding."""
    if not packed:
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    layer = roughen(SpeechEncoder.from_name(whisper_dir, precision="fp32").model).layers[1]
    fast = Bf16Layer(layer)
    assert fast.qkv.packed is packed and fast.act is None  # Whisper's exact GELU is fused into fc1
    x = 3 * torch.randn(2, 40, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = layer(x, None)
        ref = ref[0] if isinstance(ref, tuple) else ref
        got = fast(x.clone())
    assert relative_error(ref, x) > 0.3  # the layer changes its input a lot: the comparison is not vacuous
    assert got.dtype == torch.float32 and relative_error(got, ref) < 1e-2  # measured 0.0014
    other = Bf16Layer(roughen(layer, seed=1))  # other weights are told apart
    assert relative_error(other(x.clone()), ref) > 0.1


@pytest.mark.parametrize("window", ["trim", "padded", "full"])
def test_bf16_encoder_gives_the_fp32_frames_within_bf16_rounding(whisper_dir, window):
    fp32 = SpeechEncoder.from_name(whisper_dir, whisper_window=window, precision="fp32")
    roughen(fp32.model)
    bf16 = dataclasses.replace(fp32, precision="bf16")  # the same (roughened) weights
    waves = [wav(1.2), wav(1.7, 1)]
    for ref, got in zip(fp32.encode(waves), bf16.encode(waves)):
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert relative_error(got, ref) < 1e-2  # measured 0.003
        assert torch.nn.functional.cosine_similarity(got, ref, dim=-1).min() > 0.99
    assert bf16._bf16_layers is not None and fp32._bf16_layers is None
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # the model itself stays fp32


def test_precision_auto_is_bf16_only_for_whisper_on_a_cpu_with_native_bf16(whisper_dir, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setattr(encoders, "native_bf16", lambda: True)
    assert SpeechEncoder.from_name(whisper_dir, device="cpu").precision == "bf16"
    assert encoders.resolve_precision("auto", "whisper", "cuda") == "fp32"
    wavlm = save_tiny_wavlm(tmp_path / "wavlm")
    assert SpeechEncoder.from_name(wavlm).precision == "fp32"
    monkeypatch.setattr(encoders, "native_bf16", lambda: False)
    assert SpeechEncoder.from_name(whisper_dir, device="cpu").precision == "fp32"
    assert SpeechEncoder.from_name(whisper_dir, precision="bf16").precision == "bf16"  # asked for: emulated
    with pytest.raises(UserError, match="Whisper encoders only"):
        SpeechEncoder.from_name(wavlm, precision="bf16")
    with pytest.raises(UserError, match="precision='fp16'"):
        SpeechEncoder.from_name(whisper_dir, precision="fp16")
    assert isinstance(encoders.native_bf16(), bool)


def test_bf16_linear_fuses_gelu_and_keeps_a_missing_bias():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(24, 16, generator=g) / 4, torch.randn(5, 16, generator=g)
    ref = torch.nn.functional.linear(x, w)
    for lin in (Bf16Linear(w, None), Bf16Linear(w, None, gelu=True)):
        got = lin(x.to(torch.bfloat16))
        want = torch.nn.functional.gelu(ref) if lin.gelu else ref
        assert got.dtype == torch.bfloat16 and relative_error(got, want) < 1e-2


def test_whisper_rejects_audio_over_30_s(whisper_dir):
    enc = SpeechEncoder.from_name(whisper_dir)
    with pytest.raises(UserError, match="30 s"):
        enc.encode([wav(31.0)])


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_wavlm_frames_and_batch_invariance(tmp_path, norm):
    enc = SpeechEncoder.from_name(save_tiny_wavlm(tmp_path / "wavlm", norm))
    assert (enc.kind, enc.frame_rate, enc.dim) == ("ssl", 50.0, 32)
    x, y = wav(1.0), wav(0.63, 1)
    fx, fy = enc.encode([x])[0], enc.encode([y])[0]
    assert fx.shape == (49, 32) and fy.shape[0] == enc.num_frames(y.numel())
    if norm == "group":  # group norm over time sees padding: only equal lengths share a batch
        assert enc.batch_key(x.numel()) != enc.batch_key(y.numel())
        torch.testing.assert_close(enc.encode([x, x.flip(0)])[0], fx, atol=1e-5, rtol=1e-5)
    else:  # attention-masked models batch any lengths
        assert enc.batch_key(x.numel()) == enc.batch_key(y.numel())
        bx, by = enc.encode([x, y])
        torch.testing.assert_close(bx, fx, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(by, fy, atol=1e-4, rtol=1e-4)


def test_bad_encoder_names_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="speech encoder"):
        SpeechEncoder.from_name(save_tiny_llm(tmp_path / "llm"))
    with pytest.raises(UserError):
        SpeechEncoder.from_name(str(tmp_path / "missing"))


# -- feature cache ------------------------------------------------------------------------------------------
def test_feature_cache_computes_once_and_matches_encoder(tmp_path, whisper_dir, monkeypatch):
    from speechllm_redundancy.features import FeatureStore, cached_features, features_dir

    manifest = write_manifest_dir(tmp_path / "corpus")
    store = cached_features(whisper_dir, manifest, whisper_window="trim", progress=False)
    assert isinstance(store, FeatureStore) and sorted(store) == [f"u{i}" for i in range(5)]
    assert store.dim == 32 and store.frame_rate == 50
    enc = SpeechEncoder.from_name(whisper_dir, whisper_window="trim")
    from speechllm_redundancy.data.audio import load_audio
    from speechllm_redundancy.data.manifest import read_manifest

    for u in read_manifest(manifest):
        f = store[u.id]
        assert f.dtype == torch.float16
        torch.testing.assert_close(f.float(), enc.encode([load_audio(u.audio)])[0], atol=2e-2, rtol=1e-2)

    def boom(*a, **k):
        raise AssertionError("cache miss: the encoder was loaded again")

    monkeypatch.setattr(SpeechEncoder, "from_name", boom)
    again = cached_features(whisper_dir, manifest, whisper_window="trim", progress=False)
    full = features_dir(whisper_dir, manifest, "full")
    assert full != store.directory  # the window is part of the key
    assert again.directory == store.directory and torch.equal(again["u2"], store["u2"])


def test_feature_cache_layout_does_not_depend_on_precision(tmp_path, whisper_dir, monkeypatch):
    """bf16 encoding writes what fp32 encoding wrote: same directory (key), files, index, shard keys, shapes
    and stored dtype; frames equal within bf16 rounding. Existing caches therefore stay valid."""
    from safetensors import safe_open

    from speechllm_redundancy.cache import file_sha256, key_of
    from speechllm_redundancy.encoders import resolve_model
    from speechllm_redundancy.features import FORMAT_VERSION, cached_features, fingerprint

    manifest = write_manifest_dir(tmp_path / "corpus")
    stores = {}
    for precision in ("fp32", "bf16"):
        monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / precision))
        enc = SpeechEncoder.from_name(whisper_dir, whisper_window="trim", precision=precision)
        stores[precision] = cached_features(enc, manifest, shard_size=2, progress=False)
        key = key_of(1, fingerprint(resolve_model(whisper_dir)), "trim", file_sha256(manifest), 2)
        assert FORMAT_VERSION == 1 and stores[precision].directory.name == f"train-{key}"  # the key's recipe
    old, new = (stores[p].directory for p in ("fp32", "bf16"))
    assert old.relative_to(tmp_path / "fp32") == new.relative_to(tmp_path / "bf16")
    names = sorted(p.name for p in old.iterdir())
    assert names == sorted(p.name for p in new.iterdir())
    assert [n for n in names if n.startswith("shard-")] == [f"shard-{i:05d}.safetensors" for i in range(3)]
    assert json.loads((old / "index.json").read_text()) == json.loads((new / "index.json").read_text())
    for name in (n for n in names if n.endswith(".safetensors")):
        with safe_open(old / name, "pt") as a, safe_open(new / name, "pt") as b:
            assert list(a.keys()) == list(b.keys()) and a.metadata() == b.metadata()
            for u in a.keys():
                x, y = a.get_tensor(u), b.get_tensor(u)
                assert x.dtype == y.dtype == torch.float16 and x.shape == y.shape
                assert relative_error(y, x) < 2e-2


def test_feature_cache_key_follows_manifest_content(tmp_path, whisper_dir):
    from speechllm_redundancy.features import cached_features

    manifest = write_manifest_dir(tmp_path / "corpus")
    first = cached_features(whisper_dir, manifest, progress=False).directory
    manifest.write_text(manifest.read_text().splitlines()[0] + "\n")
    second = cached_features(whisper_dir, manifest, progress=False)
    assert second.directory != first and len(second) == 1


def test_feature_cache_resumes_after_interruption(tmp_path, whisper_dir, monkeypatch):
    from speechllm_redundancy.features import cached_features

    manifest = write_manifest_dir(tmp_path / "corpus")
    calls, store_done = [], False
    real = SpeechEncoder.encode

    def flaky(self, waves):
        nonlocal store_done
        calls.append(len(waves))
        if len(calls) == 3 and not store_done:
            raise RuntimeError("interrupted")
        return real(self, waves)

    monkeypatch.setattr(SpeechEncoder, "encode", flaky)
    with pytest.raises(RuntimeError, match="interrupted"):
        cached_features(whisper_dir, manifest, shard_size=2, batch_size=1, progress=False)
    shard = next((tmp_path / "artifacts" / "features").rglob("shard-00000.safetensors"))
    done = sorted(p.name for p in shard.parent.iterdir() if not p.name.startswith("."))  # less its record
    assert done == ["shard-00000.safetensors"]  # no index.json: not a finished cache
    calls.clear()
    store_done = True
    store = cached_features(whisper_dir, manifest, shard_size=2, batch_size=1, progress=False)
    assert len(store) == 5 and sum(calls) == 3  # shard 0 (2 utterances) was not encoded again


def test_feature_cache_limit_encodes_only_needed_shards_then_extends(tmp_path, whisper_dir, monkeypatch):
    """A run needing the first N utterances encodes only their shards; a later full run adds the rest
    without re-encoding, and a limit already covered is a pure cache hit."""
    from speechllm_redundancy.features import cached_features

    manifest = write_manifest_dir(tmp_path / "corpus")  # 5 utterances
    encoded = []
    real = SpeechEncoder.encode

    def counting(self, waves):
        encoded.append(len(waves))
        return real(self, waves)

    monkeypatch.setattr(SpeechEncoder, "encode", counting)
    part = cached_features(whisper_dir, manifest, limit=3, shard_size=2, progress=False)
    assert sum(encoded) == 4 and sorted(part) == ["u0", "u1", "u2", "u3"]  # two whole shards
    assert sorted(p.name for p in part.directory.glob("shard-*")) == ["shard-00000.safetensors",
                                                                      "shard-00001.safetensors"]
    encoded.clear()
    assert len(cached_features(whisper_dir, manifest, limit=4, shard_size=2, progress=False)) == 4
    assert encoded == []
    full = cached_features(whisper_dir, manifest, shard_size=2, progress=False)
    assert sum(encoded) == 1 and sorted(full) == [f"u{i}" for i in range(5)]
    assert full.directory == part.directory and torch.equal(full["u1"], part["u1"])
    encoded.clear()
    assert len(cached_features(whisper_dir, manifest, limit=2, shard_size=2, progress=False)) == 5
    assert encoded == []
    with pytest.raises(UserError, match="positive number"):
        cached_features(whisper_dir, manifest, limit=0, progress=False)
