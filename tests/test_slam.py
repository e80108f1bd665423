"""SLAM model: k-frame projector, prompt layout, loss masking, batch invariance, LoRA, save/load."""

import pytest
import torch

from slam_tiny import save_tiny_llm, tiny_llm
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.slam import (PROMPTS, QUOTED_COPY, CtcHead, Projector, PromptFormat,
                                       SlamConfig, SlamModel)

torch.set_num_threads(2)
D = 16


pytestmark = pytest.mark.usefixtures("artifacts")  # a fresh artifacts folder per test (conftest.py)


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
    """ASR's default layout: the speech between quotes in the user turn, the assistant turn pre-filled with
    the opening quote (no loss), the target = transcript + closing quote + turn end."""
    model = make()
    tok = model.tokenizer
    f = feats(12)
    batch = model.embed_batch(f, ["asr"], ["hello world"])
    before, after = model.layout.pieces("asr")
    n_speech = 3  # ceil(12 / 5)
    emb, labels, mask = batch["inputs_embeds"][0], batch["labels"][0], batch["attention_mask"][0]
    target = tok('hello world"', add_special_tokens=False)["input_ids"] + [model.layout.stop_id]
    assert emb.shape[0] == len(before) + n_speech + len(after) + len(target) and mask.all()
    # speech sits inside the user turn, between quotes, before the instruction; the answer starts with a quote
    assert PROMPTS["asr"] == QUOTED_COPY
    assert tok.decode(before).endswith('<|im_start|>user\n"')
    assert tok.decode(after) == ('"\nCopy the quoted sentence exactly, nothing else.<|im_end|>\n'
                                 '<|im_start|>assistant\n"')
    assert tok.convert_ids_to_tokens(model.layout.stop_id) == "<|im_end|>"
    torch.testing.assert_close(emb[len(before) : len(before) + n_speech], model.projector(f)[0])
    # loss only on the target tokens, the closing quote and the stop token — not on the pre-filled quote
    assert labels[: -len(target)].eq(-100).all()
    assert labels[-len(target) :].tolist() == target
    assert tok.decode(labels[-len(target) :].tolist()) == 'hello world"<|im_end|>'


def test_instruction_string_keeps_the_slam_asr_layout():
    """A plain instruction (a literal prompt, or a task given one) is laid out as before: speech, newline,
    instruction; its target has no stop string, only the turn-end token."""
    model = make(prompts={"ast-en-de": "Translate the English speech into German."})
    tok = model.tokenizer
    before, after = model.layout.pieces("ast-en-de")
    assert tok.decode(before).endswith("<|im_start|>user\n")
    assert tok.decode(after) == "\nTranslate the English speech into German.<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(model.layout.pieces("Say it.")[1]).startswith("\nSay it.<|im_end|>")
    words = tok("hallo welt", add_special_tokens=False)["input_ids"]
    assert model.layout.target_ids(" hallo welt ", 256, "ast-en-de") == words + [model.layout.stop_id]
    assert PromptFormat.of("Say it.") == PromptFormat("{speech}\nSay it.")
    # the instruction and the equivalent dict give the same tokens
    explicit = make(prompts={"t": {"user": "{speech}\nSay it."}})
    assert explicit.layout.pieces("t") == model.layout.pieces("Say it.")


def test_default_translation_layout_quotes_the_source():
    """The default AST layouts (chosen by their gold-input ceiling) quote the source after the instruction
    and pre-fill the opening quote of the translation; the translation ends at its closing quote."""
    model = make()
    tok = model.tokenizer
    before, after = model.layout.pieces("ast-en-de")
    assert tok.decode(before).endswith('user\nTranslate this English sentence into German: "')
    assert tok.decode(after) == '"<|im_end|>\n<|im_start|>assistant\n"'
    assert tok.decode(model.layout.target_ids("hallo welt", 256, "ast-en-de")) == 'hallo welt"<|im_end|>'


