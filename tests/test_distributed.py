"""Data parallel: two processes train, heal and decode what one process does.

Each test runs `accelerate launch --multi_gpu --num_processes 2 …`, the command book/paper_scale.md gives
for GPUs (without CUDA the two processes meet over gloo on this CPU), and compares its output with the
same work done in one process here; the FSDP tests launch with `--config_file profiles/accelerate/fsdp-*.yaml`
instead (the decoder sharded across the processes). This file is also the script of the healing and FSDP
launches (`python test_distributed.py heal|fsdp OUT …`).
"""

import functools
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
LAUNCH_CONFIGS = HERE.parent / "profiles" / "accelerate"
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


def launch(args: list[str], artifacts: str, config: Path | None = None) -> str:
    """Run ``accelerate launch --multi_gpu --num_processes 2 ARGS`` (with ``config``: ``accelerate launch
    --config_file CONFIG --num_processes 2 ARGS``) to completion; returns its stdout."""
    with socket.socket() as s:  # a free port for the processes' rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SPEECHLLM_ARTIFACTS": artifacts, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    how = (["--config_file", str(config)] if config else
           ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"])
    cmd = [str(ACCELERATE), "launch", *how, "--num_processes", "2", "--main_process_port", str(port), *args]
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


def heal_run(out: Path, stop_after: int | None = None):
    """Heal a tiny SLAM model ("both": receiving-layer LoRA and projector; dropout off, as it is drawn per
    process) on the toy data, in batches of 5 that split 3 + 2, with SpecAugment; ``stop_after``: interrupt
    it after that many steps (``training.TrainingInterrupted``), its checkpoint of step 2 written. Returns
    the healed model."""
    from test_training import make, toy_data
    from speechllm_redundancy import training
    from speechllm_redundancy.healing import heal

    cfg = training.TrainConfig(steps=3, batch_size=5, grad_accum=2, lr=5e-3, warmup_steps=1, time_masks=2,
                               time_mask_width=4, mixed_precision="no", checkpoint_every=2)
    loop = training.train
    if stop_after is not None:  # heal() takes the loop from the module when it runs
        training.train = functools.partial(loop, stop_after=stop_after)
    try:
        return heal(make(), 1, 1, "both", toy_data(), cfg, out, lora={"dropout": 0.0}, progress=False)[0]
    finally:
        training.train = loop


def test_two_processes_heal_what_one_process_heals(tiny, tmp_path):
    launch([str(Path(__file__).resolve()), "heal", str(tmp_path / "two")], tiny["artifacts"])
    heal_run(tmp_path / "one")
    assert (tmp_path / "two" / "final" / "adapters" / "healing" / "adapter_model.safetensors").exists()
    assert_same_weights(tmp_path / "one" / "final", tmp_path / "two" / "final")


def heal_cli_args(model: Path, tiny) -> list[str]:
    """`slam heal` of a SLAM model on the smooth decoder: the block --fraction 0.34 takes from the path's
    angles, the projector healed for 3 steps in batches of 3 that split 2 + 1 (strategy projector: the
    receiving layer's LoRA has dropout, drawn by each process for its own examples)."""
    return ["slam", "heal", "--model", str(model), "--fraction", "0.34", "--path-manifest", tiny["manifest"],
            "--path-limit", "4", "--strategy", "projector", "--steps", "3", "--batch-size", "3", "--lr", "1e-2",
            "--mixed-precision", "no", "--train", tiny["manifest"]]


def test_two_processes_heal_from_the_command_line_what_one_process_heals(tiny, tmp_path, monkeypatch):
    """`slam heal` as book/paper_scale.md launches it: the angles measured by the first process, the healing
    shared out, one folder written by the first process, and that folder the one a single process writes, up
    to float rounding. Each run has an artifacts folder of its own, so neither finds the other's healing."""
    from speechllm_redundancy.cli import main
    from test_heal_cli import save_slam

    model = save_slam(tmp_path / "model", tiny["whisper"], tiny["smooth_llm"])
    printed = launch(["-m", "speechllm_redundancy", *heal_cli_args(model, tiny), "--out", str(tmp_path / "two")],
                     str(tmp_path / "artifacts-two"))
    assert printed.count("model: ") == 1  # one report for the launch
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / "artifacts-one"))
    assert main([*heal_cli_args(model, tiny), "--out", str(tmp_path / "one")]) == 0
    one, two = (json.loads((tmp_path / run / "heal.json").read_text()) for run in ("one", "two"))
    assert (two["start"], two["size"], two["healed"]) == (one["start"], one["size"], True)
    for part in ("final", "decoder"):
        assert_same_weights(tmp_path / "one" / part, tmp_path / "two" / part)
    losses = [[h["loss"] for h in run["history"]] for run in (one, two)]
    assert losses[0]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=0)


