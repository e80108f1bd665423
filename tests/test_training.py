"""The training loop: learning, exact resume, result cache, frozen decoder, schedule; the `slam` CLI."""

import json

import pytest
import torch

from slam_tiny import save_tiny_llm, save_tiny_whisper, tiny_llm, write_manifest_dir
from speechllm_redundancy.errors import UserError
from dataclasses import replace

from speechllm_redundancy.slam import RECOGNISED_COPY, SlamConfig, SlamModel, is_saved_slam
from speechllm_redundancy.training import Example, TrainConfig, TrainData, TrainingInterrupted, lr_lambda, train

torch.set_num_threads(2)
D = 16
WORDS = ["cat", "dog", "bird", "fish"]


pytestmark = pytest.mark.usefixtures("artifacts")  # a fresh artifacts folder per test (conftest.py)


def toy_data(n=24, seed=0):
    """Each word is a fixed random frame pattern (8 frames); an utterance is 2–3 words."""
    g = torch.Generator().manual_seed(seed)
    protos = {w: torch.randn(D, generator=torch.Generator().manual_seed(i)) for i, w in enumerate(WORDS)}
    examples = []
    for i in range(n):
        words = [WORDS[j] for j in torch.randint(0, len(WORDS), (2 + i % 2,), generator=g)]
        frames = torch.cat([protos[w].repeat(8, 1) + 0.1 * torch.randn(8, D, generator=g) for w in words])
        examples.append(Example(f"u{i}", frames.half(), "asr", " ".join(words)))
    return TrainData(examples, f"toy-{n}-{seed}")


def make(lora=None, dropout=0.0, init=0.02):
    llm, tok = tiny_llm(init=init)
    torch.manual_seed(0)
    return SlamModel(SlamConfig(encoder="e", llm="tiny", encoder_dim=D, k=1, projector_hidden=64, lora=lora,
                                projector_dropout=dropout), llm, tok)


def test_lr_schedule_warmup_then_linear_warmdown():
    f = lr_lambda(4, 10)
    assert [round(f(s), 3) for s in range(11)] == [0.25, 0.5, 0.75, 1.0, 1.0, 0.833, 0.667, 0.5, 0.333, 0.167, 0.0]


def test_training_lowers_the_loss_and_keeps_the_decoder_frozen(tmp_path):
    model = make(lora={"r": 4, "alpha": 8, "dropout": 0.0}, init=0.3)
    base = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    cfg = TrainConfig(steps=30, batch_size=8, lr=5e-3, warmup_steps=4, log_every=2, checkpoint_every=100)
    result = train(model, toy_data(), cfg, tmp_path / "run", progress=False)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < 0.6 * losses[0]
    assert all(torch.equal(p.cpu(), base[n]) for n, p in model.named_parameters() if not p.requires_grad)
    assert is_saved_slam(tmp_path / "run" / "final")


def test_ctc_warm_start_lowers_its_loss(tmp_path):
    model = make()
    cfg = TrainConfig(steps=0, ctc_warmup_steps=30, ctc_batch_size=8, ctc_lr=3e-2, warmup_steps=3, log_every=1)
    result = train(model, toy_data(), cfg, tmp_path / "run", progress=False)
    losses = [h["loss"] for h in result.history if h["phase"] == "ctc"]
    assert len(losses) == 30 and losses[-1] < 0.7 * losses[0]
    with pytest.raises(UserError, match="CTC"):  # k = 5 leaves fewer frames than target tokens
        model.config.k = model.projector.k = 5
        train(model, toy_data(), cfg, tmp_path / "run5", progress=False)