def test_layout_without_chat_template():
    model = make(chat=False)
    tok = model.tokenizer
    before, after = model.layout.pieces("Translate it.")
    assert before == [] and tok.decode(after) == "\nTranslate it.\n"
    assert model.layout.stop_id == tok.eos_token_id
    assert tok.decode(model.layout.pieces("Say it in French.")[1]) == "\nSay it in French.\n"
    before, after = model.layout.pieces("asr")  # the quoted layout without a template: no turns, same quotes
    assert tok.decode(before) == '"'
    assert tok.decode(after) == '"\nCopy the quoted sentence exactly, nothing else.\n"'
    # the closing quote or a newline ends the answer (a one-line copy never holds a newline)
    assert model.layout.stop_ids("asr") == {tok.eos_token_id, *tok.convert_tokens_to_ids(['"', "Ċ"])}
    assert model.layout.stop_ids("Translate it.") == {tok.eos_token_id}
    assert model.layout.stop_ids("ast-en-de") == {tok.eos_token_id, tok.convert_tokens_to_ids('"')}


@pytest.mark.parametrize("spec, match", [
    ({"user": "no slot here"}, "exactly once"),
    ({"user": "{speech} and {speech}"}, "exactly once"),
    ({"user": "{speech}", "stop_at": '"'}, "use keys"),
    ({"answer_prefix": '"'}, "use keys"),
    ({"user": "{speech}", "stop": ""}, "stop=''"),
    ({"user": "{speech}", "stop": ['"', ""]}, "non-empty string"),
    ({"user": "{speech}", "answer_prefix": None}, "must be strings"),
    (3, "instruction string or a dict"),
])
def test_bad_prompt_formats_are_user_errors(spec, match):
    with pytest.raises(UserError, match=match):
        PromptFormat.of(spec)
    model = make(prompts={"asr": spec})
    with pytest.raises(UserError, match=match):  # … and so is using one in a model
        model.embed_batch(feats(5), "asr", ["x"])


def test_target_stop_ids_and_finish_with_a_merging_vocabulary():
    """A BPE vocabulary puts the closing quote inside longer tokens ('."', ' "'): each of them stops
    decoding, and the answer is cut at the quote inside the token, keeping what precedes it."""
    llm, tok = tiny_llm(merges=((".", '"'), ("Ġ", '"')))
    model = SlamModel(SlamConfig(encoder="e", llm="tiny", encoder_dim=D, projector_hidden=32), llm, tok)
    layout = model.layout
    dot_quote, space_quote, quote = tok.convert_tokens_to_ids(['."', 'Ġ"', '"'])
    newline = tok.convert_tokens_to_ids("Ċ")
    assert layout.stop_ids("asr") == {layout.stop_id, tok.eos_token_id, quote, dot_quote, space_quote, newline}
    assert layout.stop_ids("Translate it.") == {layout.stop_id, tok.eos_token_id}  # an instruction: no stop string
    # the target is tokenised with its stop string, as the model would write it
    target = layout.target_ids("It ended.", 256, "asr")
    assert target[-2:] == [dot_quote, layout.stop_id] and tok.decode(target[:-2]) == "It ended"
    assert layout.target_ids("It ended.", 4, "asr") == tok("It ")["input_ids"] + [layout.stop_id]  # capped
    # finish: cut at the first quote, even inside a merged token; special tokens dropped; stripped
    assert layout.finish("asr", tok(' It ended." And "more"')["input_ids"] + [layout.stop_id]) == "It ended."
    assert layout.finish("asr", tok("no quote")["input_ids"] + [layout.stop_id]) == "no quote"
    assert layout.finish("Translate it.", tok(' Er sagte "ja". ')["input_ids"]) == 'Er sagte "ja".'  # no stop string


def test_text_layout_is_the_speech_layout_with_text_in_place_of_speech():
    """The gold-input ceiling's prompt holds the text exactly where the speech embeddings go (a byte
    tokenizer merges nothing across the seams, so the token ids line up)."""
    for chat in (True, False):
        layout = make(chat=chat).layout
        for task in ("asr", "ast-en-de", "Say it."):
            before, after = layout.pieces(task)
            assert layout.text_ids(task, "  two words ") == before + layout._ids("two words") + after


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
    start = model.layout.pieces("asr")[1][-1]
    assert model.tokenizer.decode([start]) == '"'  # generation starts after the pre-filled opening quote
    last = model.llm.get_input_embeddings().weight[start]
    torch.testing.assert_close(left["inputs_embeds"][:, -1], last.expand(2, -1))