def test_two_processes_walk_from_the_command_line_what_one_process_walks(tiny, tmp_path, monkeypatch):
    """`slam walk` under the launch: every process heals and decodes each level, the first alone reading and
    writing the cached points (``distributed.cached_json_together``: were each process to take a point's lock,
    the second would wait at it while the first waited for the second in the decoding's gather), and the walk
    is one process's."""
    import csv

    from speechllm_redundancy.cli import main

    model = decoder_model(tiny, tmp_path / "model")
    args = ["slam", "walk", "--model", str(model), "--fractions", "0.34", "--strategy", "none", "projector",
            "--steps", "2", "--batch-size", "3", "--mixed-precision", "no", "--train", tiny["manifest"],
            "--path-manifest", tiny["manifest"], "--path-limit", "4", "--eval", tiny["manifest"],
            "--max-new-tokens", "4"]
    printed = launch(["-m", "speechllm_redundancy", *args, "--out", str(tmp_path / "two")],
                     str(tmp_path / "artifacts-two"))
    assert printed.count("removable fraction") == 1
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / "artifacts-one"))
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one, two = (list(csv.DictReader((tmp_path / run / "walk.csv").open())) for run in ("one", "two"))
    assert [(r["strategy"], r["n"]) for r in one] == [("none", "0"), ("none", "1"), ("projector", "0"),
                                                      ("projector", "1")]
    assert two == one


# -- FSDP: the decoder sharded across the processes (profiles/accelerate/fsdp-*.yaml) ------------------------
FSDP_CONFIGS = {"fsdp-qwen2.yaml": ("qwen2", "Qwen2DecoderLayer"), "fsdp-llama.yaml": ("llama", "LlamaDecoderLayer")}


