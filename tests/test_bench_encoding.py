"""benchmarks/bench_encoding.py: its fp32 and new paths store the same features (layout and, within bf16
rounding, values), a wrong path fails the run, and the --tiny run prints the speed-up line."""

import re
import subprocess
import sys

import pytest
import torch

from benchmark_scripts import ROOT, load_benchmark, script_path

from speechllm_redundancy import encoders

torch.set_num_threads(2)
SCRIPT = script_path("bench_encoding")


pytestmark = pytest.mark.usefixtures("artifacts")  # a fresh artifacts folder per test (conftest.py)


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_encoding")


def test_both_paths_store_the_same_features(bench, tmp_path):
    whisper, items = bench.tiny_inputs(5, tmp_path / "whisper")
    encs = {p: bench.SpeechEncoder.from_name(whisper, whisper_window="trim", precision=p)
            for p in ("fp32", "bf16")}
    result = bench.run(encs, items, batch_size=4)
    old, new = result["fp32"][0], result["bf16"][0]
    assert list(old) == list(new) and sorted(old) == sorted(u for u, _ in items)
    for u, wave in items:
        assert old[u].dtype == new[u].dtype == torch.float16
        assert old[u].shape == new[u].shape == (encs["fp32"].num_frames(wave.numel()), 32)
    agree = bench.agreement(new, old)
    assert bench.worst(agree) is None and max(a[0] for a in agree.values()) < bench.REL_TOL
    assert all(wall > 0 and cpu > 0 for _, wall, cpu in result.values())


def test_features_beyond_tolerance_are_caught(bench):
    ref = {"a": torch.ones(4, 8), "b": torch.randn(4, 8, generator=torch.Generator().manual_seed(0))}
    close = {"a": ref["a"] * 1.01, "b": ref["b"] + 1e-3}
    assert bench.worst(bench.agreement(close, ref)) is None
    assert bench.worst(bench.agreement({**close, "b": ref["b"].flip(0)}, ref)) == "b"  # frames out of order


def test_a_wrong_path_fails_the_run(bench, monkeypatch, capsys):
    """main compares every utterance and exits non-zero on features beyond tolerance, naming one."""
    monkeypatch.setattr(bench.SpeechEncoder, "_trimmed_forward",
                        lambda self, mel, real=bench.SpeechEncoder._trimmed_forward: real(self, mel).flip(1)
                        if self.precision != "fp32" else real(self, mel))
    monkeypatch.setattr(encoders, "native_bf16", lambda: True)  # "new" is bf16 on any CPU
    assert bench.main(["--tiny", "--limit", "3"]) == 1
    assert "features differ beyond bf16 tolerance at tone" in capsys.readouterr().out


def test_tiny_run_prints_the_speed_up_line():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--limit", "6"], check=False,
                          capture_output=True, text=True, timeout=900, cwd=ROOT)  # guards a hang only
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "agree within bf16 tolerance" in proc.stdout
    assert [ln.split("|")[0].strip() for ln in lines if "|" in ln][1:] == ["fp32", "new"]
    assert re.fullmatch(r"encoding speed-up: \d+\.\d×", lines[-1])