def test_projector_only_by_default_and_lora_on_qkvo():
    frozen = make()
    assert all(n.startswith("projector.") for n in frozen.trainable_parameters())
    model = make(lora={"r": 4, "alpha": 8, "dropout": 0.0})
    names = [n for n in model.trainable_parameters() if not n.startswith("projector.")]
    assert names and all("lora_" in n for n in names)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}


def lora_model(llm_dir, **config):
    model = make(lora={"r": 4, "alpha": 8, "dropout": 0.0}, llm_name=llm_dir, **config)
    with torch.no_grad():  # LoRA B starts at zero: make the adapter matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return model


def test_save_pretrained_and_from_pretrained_decode_identically(tmp_path):
    """The saved layout: config.json (the SlamConfig, the LLM by name and weights hash), model.safetensors
    (the input side only) and peft's adapter folder, which peft itself loads onto the plain LLM."""
    import json

    from peft import PeftModel
    from safetensors.torch import load_file

    llm_dir = save_tiny_llm(tmp_path / "llm")
    model = lora_model(llm_dir)
    f = feats(12, 31, 7)
    expected = model.generate(f, max_new_tokens=12)
    saved = model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in saved.iterdir()) == ["adapters", "checksums.json", "config.json",
                                                       "model.safetensors"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in
                                                                    (saved / "adapters").iterdir()}
    config = json.loads((saved / "config.json").read_text())
    assert config["llm"] == llm_dir and config["lora"]["r"] == 4 and config["adapters"] == ["default"]
    assert config["llm_fingerprint"] and config["slam_format"] == 2
    input_side = {f"projector.{k}" for k in model.projector.state_dict()}
    assert set(load_file(saved / "model.safetensors")) == input_side  # the LLM is referenced, not copied
    loaded = SlamModel.from_pretrained(saved)
    assert loaded.generate(f, max_new_tokens=12) == expected
    assert loaded.config == model.config
    for (n, p), (n2, p2) in zip(model.trainable_parameters().items(), loaded.trainable_parameters().items()):
        assert n == n2 and torch.equal(p, p2)
    by_peft = PeftModel.from_pretrained(tiny_llm()[0], saved / "adapters")
    lora = {n: p for n, p in model.llm.named_parameters() if "lora_" in n}
    assert lora and all(torch.equal(p, lora[n]) for n, p in by_peft.named_parameters() if "lora_" in n)
    model.save_pretrained(saved)  # replacing a saved model is fine …
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a saved SLAM model"):  # … a user's directory is not
        model.save_pretrained(tmp_path / "user")
    with pytest.raises(UserError, match="not a saved SLAM model"):
        SlamModel.from_pretrained(tmp_path / "user")


def test_a_second_adapter_round_trips_in_its_peft_subfolder(tmp_path):
    """A healed model carries a second adapter: peft saves it in adapters/<name>/, and it reloads."""
    from peft import LoraConfig

    llm_dir = save_tiny_llm(tmp_path / "llm")
    model = lora_model(llm_dir)
    model.llm.add_adapter("healing", LoraConfig(r=2, lora_alpha=4, target_modules=["down_proj"]))
    model.llm.base_model.set_adapter(["default", "healing"])  # both act, so both must be restored
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B.healing" in n:
                p.normal_(0, 0.5)
    f = feats(12, 31)
    expected = model.generate(f, max_new_tokens=10)
    saved = model.save_pretrained(tmp_path / "saved")
    assert (saved / "adapters" / "healing" / "adapter_model.safetensors").exists()
    loaded = SlamModel.from_pretrained(saved)
    assert list(loaded.llm.peft_config) == ["default", "healing"]
    loaded.llm.base_model.set_adapter(["default", "healing"])
    assert loaded.generate(f, max_new_tokens=10) == expected


