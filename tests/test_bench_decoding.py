"""benchmarks/bench_decoding.py: its greedy decoders (project, its pre-issue-16 full-width self, no-cache
loop, HF generate) agree token for token under mixed caps and a stop id the model writes, at either
precision; the --tiny run prints the speed-up line."""

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
    assert names[:4] == ["project", "full-width", "no-cache", "generate"]
    assert names[4:] in ([], ["fp32"])  # auto: bf16 products (and the fp32 variant) where the CPU has bf16
    assert re.fullmatch(r"decoding speed-up: vs no-cache \d+\.\d×, vs generate \d+\.\d×", lines[-1])


def test_slam_run_compares_every_saved_model_and_reports_the_smaller_ratios(bench, tmp_path, capsys):
    """``--slam`` takes several trained models (one per decoder shape) on the same utterances: a table each,
    and the last line's ratios are the smallest of their tables'."""
    from slam_tiny import save_tiny_llm, save_tiny_whisper, write_manifest_dir
    from speechllm_redundancy.slam import SlamConfig, SlamModel

    whisper, dirs = save_tiny_whisper(tmp_path / "whisper"), []
    for layers in (2, 4):  # two decoder shapes
        llm = save_tiny_llm(tmp_path / f"llm-{layers}", layers=layers)
        torch.manual_seed(layers)
        SlamModel(SlamConfig(encoder=whisper, llm=llm, encoder_dim=32, projector_hidden=32)).save_pretrained(
            tmp_path / f"slam-{layers}")
        dirs.append(str(tmp_path / f"slam-{layers}"))
    manifest = write_manifest_dir(tmp_path / "corpus")
    args = ["--slam", *dirs, "--manifest", str(manifest), "--limit", "3", "--max-new-tokens", "6"]
    assert bench.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines if "identical outputs" in ln] == ["llm-2", "llm-4"]
    ratios = {dec: [ln.split()[-1] for ln in lines if ln.split("|")[0].strip() == dec]
              for dec in ("no-cache", "generate")}
    assert all(len(r) == 2 for r in ratios.values())
    smallest = {dec: min(r, key=lambda x: float(x.rstrip("×"))) for dec, r in ratios.items()}
    assert lines[-1] == (f"decoding speed-up: vs no-cache {smallest['no-cache']}, "
                         f"vs generate {smallest['generate']}")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_decoders_run_at_the_precision_asked_for_and_fp32_is_timed_beside_bf16(bench, capsys, precision):
    """All four decoders decode the same model at ``--precision`` (equal ids at bf16 too); at bf16 the fp32
    variant adds a table row and a line counting the rows that differ, which neither the equality check nor
    the last line reads."""
    assert bench.main(["--tiny", "--limit", "3", "--precision", precision]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(ln.endswith(f"identical outputs; 2 CPU threads, {precision} products, project batch 64")
               for ln in lines)
    variant = ["fp32"] if precision == "bf16" else []
    assert [ln.split("|")[0].strip() for ln in lines if "|" in ln][1:] == [*bench.DECODERS, *variant]
    counted = [ln for ln in lines if re.fullmatch(r"fp32: \d of 3 rows differ from bf16 products'.*; bf16 "
                                                  r"products decode \d+\.\d× as fast", ln)]
    assert len(counted) == len(variant)
    assert re.fullmatch(r"decoding speed-up: vs no-cache \d+\.\d×, vs generate \d+\.\d×", lines[-1])