def test_resume_after_interruption_gives_the_same_parameters(tmp_path):
    cfg = TrainConfig(steps=6, batch_size=4, grad_accum=2, lr=3e-3, warmup_steps=2, checkpoint_every=2,
                      ctc_warmup_steps=3, ctc_batch_size=4, time_masks=2, time_mask_width=3, feature_masks=1,
                      feature_mask_width=4, log_every=1)
    data = toy_data()
    straight = make(dropout=0.1)
    train(straight, data, cfg, tmp_path / "straight", progress=False)

    for stop in (2, 5):  # inside the CTC phase, then inside the SLAM phase (4 = last checkpoint)
        with pytest.raises(TrainingInterrupted):
            train(make(dropout=0.1), data, cfg, tmp_path / "resumed", progress=False, stop_after=stop)
    resumed = make(dropout=0.1)
    result = train(resumed, data, cfg, tmp_path / "resumed", progress=False)
    assert result.steps == {"ctc": 3, "slam": 6}
    tol = 1e-6 if not torch.cuda.is_available() else 1e-3  # CUDA's ctc_loss/index_add use atomics
    for (n, p), (_, q) in zip(straight.trainable_parameters().items(), resumed.trainable_parameters().items()):
        torch.testing.assert_close(p, q, atol=tol, rtol=tol, msg=n)


def test_time_budget_stops_the_run_and_saves_what_it_trained(tmp_path):
    """max_minutes: the run stops after the step that spends the budget (here the first), skips the phases
    left, and still saves its model and result, so asking again is a cache hit."""
    cfg = TrainConfig(steps=3, batch_size=4, ctc_warmup_steps=5, ctc_batch_size=4, max_minutes=1e-9, log_every=1)
    result = train(make(), toy_data(), cfg, tmp_path / "run", progress=False)
    assert result.steps == {"ctc": 1} and [(h["phase"], h["step"]) for h in result.history] == [("ctc", 1)]
    assert (tmp_path / "run" / "final").exists()
    assert train(make(), toy_data(), cfg, tmp_path / "run", progress=False, stop_after=0).steps == {"ctc": 1}


def test_evaluation_hooks_run_on_their_schedule_in_eval_mode(tmp_path):
    """evaluate runs every eval_every next-token steps and after the last one, evaluate_ctc once the warm
    start has run all its steps; the model is in eval mode for both, and each is logged at its step."""
    data, modes = toy_data(), []

    def evaluate(model):
        modes.append(model.training)
        return {"eval_x": 1.0}

    def evaluate_ctc(module):
        modes.append(module.projector.training)  # the projector's dropout is off
        return {"eval_ctc": len(module.transcribe([data.examples[0].features.float()]))}

    cfg = TrainConfig(steps=5, batch_size=4, warmup_steps=1, ctc_warmup_steps=2, ctc_batch_size=4, log_every=100)
    result = train(make(), data, cfg, tmp_path / "run", progress=False, evaluate=evaluate, eval_every=2,
                   evaluate_ctc=evaluate_ctc)
    evals = [(h["phase"], h["step"]) for h in result.history if any(k.startswith("eval_") for k in h)]
    assert evals == [("ctc", 2), ("slam", 2), ("slam", 4), ("slam", 5)]
    assert modes == [False] * 4


def test_finished_run_is_a_cache_hit_and_other_settings_are_refused(tmp_path):
    cfg = TrainConfig(steps=3, batch_size=4, warmup_steps=1)
    data = toy_data()
    first = make()
    train(first, data, cfg, tmp_path / "run", progress=False)
    second = make()
    result = train(second, data, cfg, tmp_path / "run", progress=False, stop_after=0)  # no step may run
    assert result.steps == {"slam": 3}
    assert torch.equal(first.projector.net[0].weight, second.projector.net[0].weight)
    with pytest.raises(UserError, match="other settings"):
        train(make(), data, TrainConfig(steps=4, batch_size=4), tmp_path / "run", progress=False)


def test_nothing_trainable_is_user_error(tmp_path):
    model = make()
    model.projector.requires_grad_(False)
    with pytest.raises(UserError, match="nothing to train"):
        train(model, toy_data(), TrainConfig(steps=2), tmp_path / "run", progress=False)