def test_instructions_are_part_of_the_saved_model_and_its_key(tmp_path):
    import json

    from speechllm_redundancy.training import TrainConfig, TrainData, slam_run_dir

    llm_dir = save_tiny_llm(tmp_path / "llm")
    custom = {**PROMPTS, "asr": "Write it down."}
    model = make(llm_name=llm_dir, prompts=custom)
    assert model.tokenizer.decode(model.layout.pieces("asr")[1]).startswith("\nWrite it down.")
    model.save_pretrained(tmp_path / "saved")
    assert SlamModel.from_pretrained(tmp_path / "saved").layout.pieces("asr") == model.layout.pieces("asr")
    # a model of another format version is refused, naming the fix (there is no reader of old formats)
    config_path = tmp_path / "saved" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "slam_format": 1}))
    (tmp_path / "saved" / "checksums.json").unlink()  # as if sealed so (an edit alone reads as damage)
    with pytest.raises(UserError, match="format 1; this version reads format 2: save or train it again"):
        SlamModel.from_pretrained(tmp_path / "saved")
    # a layout dict (the default ASR one, and a custom one) is saved and reloaded as it is
    quoted = {**PROMPTS, "ast-en-de": {"user": "English: {speech}", "answer_prefix": "German: ", "stop": "\n"}}
    model = make(llm_name=llm_dir, prompts=quoted)
    model.save_pretrained(tmp_path / "saved_quoted")
    loaded = SlamModel.from_pretrained(tmp_path / "saved_quoted")
    assert loaded.config.prompts == quoted and loaded.config.prompts["asr"] == QUOTED_COPY
    for task in ("asr", "ast-en-de"):
        assert loaded.layout.pieces(task) == model.layout.pieces(task)
        assert loaded.layout.stop_ids(task) == model.layout.stop_ids(task)
    assert loaded.tokenizer.decode(loaded.layout.pieces("ast-en-de")[1]).endswith("assistant\nGerman: ")
    # another instruction or layout is another trained model in the shared cache
    data = TrainData([], "fingerprint")
    keys = {slam_run_dir(SlamConfig(prompts=p), TrainConfig(), data) for p in (PROMPTS, custom, quoted)}
    assert len(keys) == 3 and slam_run_dir(SlamConfig(), TrainConfig(), data) in keys


def test_length_mismatch_is_user_error():
    with pytest.raises(UserError):
        make().embed_batch(feats(3, 4), ["asr"], None)


# -- CTC compression: what the LLM reads per segment ----------------------------------------------------
W = 48  # the tiny LLM's width
CTC_VOCAB = [3, 7, 11, 20, 40]


def ctc_head(seed=0):
    g = torch.Generator().manual_seed(seed)
    head = CtcHead(W, CTC_VOCAB)
    with torch.no_grad():
        head.blank.copy_(torch.randn(W, generator=g))
        head.scale.fill_(0.5)
    return head


def planned_frames(head, table, plan, seed=0):
    """Frames whose CTC label is ``plan[t]`` (an index into the head's vocab, or 'b' for blank)."""
    g = torch.Generator().manual_seed(seed)
    rows = [head.blank.detach() if p == "b" else table[CTC_VOCAB[p]] for p in plan]
    return torch.stack([3 * r + 0.1 * torch.randn(W, generator=g) for r in rows])


def runs_of_labels(labels, blank):
    """Reference: CTC's collapse (merge repeats, then drop blanks) — one segment per emitted label."""
    out = []
    for i, lab in enumerate(labels):
        if lab != blank and (i == 0 or labels[i - 1] != lab):
            out.append(lab)
    return out


def test_ctc_compress_mean_hard_and_soft():
    torch.manual_seed(0)
    table = torch.randn(60, W)
    head = ctc_head()
    plan = [0, 0, "b", 0, 1, 1, 2, "b", "b", 2, 3, 4, 4, "b"]
    frames = planned_frames(head, table, plan)
    labels = head.labels(frames, table).tolist()
    blank = head.blank_id
    assert labels == [blank if p == "b" else p for p in plan]  # the frames carry the planned labels
    expected = runs_of_labels(labels, blank)
    assert expected == [0, 0, 1, 2, 2, 3, 4]  # a blank between equal labels makes two segments
    mean, = head.compress([frames], table, "mean")
    hard, = head.compress([frames], table, "hard")
    assert mean.shape == hard.shape == (len(expected), W)
    # mean: the average of the segment's frames (segment 2 = frames 4, 5; segment 6 = frames 11, 12)
    torch.testing.assert_close(mean[2], frames[4:6].mean(0))
    torch.testing.assert_close(mean[6], frames[11:13].mean(0))
    torch.testing.assert_close(mean[0], frames[0:2].mean(0))
    # hard: the token embedding of each segment's label
    torch.testing.assert_close(hard, table[[CTC_VOCAB[e] for e in expected]])
    # soft → hard as the temperature → 0; at a high one a mixture of embeddings (these frames are sharp)
    cold, = head.compress([frames], table, "soft", temperature=1e-4)
    torch.testing.assert_close(cold, hard)
    warm, = head.compress([frames], table, "soft", temperature=30.0)
    assert warm.shape == hard.shape and not torch.allclose(warm, hard, atol=1e-3)
    # soft at T: the segment's mean posterior over the non-blank vocabulary times the embeddings
    p = torch.softmax(head.logits(frames[4:6], table)[:, :-1] / 30.0, -1).mean(0)
    assert p.max() < 0.9  # a real mixture
    torch.testing.assert_close(head.compress([frames], table, "soft", temperature=30.0)[0][2],
                               p @ table[CTC_VOCAB])


