"""SLAM model: k-frame projector, prompt layout, loss masking, batch invariance, LoRA, save/load."""

import pytest
import torch

from slam_tiny import save_tiny_llm, tiny_llm
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.slam import LEGACY_PROMPTS, PROMPTS, Projector, SlamConfig, SlamModel

torch.set_num_threads(2)
D = 16


@pytest.fixture(autouse=True)
def _artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLLM_ARTIFACTS", str(tmp_path / "artifacts"))


def make(chat=True, lora=None, llm_name="tiny", seed=0, **config):
    llm, tok = tiny_llm(seed=seed)
    torch.manual_seed(1)
    cfg = SlamConfig(encoder="tiny-whisper", llm=llm_name, encoder_dim=D, projector_hidden=32, chat_template=chat,
                     lora=lora, **config)
    return SlamModel(cfg, llm, tok)


def feats(*lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, D, generator=g) for n in lengths]


def test_projector_concatenates_k_frames_and_zero_pads_the_tail():
    proj = Projector(in_dim=2, out_dim=3, k=5, hidden=4)
    frames = torch.arange(14.0).reshape(7, 2)
    stacked = proj.stack(frames)
    assert stacked.shape == (2, 10)
    assert torch.equal(stacked[0], frames[:5].reshape(-1))
    assert torch.equal(stacked[1], torch.cat([frames[5:].reshape(-1), torch.zeros(6)]))
    assert [o.shape for o in proj(feats(7, 10, 1)[:0] + [torch.randn(7, 2), torch.randn(10, 2)])] == [(2, 3), (2, 3)]


def test_layout_with_chat_template_and_loss_masking():
    model = make()
    tok = model.tokenizer
    f = feats(12)
    batch = model.embed_batch(f, ["asr"], ["hello world"])
    before, after = model.layout.pieces("asr")
    n_speech = 3  # ceil(12 / 5)
    emb, labels, mask = batch["inputs_embeds"][0], batch["labels"][0], batch["attention_mask"][0]
    target = tok("hello world", add_special_tokens=False)["input_ids"] + [model.layout.stop_id]
    assert emb.shape[0] == len(before) + n_speech + len(after) + len(target) and mask.all()
    # speech sits inside the user turn, before the instruction; the assistant turn holds the target
    assert tok.decode(before).endswith("<|im_start|>user\n")
    assert tok.decode(after) == f"\n{PROMPTS['asr']}<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_ids_to_tokens(model.layout.stop_id) == "<|im_end|>"
    torch.testing.assert_close(emb[len(before) : len(before) + n_speech], model.projector(f)[0])
    # loss only on the target tokens and the stop token
    assert labels[: -len(target)].eq(-100).all()
    assert labels[-len(target) :].tolist() == target


def test_layout_without_chat_template():
    model = make(chat=False)
    before, after = model.layout.pieces("ast-en-de")
    assert before == [] and model.tokenizer.decode(after) == f"\n{PROMPTS['ast-en-de']}\n"
    assert model.layout.stop_id == model.tokenizer.eos_token_id
    assert model.tokenizer.decode(model.layout.pieces("Say it in French.")[1]) == "\nSay it in French.\n"


def test_loss_equals_the_standard_causal_lm_loss():
    model = make()
    f, t = feats(12, 20), ["hello world", "ab"]
    batch = model.embed_batch(f, "asr", t)
    ref = model.llm(**batch).loss  # HF: mean over all target tokens of the batch
    torch.testing.assert_close(model(f, "asr", t)["loss"], ref, atol=1e-5, rtol=1e-5)


def test_per_utterance_loss_does_not_depend_on_batching():
    model = make()
    f, t = feats(12, 31, 4), ["hello world", "a much longer target text", "x"]
    together = model(f, "asr", t)["example_loss"]
    alone = torch.stack([model([f[i]], "asr", [t[i]])["example_loss"][0] for i in range(3)])
    reordered = model([f[2], f[0]], "asr", [t[2], t[0]])["example_loss"]
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reordered, alone[[2, 0]], atol=1e-5, rtol=1e-5)


def test_left_padded_batch_ends_where_generation_starts():
    model = make()
    f = feats(12, 31)
    left = model.embed_batch(f, "asr", padding_side="left")
    right = model.embed_batch(f, "asr")
    assert left["labels"].eq(-100).all()
    for i in range(2):
        n = int(right["attention_mask"][i].sum())
        assert left["attention_mask"][i, -n:].all() and not left["attention_mask"][i, :-n].any()
        torch.testing.assert_close(left["inputs_embeds"][i, -n:], right["inputs_embeds"][i, :n])
    last = model.llm.get_input_embeddings().weight[model.layout.pieces("asr")[1][-1]]
    torch.testing.assert_close(left["inputs_embeds"][:, -1], last.expand(2, -1))


def test_projector_only_by_default_and_lora_on_qkvo():
    frozen = make()
    assert all(n.startswith("projector.") for n in frozen.trainable_parameters())
    model = make(lora={"r": 4, "alpha": 8, "dropout": 0.0})
    names = [n for n in model.trainable_parameters() if not n.startswith("projector.")]
    assert names and all("lora_" in n for n in names)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_save_and_load_decode_identically(tmp_path):
    llm_dir = save_tiny_llm(tmp_path / "llm")
    model = make(lora={"r": 4, "alpha": 8, "dropout": 0.0}, llm_name=llm_dir)
    with torch.no_grad():  # LoRA B starts at zero: make the adapter matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    f = feats(12, 31, 7)
    expected = model.generate(f, max_new_tokens=12)
    model.save(tmp_path / "saved")
    loaded = SlamModel.load(tmp_path / "saved")
    assert loaded.generate(f, max_new_tokens=12) == expected
    for (n, p), (n2, p2) in zip(model.trainable_parameters().items(), loaded.trainable_parameters().items()):
        assert n == n2 and torch.equal(p, p2)
    model.save(tmp_path / "saved")  # replacing a saved model is fine …
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a saved SLAM model"):  # … a user's directory is not
        model.save(tmp_path / "user")


def test_instructions_are_part_of_the_saved_model_and_its_key(tmp_path):
    import json

    from speechllm_redundancy.training import TrainConfig, TrainData, slam_run_dir

    llm_dir = save_tiny_llm(tmp_path / "llm")
    custom = {**PROMPTS, "asr": "Write it down."}
    model = make(llm_name=llm_dir, prompts=custom)
    assert model.tokenizer.decode(model.layout.pieces("asr")[1]).startswith("\nWrite it down.")
    model.save(tmp_path / "saved")
    assert SlamModel.load(tmp_path / "saved").layout.pieces("asr") == model.layout.pieces("asr")
    # a model saved before the instructions were recorded reloads with the instruction it was trained with
    meta_path = tmp_path / "saved" / "slam.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["prompts"]
    meta_path.write_text(json.dumps(meta))
    legacy = SlamModel.load(tmp_path / "saved")
    assert legacy.config.prompts == LEGACY_PROMPTS
    assert legacy.tokenizer.decode(legacy.layout.pieces("asr")[1]).startswith("\nTranscribe the speech.")
    # another instruction is another trained model in the shared cache
    data = TrainData([], "fingerprint")
    assert slam_run_dir(SlamConfig(), TrainConfig(), data) != slam_run_dir(SlamConfig(prompts=custom), TrainConfig(), data)


def test_length_mismatch_is_user_error():
    with pytest.raises(UserError):
        make().embed_batch(feats(3, 4), ["asr"], None)