def test_cli_train_then_evaluate(tmp_path, capsys):
    from speechllm_redundancy.cli import main

    whisper = save_tiny_whisper(tmp_path / "whisper")
    llm = save_tiny_llm(tmp_path / "llm")
    manifest = write_manifest_dir(tmp_path / "corpus")
    out = tmp_path / "model"
    assert main(["slam", "train", "--encoder", whisper, "--llm", llm, "--train", str(manifest), "--out", str(out),
                 "--steps", "2", "--batch-size", "2", "--lora", "--eval", str(manifest), "--eval-every", "1"]) == 0
    text = capsys.readouterr().out
    assert "eval_wer" in text and is_saved_slam(out / "final")
    meta = json.loads((out / "final" / "config.json").read_text())
    assert meta["lora"]["r"] == 8 and meta["encoder_dim"] == 32
    hyps = tmp_path / "hyps.jsonl"
    assert main(["slam", "evaluate", "--model", str(out), "--manifest", str(manifest), "--hyps", str(hyps)]) == 0
    assert "WER" in capsys.readouterr().out and len(hyps.read_text().splitlines()) == 5
    assert main(["slam", "evaluate", "--model", str(tmp_path), "--manifest", str(manifest)]) == 2


def test_cli_trains_a_soft_prompt_in_the_recognised_layout(tmp_path, capsys):
    """`slam train --prompt-vectors N --prompt-lr X --freeze-projector --asr-layout recognised`: the cpu
    recipe's frozen model from the command line; only the prompt moves, and the model reloads with it."""
    from speechllm_redundancy.cli import main

    whisper = save_tiny_whisper(tmp_path / "whisper")
    llm = save_tiny_llm(tmp_path / "llm")
    manifest = write_manifest_dir(tmp_path / "corpus")
    out = tmp_path / "model"
    assert main(["slam", "train", "--encoder", whisper, "--llm", llm, "--train", str(manifest), "--out", str(out),
                 "--steps", "2", "--batch-size", "2", "--prompt-vectors", "3", "--prompt-lr", "0.05",
                 "--freeze-projector", "--asr-layout", "recognised"]) == 0
    capsys.readouterr()
    model = SlamModel.from_pretrained(out / "final")
    assert model.config.prompt_vectors == 3 and model.config.prompts["asr"] == RECOGNISED_COPY
    start = SlamModel(replace(model.config), model.llm, model.tokenizer).soft_prompt
    assert not torch.equal(start, model.soft_prompt)
    assert json.loads((out / "result.json").read_text())["config"]["prompt_lr"] == 0.05


