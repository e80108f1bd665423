"""Speech encoders (tiny random Whisper / WavLM) and the feature cache."""

import numpy as np
import pytest
import torch

from slam_tiny import save_tiny_llm, save_tiny_wavlm, save_tiny_whisper, tone, write_manifest_dir
from speechllm_redundancy.encoders import SpeechEncoder
from speechllm_redundancy.errors import UserError

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / "artifacts"))


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
    full = SpeechEncoder.from_name(whisper_dir, whisper_window="full")
    trim = SpeechEncoder.from_name(whisper_dir, whisper_window="trim")
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


@pytest.mark.parametrize("window", ["trim", "padded", "full"])
def test_whisper_batching_does_not_change_features(whisper_dir, window):
    enc = SpeechEncoder.from_name(whisper_dir, whisper_window=window)
    a, b = wav(1.2), wav(1.7, 1)  # same whole-second bucket → one batch (full: every length shares one)
    assert enc.batch_key(a.numel()) == enc.batch_key(b.numel())
    together = enc.encode([a, b])
    for x, f in zip((a, b), together):
        torch.testing.assert_close(enc.encode([x])[0], f, atol=1e-5, rtol=1e-5)


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