def test_ctc_compress_segments_random_frames_and_all_blank():
    torch.manual_seed(1)
    table = torch.randn(60, W)
    head = ctc_head(1)
    frames = [torch.randn(n, W) for n in (1, 7, 40, 33)]
    for f, mean, hard, cold in zip(frames, head.compress(frames, table), head.compress(frames, table, "hard"),
                                   head.compress(frames, table, "soft", 1e-4)):
        labels = head.labels(f, table).tolist()
        n = len(runs_of_labels(labels, head.blank_id)) or 1
        assert mean.shape[0] == hard.shape[0] == cold.shape[0] == n
        torch.testing.assert_close(cold, hard)
    assert len(set(len(runs_of_labels(head.labels(f, table).tolist(), head.blank_id)) for f in frames)) > 1
    # every frame blank: one segment, the frame most likely to be a token, read as that token
    blank_frames = planned_frames(head, table, ["b"] * 6)
    assert (head.labels(blank_frames, table) == head.blank_id).all()
    logits = head.logits(blank_frames, table)[:, :-1]
    best = int(logits.max(-1).values.argmax())
    for mode in ("mean", "hard", "soft"):
        out, = head.compress([blank_frames], table, mode, 1e-4)
        assert out.shape == (1, W)
    torch.testing.assert_close(head.compress([blank_frames], table, "mean")[0][0], blank_frames[best])
    torch.testing.assert_close(head.compress([blank_frames], table, "hard")[0][0],
                               table[CTC_VOCAB[int(logits[best].argmax())]])
    torch.testing.assert_close(head.compress([blank_frames], table, "soft", 1e-4)[0],
                               head.compress([blank_frames], table, "hard")[0])


def test_ctc_compress_bad_settings_are_user_errors():
    head, table, f = ctc_head(), torch.randn(60, W), [torch.randn(5, W)]
    with pytest.raises(UserError, match="ctc_embed"):
        head.compress(f, table, "average")
    for t in (0.0, -1.0, float("nan")):
        with pytest.raises(UserError, match="ctc_temperature"):
            head.compress(f, table, "soft", t)


def ctc_model(embed, temperature=1.0, **kw):
    model = make(ctc_compress=True, ctc_embed=embed, ctc_temperature=temperature, **kw)
    torch.manual_seed(3)
    model.ctc = CtcHead(W, list(range(0, 200, 3)))
    with torch.no_grad():
        model.ctc.blank.normal_()
        model.ctc.scale.fill_(3.0)
    return model


def test_embed_batch_reads_the_configured_ctc_embedding():
    f = feats(40, 23)
    for embed, t in (("mean", 1.0), ("hard", 1.0), ("soft", 0.5), ("soft", 1.0)):
        model = ctc_model(embed, t)
        batch = model.embed_batch(f, "asr")
        before = len(model.layout.pieces("asr")[0])
        segs = model.ctc.compress(model.projector(f), model.llm.get_input_embeddings().weight, embed, t)
        assert min(s.shape[0] for s in segs) < 8  # compressed from 8 and 5 projected frames
        for i, sp in enumerate(segs):
            torch.testing.assert_close(batch["inputs_embeds"][i, before : before + sp.shape[0]], sp)
    # the temperature matters: soft at 0.5 is not soft at 1.0
    a = ctc_model("soft", 0.5).embed_batch(f, "asr")["inputs_embeds"]
    b = ctc_model("soft", 1.0).embed_batch(f, "asr")["inputs_embeds"]
    assert not torch.allclose(a, b)