def test_cli_trains_a_profiles_model_where_the_chapters_read_it(tmp_path, capsys, monkeypatch):
    """`slam train --profile P --llm L [--lora]`: the folder it prints is the one ``Study.slam`` of a chapter's
    settings returns (so the chapters find the model instead of training it again), and asking again is a
    cache hit; a decoder the profile does not train, or a training flag the profile sets, is refused."""
    import speechllm_redundancy.data as data
    from speechllm_redundancy import profiles, training
    from speechllm_redundancy.cli import main
    from speechllm_redundancy.experiments import Settings, Study
    from test_book import write_profile

    whisper = save_tiny_whisper(tmp_path / "whisper")
    llm = save_tiny_llm(tmp_path / "llm")
    manifest = write_manifest_dir(tmp_path / "corpus", texts=["a b", "c d e", "f g", "h", "i j"])
    monkeypatch.setattr(data, "build_corpus", lambda corpus: {"train": manifest, "test-clean": manifest})
    path = write_profile(tmp_path, models=[], chapters={}, common={
        "encoder": whisper, "speech_llms": [llm], "lora_llms": [llm], "train_steps": 2, "recipe": "paper",
        "train_limit": None, "whisper_window": "full"})
    profile = profiles.load_profile(path)

    def printed_model() -> str:
        out = capsys.readouterr().out
        return out.split("model: ")[-1].strip()

    chapter = profiles.chapter_namespace(profile, "03_asr_across_scales")  # another chapter than the CLI's default
    for variant in ([], ["--lora"]):
        assert main(["slam", "train", "--profile", str(path), "--llm", llm, *variant]) == 0
        folder = printed_model()
        assert is_saved_slam(folder)
        with monkeypatch.context() as patch:
            patch.setattr(training, "_set_up_phase", lambda *a, **k: pytest.fail("trained again"))
            run = Study(Settings.of(chapter)).slam(llm, lora=chapter["lora"] if variant else None,
                                                   steps=chapter["lora_steps"] if variant else None)
            assert str(run.result.out_dir / "final") == folder and run.lora == bool(variant)
            assert main(["slam", "train", "--profile", str(path), "--llm", llm, *variant]) == 0
            assert printed_model() == folder
    assert SlamModel.from_pretrained(folder).config.lora["r"] == chapter["lora"]["r"]

    assert main(["slam", "train", "--profile", str(path), "--llm", "tiny-llama"]) == 2
    err = capsys.readouterr().err
    assert f"profile custom trains no frozen-decoder asr SLAM model of 'tiny-llama'" in err and llm in err
    assert main(["slam", "train", "--profile", str(path)]) == 2
    assert "pass --llm" in capsys.readouterr().err
    assert main(["slam", "train", "--profile", str(path), "--llm", llm, "--task", "ast-en-de", "--lora"]) == 2
    assert "trains no LoRA ast-en-de SLAM model" in capsys.readouterr().err
    assert main(["slam", "train", "--profile", str(path), "--llm", llm, "--steps", "5", "--out", "x"]) == 2
    assert "--out, --steps would be ignored" in capsys.readouterr().err
    assert main(["slam", "train", "--llm", llm]) == 2
    assert "needs --train" in capsys.readouterr().err


def lora_config(run):
    return SlamModel.from_pretrained(run.out_dir / "final").config


def test_trained_slam_one_model_per_recipe_and_data(tmp_path):
    """The chapters' entry point: the recipe decides the warm start and compression, the training limit the
    data, and asking again for the same model is a cache hit with the same weights."""
    from speechllm_redundancy.training import trained_slam

    whisper = save_tiny_whisper(tmp_path / "whisper")
    llm = save_tiny_llm(tmp_path / "llm")
    manifest = write_manifest_dir(tmp_path / "corpus", texts=["a b", "c d e", "f g", "h", "i j"])
    model, run = trained_slam(whisper, llm, manifest, steps=5, recipe="cpu", train_limit=3, ctc_steps=3,
                              progress=False)
    assert run.steps == {"slam": 5} and run.warm_start.steps == {"ctc": 3}
    # a frozen decoder reads the CTC labels in the recogniser layout, and its steps tune a soft prompt only
    assert model.config.ctc_compress and model.config.ctc_embed == "hard" and model.ctc is not None
    assert model.config.prompts["asr"] == RECOGNISED_COPY and model.config.prompt_vectors == 8
    start = SlamModel(replace(model.config), model.llm, model.tokenizer).soft_prompt
    assert not torch.equal(start, model.soft_prompt)
    warm_start = SlamModel.from_pretrained(run.warm_start.out_dir / "final")
    torch.testing.assert_close(warm_start.projector.state_dict(), model.projector.state_dict())
    assert [e.id for e in run.data.examples] == ["u0", "u1", "u2"]
    assert run.total_minutes == run.minutes + run.warm_start.minutes
    again, run2 = trained_slam(whisper, llm, manifest, steps=5, recipe="cpu", train_limit=3, ctc_steps=3,
                               progress=False)
    assert run2.key == run.key and torch.equal(again.projector.net[0].weight, model.projector.net[0].weight)
    # the LoRA variant starts from the same (cached) warm start, at the recipe's lower learning rate
    _, run3 = trained_slam(whisper, llm, manifest, steps=2, recipe="cpu", train_limit=3, ctc_steps=3,
                           lora={"r": 2}, progress=False)
    assert run3.warm_start.out_dir == run.warm_start.out_dir and run3.key != run.key and run3.steps == {"slam": 2}
    config3 = json.loads((run3.out_dir / "result.json").read_text())["config"]
    assert config3["lr"] == 5e-4 and config3["freeze_projector"] and config3["prompt_lr"] is None
    assert lora_config(run3).ctc_embed == "soft" and lora_config(run3).prompt_vectors == 0
    warm = SlamModel.from_pretrained(run.warm_start.out_dir / "final")
    lora = SlamModel.from_pretrained(run3.out_dir / "final")
    torch.testing.assert_close(lora.projector.state_dict(), warm.projector.state_dict())  # adapters only
    # 0 next-token steps: the decoder reads the warm start as it is
    _, run4 = trained_slam(whisper, llm, manifest, steps=0, recipe="cpu", train_limit=3, ctc_steps=3, progress=False)
    assert run4.steps == {} and run4.warm_start.out_dir == run.warm_start.out_dir
    read_as_is = SlamModel.from_pretrained(run4.out_dir / "final")
    assert read_as_is.config.ctc_embed == "hard" and read_as_is.soft_prompt is None  # nothing to tune it
    paper, other = trained_slam(whisper, llm, manifest, steps=5, recipe="paper", train_limit=3, progress=False)
    assert other.key != run.key and other.steps == {"slam": 5} and paper.ctc is None
    with pytest.raises(UserError, match="unknown training recipe"):
        trained_slam(whisper, llm, manifest, steps=5, recipe="fast")


