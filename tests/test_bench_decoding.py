"""benchmarks/bench_decoding.py: its greedy decoders (project, its pre-issue-16 full-width self, no-cache
loop, HF generate) agree token for token under mixed caps and a stop id the model writes; the --tiny run
prints the speed-up line."""

import re
import subprocess
import sys

import pytest
import torch

from benchmark_scripts import ROOT, load_benchmark, script_path

torch.set_num_threads(2)
SCRIPT = script_path("bench_decoding")


pytestmark = pytest.mark.usefixtures("artifacts")  # a fresh artifacts folder per test (conftest.py)


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_decoding")


def decode_all(bench, model, batch_list):
    """Each decoder's outputs, the rows in batch order."""
    return {name: decode() for name, decode in bench.decoders(model, batch_list, show=False).items()}


def test_the_decoders_agree_with_mixed_caps_and_a_stop_the_model_writes(bench):
    model, feats = bench.tiny_model(7)
    model.eval()
    batch_list = bench.batches(model, feats, batch_size=4)  # two left-padded batches of unequal lengths
    caps = [[9, 0, 3, 12], [7, 12, 5]]  # mixed, one row with nothing to write
    for b, c in zip(batch_list, caps):
        b["caps"] = c
        b["stops"] = frozenset()
    # reference: the project's decoder without stops writes exactly its cap per row
    free = [ids for b in batch_list for ids in bench.project(model, b)]
    assert [len(r) for r in free] == caps[0] + caps[1]
    assert len({tuple(r) for r in free if r}) > 3  # the inputs matter: not a constant output
    # a stop id some rows write (after their first token) and others do not
    counts = {t: sum(t in r[1:] for r in free) for r in free for t in r[1:]}
    stop = max((t for t in counts if counts[t] < sum(1 for r in free if r) - 1), key=lambda t: (counts[t], t))
    expected = [r[: r.index(stop) + 1] if stop in r else r for r in free]
    stopped = [i for i, (r, e) in enumerate(zip(free, expected)) if len(e) < len(r)]
    assert stopped and len(stopped) < len(free) - 2  # some rows stop early, others run to their cap
    for b in batch_list:
        b["stops"] = frozenset({stop})
    out = decode_all(bench, model, batch_list)
    for name in bench.DECODERS:
        assert out[name] == expected, name  # the stop token kept, the caps honoured, identical ids
    result = {name: (ids, 1.0) for name, ids in out.items()}
    assert bench.first_mismatch(result) is None
    # a decoder that drops the stop token, or a missing row, is caught at the first row concerned
    result["generate"] = ([r[:-1] if i in stopped else r for i, r in enumerate(out["generate"])], 1.0)
    assert bench.first_mismatch(result) == stopped[0]
    result["generate"] = (out["generate"], 1.0)
    result["no-cache"] = (out["no-cache"][:-1], 1.0)
    assert bench.first_mismatch(result) == len(free) - 1


def test_a_wrong_decoder_fails_the_run(bench, monkeypatch, capsys):
    """main compares all rows and exits non-zero on a mismatch, naming the row."""
    real = bench.hf_generate
    monkeypatch.setattr(bench, "hf_generate", lambda *a: real(*a)[:-1])
    assert bench.main(["--tiny", "--limit", "3"]) == 1
    assert "outputs differ at row 0" in capsys.readouterr().out


def test_tiny_run_prints_the_speed_up_line():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--limit", "6"], check=False,
                          capture_output=True, text=True, timeout=900, cwd=ROOT)  # guards a hang only
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "identical outputs" in proc.stdout
    names = [ln.split("|")[0].strip() for ln in lines if "|" in ln][1:]
    assert names == ["project", "full-width", "no-cache", "generate"]
    assert re.fullmatch(r"decoding speed-up: vs no-cache \d+\.\d×, vs generate \d+\.\d×", lines[-1])