def test_every_ctc_embedding_passes_gradients_to_the_projector():
    """soft and mean are differentiable; hard reads the labels' embeddings exactly but passes soft's
    gradient straight through (a label alone does not depend on the projector's output)."""
    f, t = feats(40, 23), ["hello", "world"]
    grads = {}
    for embed in ("soft", "mean", "hard"):
        model = ctc_model(embed)
        model(f, "asr", t)["loss"].backward()
        grads[embed] = [p.grad for p in model.projector.parameters()]
        assert all(g is not None for g in grads[embed]) and any(g.abs().sum() > 0 for g in grads[embed]), embed
    model = ctc_model("hard")
    speech = model.projector(f)
    table = model.llm.get_input_embeddings().weight
    hard, = model.ctc.compress(speech[:1], table, "hard")
    soft, = model.ctc.compress(speech[:1], table, "soft")
    labels = model.ctc.labels(speech[0], table)
    runs = runs_of_labels(labels.tolist(), model.ctc.blank_id)
    assert len(runs) > 1 and torch.equal(hard, table[model.ctc.vocab[torch.tensor(runs)]])
    weights = torch.randn_like(hard)
    g_hard, = torch.autograd.grad((hard * weights).sum(), speech[0])
    g_soft, = torch.autograd.grad((soft * weights).sum(), speech[0])
    torch.testing.assert_close(g_hard, g_soft)


def test_ctc_embedding_settings_survive_save_and_load(tmp_path):
    llm_dir = save_tiny_llm(tmp_path / "llm")
    model = ctc_model("soft", 0.7, llm_name=llm_dir)
    f = feats(40, 23)
    model.save_pretrained(tmp_path / "saved")
    loaded = SlamModel.from_pretrained(tmp_path / "saved")
    assert (loaded.config.ctc_compress, loaded.config.ctc_embed, loaded.config.ctc_temperature) == (True, "soft", 0.7)
    torch.testing.assert_close(loaded.embed_batch(f, "asr")["inputs_embeds"],
                               model.embed_batch(f, "asr")["inputs_embeds"])
    assert loaded.generate(f, max_new_tokens=6) == model.generate(f, max_new_tokens=6)