def test_trained_slam_steps_per_decoder_and_warm_start_length(tmp_path):
    """A profile gives each decoder its own step count (a time budget buys a larger one fewer) and the cpu
    recipe's warm start its own length; numbers that cannot work are refused before any training."""
    from speechllm_redundancy.training import trained_slam

    whisper = save_tiny_whisper(tmp_path / "whisper")
    llm = save_tiny_llm(tmp_path / "llm")
    manifest = write_manifest_dir(tmp_path / "corpus", durations=(0.7, 1.3, 2.2), texts=["a b", "c d e", "f g"])
    _, run = trained_slam(whisper, llm, manifest, steps={str(llm): 3, "other": 9}, recipe="cpu", ctc_steps=2,
                          progress=False)
    assert run.steps == {"slam": 3} and run.warm_start.steps == {"ctc": 2}
    with pytest.raises(UserError, match="no number for decoder"):
        trained_slam(whisper, llm, manifest, steps={"other": 3}, progress=False)
    with pytest.raises(UserError, match="no CTC warm start"):
        trained_slam(whisper, llm, manifest, steps=3, recipe="paper", ctc_steps=2, progress=False)
    with pytest.raises(UserError, match="at least one warm-start step"):
        trained_slam(whisper, llm, manifest, steps=3, recipe="cpu", ctc_steps=0, progress=False)


def test_translation_warm_start_spells_the_source_transcript():
    """CTC aligns speech with its own words, so an AST example's warm-start target is the transcript while
    its SLAM target stays the translation; ASR examples have one target."""
    from speechllm_redundancy.data.manifest import Utterance
    from speechllm_redundancy.training import make_data

    store = {"u": torch.zeros(4, 2)}
    utt = Utterance(id="u", audio="u.wav", duration=1.0, sample_rate=16000, text="bonjour", translation="hello")
    ast = make_data(store, [utt], "ast-fr-en").examples[0]
    assert (ast.target, ast.ctc_target) == ("hello", "bonjour")
    asr = make_data(store, [utt], "asr").examples[0]
    assert (asr.target, asr.ctc_target) == ("bonjour", None)