@pytest.mark.parametrize("name", sorted(FSDP_CONFIGS))
def test_fsdp_configurations_say_what_accelerate_needs_to_shard_the_paper_decoders(name, monkeypatch):
    """Each configuration as `accelerate launch --config_file` reads it (accelerate's own loader and launcher):
    FSDP2 over the GPUs of one machine in bf16, each decoder layer of its family a shard group (the class is
    transformers' own, and accelerate's wrap policy finds it in a model of that family), every fsdp key one the
    launcher knows (it drops a misspelt one silently), the decoder loaded by every process."""
    import transformers
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    family, layer = FSDP_CONFIGS[name]
    path = LAUNCH_CONFIGS / name
    config = load_config_from_file(str(path))
    assert config.distributed_type == DistributedType.FSDP and config.mixed_precision == "bf16"
    assert not config.use_cpu and config.num_machines == 1 and config.num_processes == 2
    parser = launch_command_parser()
    assert set(config.fsdp_config) <= {a.dest for a in parser._actions}
    args, _, _ = _validate_launch_command(parser.parse_args(["--config_file", str(path), "train.py"]))
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert env["FSDP_VERSION"] == "2"  # version 1 flattens the weights (the loop refuses it), and needs a GPU here
    for key, value in env.items():  # the processes' environment, from which the Accelerator builds its plugin
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert not (plugin.cpu_ram_efficient_loading or plugin.activation_checkpointing)
    assert not plugin.cpu_offload.__dict__  # OffloadPolicy(): parameters stay on the GPUs
    assert plugin.transformer_cls_names_to_wrap == [layer]
    modeling = getattr(getattr(transformers.models, family), f"modeling_{family}")
    config = transformers.AutoConfig.for_model(family, vocab_size=32, hidden_size=16, intermediate_size=32,
                                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    plugin.set_auto_wrap_policy(transformers.AutoModelForCausalLM.from_config(config))
    assert plugin.auto_wrap_policy.keywords["transformer_layer_cls"] == {getattr(modeling, layer)}


@pytest.mark.parametrize("engine, fsdp2, settings, refused", [
    ("DEEPSPEED", False, {}, "DeepSpeed is not supported"), ("FSDP", False, {}, "set fsdp_version: 2"),
    ("FSDP", True, {"ctc_warmup_steps": 2}, "CTC warm start"), ("FSDP", True, {"ctc_weight": 0.1}, "CTC warm start"),
    ("FSDP", True, {"evaluate": True}, "--eval"), ("FSDP", True, {}, None),
    ("MULTI_CPU", False, {"ctc_warmup_steps": 2, "evaluate": True}, None)])
def test_the_loop_refuses_what_it_cannot_run_as_launched(engine, fsdp2, settings, refused):
    """Before its first step, with a message that says what to do instead: DeepSpeed, FSDP version 1, and under
    FSDP the CTC warm start and decoding as it trains (no process holds a whole model between steps)."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from speechllm_redundancy.errors import UserError
    from speechllm_redundancy.training import TrainConfig, _check_engine, _Hooks

    accelerator = SimpleNamespace(distributed_type=DistributedType[engine], is_fsdp2=fsdp2)
    settings = dict(settings)
    hooks = _Hooks(settings.pop("evaluate", False) and (lambda model: {}), 0, None, progress=False, stop_after=None)
    if refused is None:
        _check_engine(accelerator, TrainConfig(**settings), hooks)
    else:
        with pytest.raises(UserError, match=refused):
            _check_engine(accelerator, TrainConfig(**settings), hooks)


def fsdp_train_args(tiny) -> list[str]:
    """``train_args`` without what the loop refuses under FSDP (the CTC warm start, decoding as it trains)."""
    return ["slam", "train", "--encoder", tiny["whisper"], "--llm", tiny["smooth_llm"], "--train", tiny["manifest"],
            "--k", "2", "--steps", "3", "--batch-size", "3", "--grad-accum", "2", "--lr", "1e-2", "--warmup-steps",
            "1", "--prompt-vectors", "2", "--time-masks", "2", "--time-mask-width", "20", "--mixed-precision", "no",
            "--bucket", "0"]


def test_fsdp_processes_train_heal_and_resume_what_one_process_does(tiny, tmp_path):
    """One launch with profiles/accelerate/fsdp-llama.yaml (the tiny decoder is a Llama) runs `slam train`, then
    a healing run (LoRA in a frozen decoder layer, and the projector) interrupted after its checkpoint and
    resumed, each process holding half of every weight (``fsdp_run`` checks). The saved models equal one
    process's, and so does the checkpoint's optimiser state, saved whole."""
    from speechllm_redundancy.cli import main

    launch([str(Path(__file__).resolve()), "fsdp", str(tmp_path / "two"), *fsdp_train_args(tiny)],
           tiny["artifacts"], config=LAUNCH_CONFIGS / "fsdp-llama.yaml")
    assert main([*fsdp_train_args(tiny), "--out", str(tmp_path / "one")]) == 0
    one, two = tmp_path / "one", tmp_path / "two" / "train"
    assert_same_weights(one / "final", two / "final")
    history = [json.loads((run / "result.json").read_text())["history"] for run in (one, two)]
    torch.testing.assert_close([h["loss"] for h in history[1]], [h["loss"] for h in history[0]], rtol=1e-5, atol=0)
    saved = [torch.load(run / "checkpoint" / "state.pt", weights_only=True)["optimizer"] for run in (one, two)]
    assert saved[1]["param_groups"] == saved[0]["param_groups"]
    torch.testing.assert_close(saved[1]["state"], saved[0]["state"], rtol=1e-4, atol=1e-9)
    heal_run(tmp_path / "heal")
    assert_same_weights(tmp_path / "heal" / "final", tmp_path / "two" / "heal" / "final")


def allow_fsdp_on_cpu() -> None:
    """accelerate turns FSDP on for accelerator devices only: CPU processes launched with an FSDP configuration
    train in plain data parallel. This sets the launch's distributed type to FSDP after accelerate's set-up,
    where the device decides it; what follows is accelerate's and torch's own FSDP2 (``fully_shard`` of
    each decoder layer and of the model, over gloo instead of NCCL) and the loop's gathering and saving."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def init_fsdp(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init_fsdp


def fsdp_run(out: Path, train_args: list[str]) -> None:
    """A process of the FSDP launch: ``slam train ARGS`` into OUT/train, then ``heal_run`` into OUT/heal,
    stopped after 2 steps and resumed."""
    from torch.distributed.tensor import DTensor

    from speechllm_redundancy.cli import main
    from speechllm_redundancy.training import TrainingInterrupted

    allow_fsdp_on_cpu()
    assert main([*train_args, "--out", str(out / "train")]) == 0
    with pytest.raises(TrainingInterrupted):
        heal_run(out / "heal", stop_after=2)
    healed = heal_run(out / "heal")
    assert all(isinstance(p, DTensor) for p in healed.parameters())  # it trained sharded: half of each here


if __name__ == "__main__":  # a process of `accelerate launch test_distributed.py heal|fsdp OUT [ARGS…]`
    import test_training  # noqa: F401  (sets two threads when imported)

    assert sys.argv[1:2] in (["heal"], ["fsdp"]), sys.argv
    torch.set_num_threads(1)  # one per process, as the launcher asks (OMP_NUM_THREADS)
    if sys.argv[1] == "heal":
        heal_run(Path(sys.argv[2]))
    else:
        fsdp_run(Path(sys.argv[2]), sys.argv[3:])
