"""Data parallel: two processes train, heal and decode what one process does.

Each test runs `accelerate launch --multi_gpu --num_processes 2 …`, the command book/paper_scale.md gives
for GPUs (without CUDA the two processes meet over gloo on this CPU), and compares its output with the
same work done in one process here. This file is also the healing run's script (`python
test_distributed.py heal OUT`).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

torch.set_num_threads(2)
HERE = Path(__file__).resolve().parent
ACCELERATE = Path(sys.executable).with_name("accelerate")
TEXTS = ("a cat sat", "the dog sat on the mat", "one bird and two dogs fly", "fish", "cat dog bird",
         "birds fly over")
DURATIONS = (0.7, 1.3, 2.2, 0.4, 1.9, 1.1)

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this torch build has no gloo backend for processes on a CPU")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Whisper, two tiny decoders, a manifest and the artifacts folder they share across tests.
    ``llm`` (large init) answers each utterance differently; ``smooth_llm`` (init 0.02) trains with
    gradients far from zero, where float rounding stays rounding (see ``assert_same_weights``)."""
    from slam_tiny import save_tiny_llm, save_tiny_whisper, write_manifest_dir

    root = tmp_path_factory.mktemp("tiny")
    return {"whisper": save_tiny_whisper(root / "whisper"), "llm": save_tiny_llm(root / "llm"),
            "smooth_llm": save_tiny_llm(root / "smooth_llm", init=0.02),
            "manifest": str(write_manifest_dir(root / "corpus", DURATIONS, TEXTS)),
            "artifacts": str(root / "artifacts")}


@pytest.fixture(autouse=True)
def _artifacts(tiny, monkeypatch):
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", tiny["artifacts"])


def launch(args: list[str], artifacts: str) -> str:
    """Run ``accelerate launch --multi_gpu --num_processes 2 ARGS`` to completion; returns its stdout."""
    with socket.socket() as s:  # a free port for the processes' rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SPEECHLLM_ARTIFACTS": artifacts, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), *args]
    run = subprocess.run(cmd, env=env, cwd=HERE, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return run.stdout


def weights(final: Path) -> dict[str, torch.Tensor]:
    """Every trained tensor a saved SLAM model holds (projector, prompt, CTC head, adapters)."""
    from safetensors.torch import load_file

    return {f"{f.relative_to(final)}:{k}": v for f in sorted(final.rglob("*.safetensors"))
            for k, v in load_file(f).items()}


def assert_same_weights(one: Path, two: Path) -> None:
    """Each tensor equal up to float rounding: ‖two − one‖ ≤ 1e-4 ‖one‖. Elementwise, AdamW can turn the
    rounding of a gradient that is itself within rounding of zero into a step of a good part of the learning
    rate in that one element (it divides by |gradient| + 1e-8); the norm bounds the sum of such. Measured
    here: ≤ 1e-5 with the batch's mean as the loss, ≥ 6e-2 with each process's own mean averaged."""
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]) or (b[name] - a[name]).norm() <= 1e-4 * a[name].norm(), name


def train_args(tiny, out: Path) -> list[str]:
    """A CTC warm start, then next-token steps with a soft prompt and SpecAugment, scored as it trains. The
    six utterances' targets differ in length; batches of 3 split 2 + 1 between the processes, and the warm
    start's batches of 5 and 1 split 3 + 2 and 1 + none."""
    return ["slam", "train", "--encoder", tiny["whisper"], "--llm", tiny["smooth_llm"],
            "--train", tiny["manifest"], "--out", str(out), "--k", "2", "--steps", "3", "--batch-size", "3",
            "--grad-accum", "2", "--lr", "1e-2", "--warmup-steps", "1", "--ctc-warmup-steps", "2",
            "--ctc-batch-size", "5", "--prompt-vectors", "2", "--time-masks", "2", "--time-mask-width", "20",
            "--mixed-precision", "no", "--bucket", "0", "--eval", tiny["manifest"], "--eval-limit", "4"]


def test_two_processes_train_what_one_process_trains(tiny, tmp_path):
    from speechllm_redundancy.cli import main

    launch(["-m", "speechllm_redundancy", *train_args(tiny, tmp_path / "two")], tiny["artifacts"])
    assert main(train_args(tiny, tmp_path / "one")) == 0
    assert_same_weights(tmp_path / "one" / "final", tmp_path / "two" / "final")
    one, two = (json.loads((tmp_path / run / "result.json").read_text())["history"] for run in ("one", "two"))
    assert [h.get("eval_wer") for h in two] == [h.get("eval_wer") for h in one]  # decoded in step, in order
    losses = [[h.get("loss", 0.0) for h in run] for run in (one, two)]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=0)


def test_two_processes_train_a_profiles_model_where_the_chapters_read_it(tiny, tmp_path, monkeypatch):
    """`slam train --profile` as book/paper_scale.md launches it: the two processes train the model a chapter
    asks ``Study.slam`` for, into its cache folder, so the chapter then finds it instead of training it."""
    import yaml

    from speechllm_redundancy import profiles, training
    from speechllm_redundancy.data.corpus import SPLITS
    from speechllm_redundancy.experiments import Settings, Study

    from dataclasses import replace

    from speechllm_redundancy.data.manifest import read_manifest, write_manifest

    every = tmp_path / "every.jsonl"  # each split: the six utterances, with a translation for the AST splits
    write_manifest(every, [replace(u, translation=u.text) for u in read_manifest(tiny["manifest"])])
    splits = {s: {"reader": "manifest", "path": str(every)} for s in SPLITS if s != "real"}
    profile = tmp_path / "mine.yaml"
    profile.write_text(yaml.safe_dump({
        "corpus": {"size": "smoke", "real": False, "splits": splits},
        "common": {"encoder": tiny["whisper"], "speech_llms": [tiny["smooth_llm"]], "train_steps": 2,
                   "recipe": "paper", "train_limit": None, "whisper_window": "full"}}))
    study = Study(Settings.of(profiles.chapter_namespace(profiles.load_profile(profile), "03_asr_across_scales")))
    out = launch(["-m", "speechllm_redundancy", "slam", "train", "--profile", str(profile),
                  "--llm", tiny["smooth_llm"]], tiny["artifacts"])
    printed = [line[len("model: "):] for line in out.splitlines() if line.startswith("model: ")]
    assert len(printed) == 1  # the first process reports
    monkeypatch.setattr(training, "_set_up_phase", lambda *a, **k: pytest.fail("the chapter trained it again"))
    run = study.slam(tiny["smooth_llm"])
    assert str(run.result.out_dir / "final") == printed[0] and run.result.steps == {"slam": 2}