def test_retraining_from_scratch_reproduces_the_weights(tmp_path):
    """The seed fixes everything, the projector's initial weights included: a deleted cache retrains to the
    same model, and another seed is another model."""
    import shutil

    from speechllm_redundancy.training import trained_slam

    whisper = save_tiny_whisper(tmp_path / "whisper")
    llm = save_tiny_llm(tmp_path / "llm")
    manifest = write_manifest_dir(tmp_path / "corpus")
    first, run = trained_slam(whisper, llm, manifest, steps=2, seed=3, progress=False)
    torch.manual_seed(123)  # whatever the caller's random state …
    shutil.rmtree(run.out_dir)
    again, _ = trained_slam(whisper, llm, manifest, steps=2, seed=3, progress=False)
    assert torch.equal(again.projector.net[0].weight, first.projector.net[0].weight)  # … the same model
    other, _ = trained_slam(whisper, llm, manifest, steps=2, seed=4, progress=False)
    assert not torch.equal(other.projector.net[0].weight, first.projector.net[0].weight)


def test_ctc_weight_adds_the_ctc_loss_to_the_next_token_loss(tmp_path):
    """From the same warm start, step 1's loss grows by ctc_weight × the CTC loss (linear in the weight);
    the CTC head stays fixed and the projector learns from the extra term."""
    data, losses, models = toy_data(), {}, {}
    for w in (0.0, 1.0, 2.0):
        model = make()
        cfg = TrainConfig(steps=2, batch_size=8, lr=5e-3, warmup_steps=1, log_every=1, ctc_warmup_steps=3,
                          ctc_batch_size=8, ctc_lr=3e-2, ctc_weight=w)
        result = train(model, data, cfg, tmp_path / f"w{w}", progress=False)
        losses[w] = [h["loss"] for h in result.history if h["phase"] == "slam" and "loss" in h]
        models[w] = model
    d1, d2 = losses[1.0][0] - losses[0.0][0], losses[2.0][0] - losses[1.0][0]
    assert d1 > 0.01 and d2 == pytest.approx(d1, rel=1e-4)
    for w in (1.0, 2.0):
        assert all(torch.equal(p, q) for p, q in zip(models[0.0].ctc.parameters(), models[w].ctc.parameters()))
        assert not torch.equal(models[0.0].projector.net[0].weight, models[w].projector.net[0].weight)
    with pytest.raises(UserError, match="CTC head"):  # nothing to add the CTC loss through
        train(make(), data, TrainConfig(steps=1, batch_size=4, ctc_weight=1.0), tmp_path / "no_head", progress=False)


def test_init_from_starts_from_a_saved_projector_and_ctc_head(tmp_path):
    """train_from_configs(init_from=…) begins where a saved model (e.g. a CTC warm start) ended: with lr = 0
    the result is that model's projector and CTC head; each init is its own cached run."""
    from safetensors.torch import load_file

    from speechllm_redundancy.training import train_from_configs

    whisper = save_tiny_whisper(tmp_path / "whisper")
    llm = save_tiny_llm(tmp_path / "llm")
    manifest = write_manifest_dir(tmp_path / "corpus", durations=(0.7, 1.3, 2.2), texts=["a b", "c d e", "f g"])
    cfg = SlamConfig(encoder=whisper, llm=llm, projector_hidden=32)
    warm = {}
    for name, seed in (("a", 0), ("b", 1)):  # two warm starts in directories of the same name
        warm_cfg = TrainConfig(steps=0, seed=seed, ctc_warmup_steps=2, ctc_batch_size=2)
        _, res = train_from_configs(cfg, warm_cfg, manifest, out_dir=tmp_path / name / "warm", progress=False)
        warm[name] = res.out_dir / "final"
    frozen = TrainConfig(steps=1, batch_size=2, lr=0.0)
    keys = {}
    for name in ("a", "b"):
        model, run = train_from_configs(cfg, frozen, manifest, init_from=warm[name], progress=False)
        saved = load_file(str(warm[name] / "model.safetensors"))
        assert all(torch.equal(v, saved[f"projector.{k}"]) for k, v in model.projector.state_dict().items()), name
        assert model.ctc is not None
        assert all(torch.equal(v, saved[f"ctc.{k}"]) for k, v in model.ctc.state_dict().items())
        keys[name] = run.key
    assert not torch.equal(load_file(str(warm["a"] / "model.safetensors"))["projector.net.0.weight"],
                           load_file(str(warm["b"] / "model.safetensors"))["projector.net.0.weight"])
    scratch, run = train_from_configs(cfg, frozen, manifest, progress=False)
    assert scratch.ctc is None and len({keys["a"], keys["b"], run.key}) == 3
    again, run = train_from_configs(cfg, frozen, manifest, init_from=warm["a"], progress=False)  # a cache hit
    assert run.key == keys["a"]
    with pytest.raises(UserError, match="not a saved SLAM model"):
        train_from_configs(cfg, frozen, manifest, init_from=tmp_path / "corpus", progress=False)