def test_soft_prompt_sits_before_the_speech_and_is_not_counted_as_speech():
    """prompt_vectors: trainable vectors in the speech slot, ahead of the speech; they start at the
    embeddings of prompt_init's tokens (cycled) and do not count towards the output cap's speech length."""
    f = feats(12, 31)
    plain, tuned = make(), make(prompt_vectors=5, prompt_init="ab")
    table = tuned.llm.get_input_embeddings().weight
    ids = tuned.tokenizer("ab", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2
    torch.testing.assert_close(tuned.soft_prompt.data, table[[ids[i % 2] for i in range(5)]])
    assert "soft_prompt" in tuned.trainable_parameters() and "soft_prompt" not in plain.trainable_parameters()
    a, b = plain.embed_batch(f, "asr"), tuned.embed_batch(f, "asr")
    assert a["speech_lengths"] == b["speech_lengths"] == [3, 7]
    before = len(plain.layout.pieces("asr")[0])
    for i, n in enumerate(a["speech_lengths"]):
        torch.testing.assert_close(b["inputs_embeds"][i, :before], a["inputs_embeds"][i, :before])
        torch.testing.assert_close(b["inputs_embeds"][i, before : before + 5], tuned.soft_prompt.data)
        end = int(a["attention_mask"][i].sum())
        torch.testing.assert_close(b["inputs_embeds"][i, before + 5 : end + 5], a["inputs_embeds"][i, before:end])
    loss = tuned(f, "asr", ["hi", "there"])["loss"]
    loss.backward()
    assert tuned.soft_prompt.grad is not None and tuned.soft_prompt.grad.abs().sum() > 0


def test_soft_prompt_survives_save_and_load_and_bad_settings_are_user_errors(tmp_path):
    llm_dir = save_tiny_llm(tmp_path / "llm")
    model = make(llm_name=llm_dir, prompt_vectors=3)
    with torch.no_grad():
        model.soft_prompt.normal_(0, 1.0)  # a trained prompt, not its start
    f = feats(12, 31, 7)
    model.save_pretrained(tmp_path / "saved")
    loaded = SlamModel.from_pretrained(tmp_path / "saved")
    assert torch.equal(loaded.soft_prompt, model.soft_prompt)
    assert loaded.generate(f, max_new_tokens=8) == model.generate(f, max_new_tokens=8)
    with pytest.raises(UserError, match="soft prompt"):  # weights of a model with a soft prompt into one without
        make(llm_name=llm_dir).load_weights(tmp_path / "saved")
    with pytest.raises(UserError, match="prompt_vectors"):
        make(prompt_vectors=-1)
    with pytest.raises(UserError, match="prompt_init"):
        make(prompt_vectors=2, prompt_init="")


def test_generate_floors_each_compressed_rows_output_at_its_task_share_of_the_segments(monkeypatch):
    """Under CTC compression an ASR output may not stop before MIN_OUTPUT_RATIO × its segments (a frozen
    decoder would otherwise end the sentence at a garbled stretch); translation has no floor, nor has a model
    that reads projected frames (their number says little of the output's length); the floor never exceeds
    the cap."""
    import speechllm_redundancy.decoding as decoding
    from speechllm_redundancy.slam import MIN_OUTPUT_RATIO

    seen = []
    real = decoding.greedy

    def spy(llm, embeds, mask, caps, *args, min_new_tokens=0, **kwargs):
        seen.append(list(min_new_tokens))
        return real(llm, embeds, mask, caps, *args, min_new_tokens=min_new_tokens, **kwargs)

    monkeypatch.setattr(decoding, "greedy", spy)
    f = feats(80, 40)
    model = ctc_model("hard")
    segments = model.embed_batch(f, "asr")["speech_lengths"]
    assert min(segments) >= 4  # long enough for a floor of a few tokens
    by_length = sorted(segments)  # generate decodes in order of length
    model.generate(f, "asr", max_new_tokens=500)
    assert seen.pop() == [int(MIN_OUTPUT_RATIO["asr"] * n) for n in by_length]
    model.generate(f, "asr", max_new_tokens=500, min_tokens_per_segment=0.5)
    assert seen.pop() == [int(0.5 * n) for n in by_length]
    model.generate(f, "asr", max_new_tokens=2)
    assert seen.pop() == [2, 2]
    model.generate(f, "ast-en-de", max_new_tokens=500)
    assert seen.pop() == [0, 0]
    make().generate(f, "asr", max_new_tokens=500)
    assert seen.pop() == [0, 0]
    with pytest.raises(UserError, match="min_tokens_per_segment"):
        model.generate(f, "asr", min_tokens_per_segment=-1)


def test_a_model_saved_from_a_pruned_decoder_refuses_the_whole_decoder_its_config_names(tmp_path):
    """A healing run's model is saved from a pruned decoder while its config still names the whole one: loading
    it as it stands would put the adapters and soft prompt in front of the wrong decoder and decode nonsense
    without a word. It is refused, naming both layer counts and the fix; given the pruned decoder, it loads and
    decodes as it did when saved."""
    import copy

    from speechllm_redundancy.healing import prune_slam
    from speechllm_redundancy.layers import num_decoder_layers

    llm_dir = save_tiny_llm(tmp_path / "llm")
    pruned = prune_slam(lora_model(llm_dir), 0, 1)  # its LoRA merged into the pruned decoder, as healing does
    f = feats(12, 31)
    expected = pruned.generate(f, max_new_tokens=8)
    saved = pruned.save_pretrained(tmp_path / "healed")
    whole = num_decoder_layers(make(llm_name=llm_dir).llm)
    with pytest.raises(UserError, match=f"decoder of {whole - 1} layers, but '{llm_dir}' has {whole}: .*llm=…"):
        SlamModel.from_pretrained(saved)
    loaded = SlamModel.from_pretrained(saved, llm=copy.deepcopy(pruned.llm), tokenizer=pruned.tokenizer)
    assert loaded.generate(f, max_new_tokens=8) == expected