class Simulated:
    """What ``_mean_part`` asks of accelerate, as one of ``n`` processes whose token count is ``total``."""

    def __init__(self, n: int, total: torch.Tensor):
        self.num_processes, self.total = n, total

    def reduce(self, tensor, reduction):
        assert reduction == "sum"
        return self.total


@pytest.mark.parametrize("batch, n", [([0, 1, 2], 2), ([0, 1], 3)])
def test_the_processes_gradients_average_to_the_batch_means(batch, n):
    """Each process's loss part, its gradient averaged over n as DDP does, gives the gradient of the batch's
    token mean, however many examples and tokens each process got — also a process left without any."""
    from test_training import make, toy_data
    from speechllm_redundancy.distributed import shard
    from speechllm_redundancy.training import _mean_part

    model, examples = make(init=0.3), toy_data().examples

    def forward(idx):
        return model([examples[i].features.float() for i in idx], ["asr"] * len(idx),
                     [examples[i].target for i in idx])

    def gradient(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([q.grad.flatten() for q in model.projector.parameters()])

    tokens = forward(batch)["example_tokens"]
    assert len(set(tokens.tolist())) > 1  # targets of different lengths
    whole = gradient(forward(batch)["loss"])
    parts = [shard(batch, rank, n) for rank in range(n)]
    assert [w for _, w in parts] == [1.0 if rank < len(batch) else 0.0 for rank in range(n)]
    averaged = sum(gradient(_mean_part(Simulated(n, tokens.sum().float()), forward(idx), w))
                   for idx, w in parts) / n
    torch.testing.assert_close(averaged, whole)


def decoder_model(tiny, directory: Path) -> Path:
    """An untrained SLAM model whose outputs differ from utterance to utterance."""
    from speechllm_redundancy.slam import SlamConfig, SlamModel

    torch.manual_seed(0)
    config = SlamConfig(encoder=tiny["whisper"], llm=tiny["llm"], encoder_dim=32, k=2, projector_hidden=64)
    model = SlamModel(config)
    with torch.no_grad():
        model.projector.net[-1].weight.mul_(40)  # speech loud enough to steer the random decoder
    return model.save_pretrained(directory)


def test_two_processes_decode_what_one_process_decodes_in_the_same_order(tiny, tmp_path):
    from speechllm_redundancy.cli import main

    model = decoder_model(tiny, tmp_path / "model")
    args = ["slam", "evaluate", "--model", str(model), "--manifest", tiny["manifest"], "--batch-size", "2"]
    out = launch(["-m", "speechllm_redundancy", *args, "--hyps", str(tmp_path / "two.jsonl")], tiny["artifacts"])
    assert out.count(f"on {len(TEXTS)} utterances") == 1  # one report for the launch, not one per process
    assert main([*args, "--hyps", str(tmp_path / "one.jsonl")]) == 0
    one, two = ([json.loads(line) for line in (tmp_path / f"{n}.jsonl").read_text().splitlines()]
                for n in ("one", "two"))
    assert [r["id"] for r in one] == [f"u{i}" for i in range(len(TEXTS))]
    assert len({r["hyp"] for r in one}) > 2  # outputs differ: a wrong order would show
    assert two == one


def heal_run(out: Path) -> None:
    """Heal a tiny SLAM model ("both": receiving-layer LoRA and projector; dropout off, as it is drawn per
    process) on the toy data, in batches of 5 that split 3 + 2, with SpecAugment."""
    from test_training import make, toy_data
    from speechllm_redundancy.healing import heal
    from speechllm_redundancy.training import TrainConfig

    cfg = TrainConfig(steps=3, batch_size=5, grad_accum=2, lr=5e-3, warmup_steps=1, time_masks=2,
                      time_mask_width=4, mixed_precision="no", checkpoint_every=2)
    heal(make(), 1, 1, "both", toy_data(), cfg, out, lora={"dropout": 0.0}, progress=False)


def test_two_processes_heal_what_one_process_heals(tiny, tmp_path):
    launch([str(Path(__file__).resolve()), "heal", str(tmp_path / "two")], tiny["artifacts"])
    heal_run(tmp_path / "one")
    assert (tmp_path / "two" / "final" / "adapters" / "healing" / "adapter_model.safetensors").exists()
    assert_same_weights(tmp_path / "one" / "final", tmp_path / "two" / "final")


if __name__ == "__main__":  # a process of `accelerate launch test_distributed.py heal OUT`
    import test_training  # noqa: F401  (sets two threads when imported)

    assert sys.argv[1:2] == ["heal"], sys.argv
    torch.set_num_threads(1)  # one per process, as the launcher asks (OMP_NUM_THREADS)
    heal_run(Path(sys.argv[2]))