def test_auto_mixed_precision_follows_native_bf16_on_cpus(monkeypatch, tmp_path):
    """'auto' trains in bf16 only where the CPU computes it natively (emulated bf16 is slower than float32);
    the flags are read from /proc/cpuinfo."""
    from speechllm_redundancy import training

    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: True)
    assert training.resolve_mixed_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: False)
    assert training.resolve_mixed_precision("auto", "cpu") == "no"
    assert training.resolve_mixed_precision("no", "cpu") == "no"
    with pytest.raises(UserError, match="use auto, no or bf16"):
        training.resolve_mixed_precision("fp8", "cpu")
    monkeypatch.undo()
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    assert training.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_freeze_projector_trains_the_adapters_only(tmp_path):
    """freeze_projector keeps a warm start's projector as it is while LoRA trains; without adapters there is
    nothing left to train, which is refused."""
    llm, tok = tiny_llm(seed=1)
    model = SlamModel(SlamConfig(encoder="e", llm="tiny", encoder_dim=D, projector_hidden=32,
                                 lora={"r": 2, "alpha": 4, "dropout": 0.0}), llm, tok)
    before = {k: v.clone() for k, v in model.projector.state_dict().items()}
    lora_before = {n: p.clone() for n, p in model.llm.named_parameters() if "lora_B" in n}
    data = TrainData([Example(f"u{i}", torch.randn(20, D), "asr", "a b c") for i in range(4)], "fp")
    train(model, data, TrainConfig(steps=2, batch_size=2, lr=1e-2, warmup_steps=1, freeze_projector=True),
          tmp_path / "run", progress=False)
    assert all(torch.equal(v, model.projector.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, dict(model.llm.named_parameters())[n]) for n, v in lora_before.items())
    llm, tok = tiny_llm(seed=1)
    frozen = SlamModel(SlamConfig(encoder="e", llm="tiny", encoder_dim=D, projector_hidden=32), llm, tok)
    with pytest.raises(UserError, match="nothing to train"):
        train(frozen, data, TrainConfig(steps=1, batch_size=2, freeze_projector=True), tmp_path / "f", progress=False)


def test_hard_ctc_input_still_trains_the_projector(tmp_path):
    """Hard CTC labels reach the projector through the straight-through gradient: a frozen decoder reading
    them still has a projector to train (healing's projector strategy); with it frozen too, nothing is left."""
    llm, tok = tiny_llm(seed=1)
    model = SlamModel(SlamConfig(encoder="e", llm="tiny", encoder_dim=D, projector_hidden=32), llm, tok)
    data = TrainData([Example(f"u{i}", torch.randn(40, D), "asr", "a b") for i in range(4)], "fp")
    train(model, data, TrainConfig(steps=0, ctc_warmup_steps=1, ctc_batch_size=2), tmp_path / "warm", progress=False)
    model.config.ctc_compress, model.config.ctc_embed = True, "hard"
    before = {k: v.clone() for k, v in model.projector.state_dict().items()}
    train(model, data, TrainConfig(steps=1, batch_size=2, warmup_steps=1), tmp_path / "slam", progress=False)
    assert any(not torch.equal(v, model.projector.state_dict()[k]) for k, v in before.items())
    with pytest.raises(UserError, match="nothing to train"):
        train(model, data, TrainConfig(steps=1, batch_size=2, freeze_projector=True), tmp_path / "f", progress=False)


def test_soft_prompt_trains_at_its_own_rate_with_the_projector_frozen(tmp_path):
    """Prompt tuning of a frozen decoder: with freeze_projector (and with hard CTC labels, which pass no
    gradient to the projector) the soft prompt is what trains, at prompt_lr; nothing else moves."""
    from speechllm_redundancy.training import _param_groups

    llm, tok = tiny_llm(seed=1)
    model = SlamModel(SlamConfig(encoder="e", llm="tiny", encoder_dim=D, projector_hidden=32, prompt_vectors=2),
                      llm, tok)
    projector = {k: v.clone() for k, v in model.projector.state_dict().items()}
    prompt, llm_state = model.soft_prompt.detach().clone(), {k: v.clone() for k, v in model.llm.state_dict().items()}
    data = TrainData([Example(f"u{i}", torch.randn(20, D), "asr", "a b c") for i in range(4)], "fp")
    result = train(model, data, TrainConfig(steps=6, batch_size=2, lr=1e-9, prompt_lr=5e-2, warmup_steps=1,
                                            freeze_projector=True, log_every=1), tmp_path / "run", progress=False)
    assert all(torch.equal(v, model.projector.state_dict()[k]) for k, v in projector.items())
    assert all(torch.equal(v, model.llm.state_dict()[k]) for k, v in llm_state.items())
    moved = (model.soft_prompt - prompt).abs().max()
    assert moved > 1e-2  # at lr 1e-9 it would not have moved this far
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    groups = _param_groups(model, [model.soft_prompt, *model.projector.parameters()], 0.3)
    assert [g.get("lr") for g in groups] == [None, 0.3] and groups[1]["params"] == [model.soft_prompt]
    assert len(_param_groups(model, [model.soft_prompt], None)) == 1
    # hard CTC labels with the projector frozen: the soft prompt still trains
    llm, tok = tiny_llm(seed=1)
    hard = SlamModel(SlamConfig(encoder="e", llm="tiny", encoder_dim=D, projector_hidden=32, prompt_vectors=2),
                     llm, tok)
    data = TrainData([Example(f"u{i}", torch.randn(40, D), "asr", "a b") for i in range(4)], "fp")
    train(hard, data, TrainConfig(steps=0, ctc_warmup_steps=1, ctc_batch_size=2), tmp_path / "warm", progress=False)
    hard.config.ctc_compress, hard.config.ctc_embed = True, "hard"
    start = hard.soft_prompt.detach().clone()
    train(hard, data, TrainConfig(steps=1, batch_size=2, prompt_lr=1e-2, freeze_projector=True), tmp_path / "hard",
          progress=False)
    assert not torch.equal(start, hard.soft_prompt)


def test_one_process_trains_runs_of_different_mixed_precision(tmp_path):
    """A notebook or benchmark trains a bf16 run and a float32 one in one process (accelerate alone refuses
    to change its precision once set)."""
    data = toy_data(4)
    for i, precision in enumerate(("bf16", "no", "bf16")):
        result = train(make(), data, TrainConfig(steps=1, batch_size=2, mixed_precision=precision),
                       tmp_path / f"run{i}", progress=False)
        assert result.steps == {"slam": 1}
