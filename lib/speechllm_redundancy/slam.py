"""The SLAM SpeechLLM: frozen-encoder frames → k-frame concatenation → projector → any HF causal LM.

Input layout of one example (``|`` separates pieces; only the target and its stop token carry loss)::

    chat template:  <prefix: system + user-turn opening> | SPEECH | "\\n" + prompt + <user-turn end,
                    assistant opening> | target tokens | <turn-end token, e.g. <|im_end|>>
    no template:    <bos?> | SPEECH | "\\n" + prompt + "\\n" | target tokens | <eos>

The speech sits inside the user turn, before the instruction, as in SLAM-ASR. Training rows are padded
on the right and generation rows on the left, with explicit position ids, so neither the loss of an
utterance nor its decoded text depends on what else is in the batch.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from speechllm_redundancy.errors import UserError
from speechllm_redundancy.layers import decoder_stack, num_decoder_layers

FORMAT_VERSION = 2  # of a saved model (save_pretrained); 1 was slam.json + adapters packed as name::key
CONFIG_FILE, WEIGHTS_FILE, ADAPTERS_DIR = "config.json", "model.safetensors", "adapters"  # its layout
SPEECH_PLACEHOLDER = "<<SPEECH>>"

# How each task's request is laid out around the speech. A value is either an instruction (the speech,
# then a newline, then the instruction: the layout of SLAM-ASR) or a PromptFormat dict:
#   user           the user turn, with {speech} where the speech embeddings go
#   answer_prefix  text the assistant turn starts with (pre-filled, no loss; e.g. an opening quote)
#   stop           text that ends the answer, or a list of such texts (decoding stops at the first token
#                  containing one; the answer is cut there; training appends the first); the turn-end
#                  token always stops too
# The layout bounds what a frozen decoder can do: given the *gold* transcript as text in place of speech,
# frozen SmolLM2-135M-Instruct copied 24 test-clean sentences at 44 % WER after "{text}\nRepeat the words
# above exactly." and at 13 % with the quoted layout below, pre-filled and cut at the closing quote (20.6 %
# on the first 64 of the present corpus). benchmarks/gold_ceiling.py measures this "gold-input ceiling"
# per decoder, task and layout; book/method.md has the numbers.
QUOTED_COPY = {"user": '"{speech}"\nCopy the quoted sentence exactly, nothing else.', "answer_prefix": '"',
               "stop": ['"', "\n"]}
PROMPTS = {
    "asr": QUOTED_COPY,
    # chosen by the same ceiling (Qwen2.5-Coder-0.5B, 32 held-out verses, BLEU): en-de 4.6 vs 2.5 and
    # fr-en 15.2 vs 11.3 for "Translate the <source> speech into <target>." after the speech
    "ast-en-de": {"user": 'Translate this English sentence into German: "{speech}"', "answer_prefix": '"',
                  "stop": '"'},
    "ast-fr-en": {"user": 'Translate this French sentence into English: "{speech}"', "answer_prefix": '"',
                  "stop": '"'},
}

# The ASR layout of a frozen decoder reading CTC labels (the cpu recipe): told that the quoted words come from
# a recogniser, it copies them and leaves them alone rather than paraphrase (frozen SmolLM2-135M on its warm
# start's hard labels, 64 utterances, WER test-clean / test-other / dev-ood: 41.2 / 52.5 / 50.6 with
# QUOTED_COPY, 38.0 / 52.6 / 49.0 with this; with 8 trained prompt vectors 32.7 / 48.1 / 45.4; book/method.md)
RECOGNISED_COPY = {"user": '"{speech}"\nThis sentence was heard by a speech recogniser and may have errors. '
                           "Write the sentence, correcting only its misheard words.",
                   "answer_prefix": '"', "stop": ['"', "\n"]}
RECOGNISER_PROMPTS = {**PROMPTS, "asr": RECOGNISED_COPY}  # the cpu recipe's frozen models' layouts

SPEECH_SLOT = "{speech}"

# Greedy decoding caps each output at CAP_SLACK + ratio × the speech positions the LLM reads (CTC segments
# under compression, about one per source token; projected frames otherwise, a loose bound), the ratio by
# task: German runs 1.3× the English source's tokens on average and up to 1.9×, English 0.8× the French
# (the corpus's test pairs, Qwen tokens). A cap just above the input stops a looping or chatty row early:
# frozen SmolLM2-135M on the cpu recipe's warm start, 64 utterances, WER test-clean / test-other / dev-ood
# 45.0 / 59.0 / 58.8 with the earlier 16 + 1 × segments, 43.1 / 58.3 / 55.9 with 4 + 1 × segments.
OUTPUT_RATIO = {"asr": 1.0, "ast-en-de": 2.0, "ast-fr-en": 1.2}
DEFAULT_OUTPUT_RATIO = 2.0  # a literal instruction of unknown output length
CAP_SLACK = 4
# Where the LLM reads CTC segments, greedy decoding also lets a row stop no earlier than MIN_OUTPUT_RATIO ×
# its segments: a frozen decoder reading a garbled stretch of CTC labels tends to end the sentence there and
# drop the rest (its excess errors over the CTC's own are deletions). Frozen SmolLM2-135M of the default
# profile, 64 utterances, WER on the validation split dev: no floor 26.9, floor 0.7 × segments 24.1, 0.8 ×
# 23.6, 0.9 × 23.5; test-clean / test-other / dev-ood: no floor 20.0 / 50.4 / 48.6, 0.8 × 19.6 / 48.7 /
# 48.4, 0.95 × 19.3 / 50.4 / 48.6 (there substitutions and insertions replace the deletions). Translation
# has no floor (its length follows the source's less closely).
MIN_OUTPUT_RATIO = {"asr": 0.8}
DECODING_RULE = (f"cap {CAP_SLACK} + {sorted(OUTPUT_RATIO.items())} x speech; "  # in cached evaluations' keys
                 f"floor {sorted(MIN_OUTPUT_RATIO.items())} x segments")
# Rows decoded at once. A greedy step costs about the same at 16 rows as at 64 on a CPU (it reads every
# weight either way), so a wider batch takes fewer steps: trained Qwen2.5-Coder-0.5B SLAM, 64 test-other
# utterances, the same outputs in 268 / 236 s at 16 rows and 152 / 114 s at 64 (two rounds, alternating,
# beside a training run: a rough ratio of ~2; `benchmarks/bench_decoding.py --batch-size` measures it).
DECODE_WIDTH = 64
# generate embeds this many batches' worth of utterances at once, from which the decoder refills its width
# as rows end (a batch no longer waits for its slowest row); bounds the inputs held in memory
DECODE_CHUNK = 4


@dataclass(frozen=True)
class PromptFormat:
    """One task's layout: the user turn around the speech, a pre-filled answer start, a stop string."""

    user: str
    answer_prefix: str = ""
    stop: str | tuple[str, ...] | None = None

    @property
    def stops(self) -> tuple[str, ...]:
        """The stop strings, the one training appends first."""
        return () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @classmethod
    def of(cls, spec: "str | dict | PromptFormat") -> "PromptFormat":
        if isinstance(spec, PromptFormat):
            return spec
        if isinstance(spec, str):
            return cls(f"{SPEECH_SLOT}\n{spec}")
        if isinstance(spec, dict):
            unknown = set(spec) - {"user", "answer_prefix", "stop"}
            if unknown or "user" not in spec:
                raise UserError(f"prompt format {spec!r}: use keys user (with {SPEECH_SLOT}), answer_prefix, stop.")
            fmt = cls(**spec)
        else:
            raise UserError(f"prompt {spec!r}: give an instruction string or a dict with user/answer_prefix/stop.")
        if not isinstance(fmt.user, str) or not isinstance(fmt.answer_prefix, str):
            raise UserError(f"prompt format {spec!r}: user and answer_prefix must be strings.")
        if fmt.user.count(SPEECH_SLOT) != 1:
            raise UserError(f"prompt format user={fmt.user!r} must contain {SPEECH_SLOT} exactly once.")
        if fmt.stop is not None and (not fmt.stops or any(not isinstance(t, str) or not t for t in fmt.stops)):
            raise UserError(f"prompt format stop={fmt.stop!r}: give a non-empty string or list of them (None: no stop).")
        return fmt

    def as_text(self, text: str) -> tuple[str, str]:
        """(user turn, answer prefix) with ``text`` in place of the speech: the gold-input ceiling's prompt."""
        return self.user.replace(SPEECH_SLOT, text), self.answer_prefix

LORA_QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class SlamConfig:
    """Everything that defines a SLAM model's shape (its trained weights live beside it in ``save``)."""

    encoder: str = "whisper-base"  # zoo name / local dir / hub id of the frozen speech encoder
    llm: str = "smollm2-135m"  # zoo name / local dir (e.g. a pruned model) / hub id of the decoder
    encoder_dim: int = 512
    k: int = 5  # frames concatenated per projector input (50 Hz → 10 Hz)
    projector_hidden: int = 2048
    projector_dropout: float = 0.0
    lora: dict | None = None  # e.g. {"r": 8, "alpha": 16, "dropout": 0.05} → LoRA on q, k, v, o (peft)
    chat_template: bool = True  # use the tokenizer's chat template when it has one
    system_prompt: str | None = ""  # system turn ("" = empty turn; None = the template's default, often long)
    prompts: dict = field(default_factory=lambda: dict(PROMPTS))  # task → instruction (part of the model's key)
    ctc_compress: bool = False  # keep only the speech frames the CTC head labels non-blank (needs a CTC warm start)
    # what the LLM reads per CTC segment under ctc_compress: "mean" of the projected frames, "soft" = p·E
    # (the segment's mean CTC posterior over the token vocabulary, blank removed, times the LLM's token
    # embeddings: LegoSLM), or "hard" = the embedding of the segment's label (soft at temperature → 0; its
    # gradient is soft's, straight through, so the projector still trains)
    ctc_embed: str = "mean"
    ctc_temperature: float = 1.0  # softmax temperature of the posteriors in "soft"
    # prompt tuning (Lester et al. 2021): trainable vectors the LLM reads just before the speech, in its
    # slot; they train in the next-token phase (also with the projector frozen), which lets a frozen decoder
    # learn how the speech is framed without changing a weight of the decoder
    prompt_vectors: int = 0
    prompt_init: str = "Transcribe exactly, word for word:"  # their start: these tokens' embeddings, cycled
    max_target_tokens: int = 256
    dtype: str = "float32"  # the LLM's weights; the projector always trains in float32
    whisper_window: str = "full"  # Whisper features: "full" 30 s window, "padded" (utterance + 2 s) or "trim"


class Projector(nn.Module):
    """k-frame concatenation then Linear(k·D → hidden) → GELU → Linear(hidden → LLM width)."""

    def __init__(self, in_dim: int, out_dim: int, k: int = 5, hidden: int = 2048, dropout: float = 0.0):
        super().__init__()
        self.k = k
        self.net = nn.Sequential(
            nn.Linear(k * in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
        )

    def stack(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, D) → (⌈T/k⌉, k·D); the tail is padded with zero frames."""
        t, d = frames.shape
        n = max(1, math.ceil(t / self.k))
        if n * self.k != t:
            frames = torch.cat([frames, frames.new_zeros(n * self.k - t, d)])
        return frames.reshape(n, self.k * d)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Project each utterance's frames; one matmul for the whole batch (rows are independent)."""
        weight = self.net[0].weight
        stacked = [self.stack(f.to(weight.device, torch.float32)) for f in features]
        out = self.net(torch.cat(stacked))
        return list(out.split([s.shape[0] for s in stacked]))


class CtcHead(nn.Module):
    """Scores projected frames against the LLM's frozen token embeddings (a subset ``vocab``) plus a learned
    blank: logit_v = scale · ⟨frame, E_v⟩. Trained by the CTC warm start; with ``ctc_compress`` it also
    shortens the speech: frames labelled blank are dropped and runs of one label averaged (CTC compression,
    Gaido et al. 2021), so the LLM reads ~one vector per spoken token instead of 10 per second."""

    def __init__(self, width: int, vocab: Sequence[int]):
        super().__init__()
        self.register_buffer("vocab", torch.tensor(sorted(set(int(v) for v in vocab)), dtype=torch.long))
        self.blank = nn.Parameter(torch.zeros(width))
        self.scale = nn.Parameter(torch.tensor(1.0))

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "CtcHead":
        """The head a saved ``state_dict`` holds: its width and vocabulary are read from the state itself."""
        head = cls(state["blank"].shape[0], state["vocab"].tolist())
        head.load_state_dict(state)
        return head

    @property
    def blank_id(self) -> int:
        return len(self.vocab)

    def logits(self, frames: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        table = torch.cat([embedding[self.vocab].detach().to(frames.dtype), self.blank[None].to(frames.dtype)], 0)
        return self.scale * frames @ table.T

    @torch.no_grad()
    def labels(self, frames: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.logits(frames, embedding).argmax(-1)

    def _segments(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(frame labels, kept frame indices, whether each kept frame starts a segment) of one utterance's
        logits: blank frames dropped, a new segment where the label changes or a dropped frame intervenes;
        an utterance labelled all blank keeps the frame most likely to be a token."""
        lab = logits.detach().argmax(-1)
        keep = lab != self.blank_id
        if not keep.any():
            keep[logits.detach()[:, :-1].max(-1).values.argmax()] = True
            lab = lab.clone()
            lab[keep] = logits.detach()[keep, :-1].argmax(-1)
        idx = keep.nonzero()[:, 0]
        new = torch.ones_like(idx, dtype=torch.bool)
        new[1:] = (lab[idx[1:]] != lab[idx[:-1]]) | (idx[1:] != idx[:-1] + 1)
        return lab, idx, new

    def segment_tokens(self, speech: list[torch.Tensor], embedding: torch.Tensor) -> list[list[int]]:
        """The token id of each segment ``compress`` forms, per utterance: what a frozen decoder reads."""
        out = []
        for frames in speech:
            lab, idx, new = self._segments(self.logits(frames, embedding))
            out.append(self.vocab[lab[idx][new]].tolist())
        return out

    def compress(self, speech: list[torch.Tensor], embedding: torch.Tensor, embed: str = "mean",
                 temperature: float = 1.0) -> list[torch.Tensor]:
        """One vector per segment of frames sharing a non-blank label (see ``SlamConfig.ctc_embed``)."""
        if embed not in ("mean", "soft", "hard"):
            raise UserError(f"ctc_embed={embed!r}: use mean, soft or hard.")
        if embed == "soft" and not temperature > 0:
            raise UserError(f"ctc_temperature={temperature!r}: use a positive number (hard = the limit at 0).")
        table = embedding[self.vocab]
        out = []
        for frames in speech:
            logits = self.logits(frames, embedding)
            lab, idx, new = self._segments(logits)
            seg = new.cumsum(0) - 1
            n = int(seg[-1]) + 1
            values = torch.softmax(logits[idx, :-1].float() / temperature, -1) if embed != "mean" else frames[idx]
            sums = values.new_zeros(n, values.shape[1]).index_add(0, seg, values)
            mean = sums / torch.bincount(seg, minlength=n).to(values.dtype)[:, None]
            if embed == "mean":
                out.append(mean)
                continue
            soft = (mean @ table.to(mean.dtype)).to(frames.dtype)
            if embed == "hard":  # the labels' embeddings, with p·E's gradient (straight through)
                soft = _StraightThrough.apply(table[lab[idx][new]].to(frames.dtype), soft)
            out.append(soft)
        return out


class _StraightThrough(torch.autograd.Function):
    """Forward: ``value`` exactly; backward: the gradient goes to ``surrogate`` (Bengio et al. 2013), so a
    projector under hard CTC labels still learns (healing's projector strategy) from what the LLM reads."""

    @staticmethod
    def forward(ctx, value, surrogate):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return None, grad


def load_llm(name: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) through the zoo (packaged names, tiny-*, local dirs, hub ids)."""
    from speechllm_redundancy.zoo import load_causal_lm

    return load_causal_lm(name, dtype=dtype)


class PromptLayout:
    """Token pieces around the speech for each task's PromptFormat, the target's stop tokens, and the
    same layout with text in place of speech (for gold-input ceilings)."""

    def __init__(self, tokenizer, use_chat_template: bool = True, system_prompt: str | None = None,
                 prompts: dict | None = None):
        self.tok = tokenizer
        self.prompts = PROMPTS if prompts is None else prompts
        self.chat = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.system = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
        self._cache: dict[str, tuple[list[int], list[int]]] = {}
        self._stops: dict[tuple[str, ...], frozenset[int]] = {}
        self.stop_id = self._find_stop_id()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_id

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def _find_stop_id(self) -> int:
        """The token that ends an assistant turn (e.g. ``<|im_end|>``), else the tokenizer's EOS."""
        eos = self.tok.eos_token_id
        if self.chat:
            probe = "QQQZZZ"
            text = self.tok.apply_chat_template(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}], tokenize=False
            )
            after = self._ids(text.split(probe, 1)[1])
            special = set(self.tok.all_special_ids) | set(getattr(self.tok, "added_tokens_decoder", {}) or {})
            if after and after[0] in special:
                return after[0]
        if eos is None:
            raise UserError("the LLM's tokenizer has no end-of-sequence token: pick an LLM whose tokenizer has one.")
        return eos

    def format(self, prompt: str) -> PromptFormat:
        """The PromptFormat of a task name, or a literal instruction used as it is."""
        return PromptFormat.of(self.prompts.get(prompt, prompt))

    def _render(self, user: str, answer_prefix: str) -> str:
        if self.chat:
            text = self.tok.apply_chat_template(self.system + [{"role": "user", "content": user}],
                                                tokenize=False, add_generation_prompt=True)
        else:
            text = f"{self.tok.bos_token or ''}{user}\n"
        return text + answer_prefix

    def pieces(self, prompt: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the speech for ``prompt`` (a task name or literal instruction); the
        second piece ends with the pre-filled answer start, where generation begins."""
        if prompt not in self._cache:
            fmt = self.format(prompt)
            text = self._render(fmt.user.replace(SPEECH_SLOT, SPEECH_PLACEHOLDER), fmt.answer_prefix)
            if SPEECH_PLACEHOLDER not in text:
                raise UserError("the chat template dropped the speech placeholder: set chat_template=False.")
            before, after = text.split(SPEECH_PLACEHOLDER, 1)
            self._cache[prompt] = (self._ids(before), self._ids(after))
        return self._cache[prompt]

    def text_ids(self, prompt: str, text: str) -> list[int]:
        """The whole prompt with ``text`` where the speech goes, tokenised as one string (what a text-only
        user of the decoder would send): the input of the gold-input ceiling."""
        fmt = self.format(prompt)
        user, prefix = fmt.as_text(text.strip())
        return self._ids(self._render(user, prefix))

    def target_ids(self, text: str, max_tokens: int, prompt: str = "asr") -> list[int]:
        """What the model learns to write: the text, the format's stop string, then the turn-end token."""
        stops = self.format(prompt).stops
        return self._ids(text.strip() + (stops[0] if stops else ""))[: max_tokens - 1] + [self.stop_id]

    def stop_ids(self, prompt: str) -> frozenset[int]:
        """Token ids that end generation for ``prompt``: the turn-end token, EOS, and every token whose
        text contains the format's stop string (a BPE vocabulary merges e.g. '."' into one token)."""
        stops = self.format(prompt).stops
        if stops not in self._stops:
            ids = {self.stop_id}
            if self.tok.eos_token_id is not None:
                ids.add(self.tok.eos_token_id)
            if stops:
                special = set(self.tok.all_special_ids)
                texts = self.tok.batch_decode([[i] for i in range(len(self.tok))])
                ids |= {i for i, t in enumerate(texts) if i not in special and any(s in t for s in stops)}
            self._stops[stops] = frozenset(ids)
        return self._stops[stops]

    def finish(self, prompt: str, ids: Sequence[int]) -> str:
        """Decoded answer: cut at the format's stop string, special tokens dropped, stripped."""
        text = self.tok.decode(list(ids), skip_special_tokens=True)
        for stop in self.format(prompt).stops:
            text = text.split(stop, 1)[0]
        return text.strip()


class SlamModel(nn.Module):
    """Projector + (frozen, optionally LoRA-adapted) causal LM; features come precomputed (see encoders)."""

    def __init__(self, config: SlamConfig, llm: nn.Module | None = None, tokenizer=None):
        super().__init__()
        self.config = config
        if llm is None:
            llm, tokenizer = load_llm(config.llm, getattr(torch, config.dtype))
        llm.requires_grad_(False)
        self.llm = llm
        self.tokenizer = tokenizer
        self.layout = PromptLayout(tokenizer, config.chat_template, config.system_prompt, config.prompts)
        width = llm.get_input_embeddings().weight.shape[1]
        self.projector = Projector(config.encoder_dim, width, config.k, config.projector_hidden,
                                   config.projector_dropout)
        self.ctc: CtcHead | None = None  # created by the CTC warm start (training.py) or by load_weights()
        self.soft_prompt: nn.Parameter | None = None
        if config.prompt_vectors:
            self.soft_prompt = nn.Parameter(self._initial_prompt(config.prompt_vectors, config.prompt_init))
        if config.lora:
            self.add_lora(config.lora)

    # -- set-up -------------------------------------------------------------------------------------------
    def add_lora(self, spec: dict, adapter_name: str = "default") -> None:
        """LoRA on the decoder's attention projections (q, k, v, o by default) through peft."""
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=spec.get("r", 8), lora_alpha=spec.get("alpha", 16), lora_dropout=spec.get("dropout", 0.05),
            target_modules=list(spec.get("target_modules", LORA_QKVO)), bias="none",
        )
        self.llm = get_peft_model(self.llm, cfg, adapter_name=adapter_name)

    def _initial_prompt(self, n: int, text: str) -> torch.Tensor:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UserError(f"prompt_vectors={n!r}: use a whole number ≥ 0 (0: no soft prompt).")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        if not ids:
            raise UserError(f"prompt_init={text!r} has no tokens: give the text the soft prompt starts from.")
        table = self.llm.get_input_embeddings().weight.detach()
        return table[torch.tensor((ids * n)[:n])].float().clone()

    @property
    def device(self) -> torch.device:
        return self.projector.net[0].weight.device

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    # -- batching -----------------------------------------------------------------------------------------
    def embed_batch(self, features: Sequence[torch.Tensor], prompts: Sequence[str] | str,
                    targets: Sequence[str] | None = None, padding_side: str = "right") -> dict:
        """Build the LLM inputs: dict(inputs_embeds (B, L, H), attention_mask (B, L), labels (B, L)).

        ``prompts`` are task names (``asr``, ``ast-en-de``, ``ast-fr-en``) or literal instructions; without
        ``targets`` each row ends at the assistant opening (the point where generation starts — also the
        last token the angle measurement reads). Labels are -100 except on target tokens and the stop token.
        """
        if isinstance(prompts, str):
            prompts = [prompts] * len(features)
        if len(prompts) != len(features) or (targets is not None and len(targets) != len(features)):
            raise UserError("features, prompts and targets must have one entry per utterance.")
        speech = self.projector(features)
        embed = self.llm.get_input_embeddings()
        if self.config.ctc_compress:
            if self.ctc is None:
                raise UserError("ctc_compress needs a CTC head: train with ctc_warmup_steps > 0 first.")
            speech = self.ctc.compress(speech, embed.weight, self.config.ctc_embed, self.config.ctc_temperature)
        return self._layout_batch(speech, prompts, targets, padding_side)

    def embed_text_batch(self, texts: Sequence[str], prompts: Sequence[str] | str) -> dict:
        """``embed_batch`` with the token embeddings of ``texts`` in the speech slot: the same layout, soft
        prompt and read position as the model's speech inputs, given the words as text instead (the gold
        transcript here is the clean control for comparing speech with text)."""
        if isinstance(prompts, str):
            prompts = [prompts] * len(texts)
        if len(prompts) != len(texts):
            raise UserError("texts and prompts must have one entry per utterance.")
        embed = self.llm.get_input_embeddings()
        rows = [embed(torch.tensor(self.layout._ids(t.strip()) or [self.layout.pad_id], device=embed.weight.device))
                for t in texts]
        return self._layout_batch([r.to(self.device) for r in rows], prompts, None, "right")

    def _layout_batch(self, speech: list[torch.Tensor], prompts: Sequence[str], targets: Sequence[str] | None,
                      padding_side: str) -> dict:
        """Place each row's speech vectors (after the soft prompt) between its prompt's pieces, then any target."""
        embed = self.llm.get_input_embeddings()
        speech_lengths = [sp.shape[0] for sp in speech]  # what the output cap scales with: not the soft prompt
        if self.soft_prompt is not None:
            speech = [torch.cat([self.soft_prompt.to(sp.dtype), sp]) for sp in speech]
        rows = []
        for i, sp in enumerate(speech):
            before, after = self.layout.pieces(prompts[i])
            tgt = (self.layout.target_ids(targets[i], self.config.max_target_tokens, prompts[i])
                   if targets is not None else [])
            rows.append((before, sp, after + tgt, len(tgt)))
        lengths = [len(b) + s.shape[0] + len(a) for b, s, a, _ in rows]
        total = max(lengths)
        ids = torch.full((len(rows), total), self.layout.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), total), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), total), dtype=torch.long)
        speech_at = []
        for i, (before, sp, after, n_tgt) in enumerate(rows):
            start = total - lengths[i] if padding_side == "left" else 0
            seq = before + [self.layout.pad_id] * sp.shape[0] + after
            ids[i, start : start + lengths[i]] = torch.tensor(seq)
            mask[i, start : start + lengths[i]] = 1
            if n_tgt:
                end = start + lengths[i]
                labels[i, end - n_tgt : end] = torch.tensor(after[-n_tgt:])
            speech_at.append(start + len(before))
        dev = self.device
        embeds = embed(ids.to(embed.weight.device)).to(dev).clone()
        for i, sp in enumerate(speech):
            embeds[i, speech_at[i] : speech_at[i] + sp.shape[0]] = sp.to(embeds.dtype)
        return {"inputs_embeds": embeds, "attention_mask": mask.to(dev), "labels": labels.to(dev),
                "speech_lengths": speech_lengths}

    # -- training loss ------------------------------------------------------------------------------------
    def forward(self, features, prompts, targets) -> dict:
        """Teacher-forced NLL on target tokens: dict(loss = token mean, example_loss (B,), example_tokens (B,)).

        The LM head runs only at positions that predict a target token (cheaper than full logits).
        """
        batch = self.embed_batch(features, prompts, targets, padding_side="right")
        hidden = decoder_stack(self.llm)(
            inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
        labels = batch["labels"][:, 1:]
        sel = labels != -100
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][sel]).float()
        tok_loss = F.cross_entropy(logits, labels[sel], reduction="none")
        rows = sel.nonzero()[:, 0]
        n = sel.sum(1)
        example_loss = torch.zeros(len(features), device=tok_loss.device).index_add(0, rows, tok_loss) / n
        return {"loss": tok_loss.mean(), "example_loss": example_loss, "example_tokens": n}

    # -- decoding -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, features: Sequence[torch.Tensor], task: str | Sequence[str] = "asr",
                 max_new_tokens: int = 200, batch_size: int = DECODE_WIDTH, tokens_per_frame: float | None = None,
                 min_tokens_per_segment: float | None = None, progress: bool = False,
                 precision: str = "auto") -> list[str]:
        """Greedy transcripts/translations. Each output is capped at ``max_new_tokens`` and at
        CAP_SLACK + ``tokens_per_frame`` × the speech positions the LLM reads (projected frames, or CTC
        segments under compression: about one per spoken token), so a babbling model stops early; None
        takes the task's OUTPUT_RATIO. Under compression an output also may not stop before
        ``min_tokens_per_segment`` × its segments (None: the task's MIN_OUTPUT_RATIO, 0 for none), so a
        frozen decoder does not drop the words after a garbled stretch; without compression there is no floor
        (projected frames say little of the output's length).
        Utterances are sorted by length and decoded ``batch_size`` at a time, the next joining as one ends;
        apart per set of stop tokens (results do not depend on batching). ``precision``: of the decoder
        layers' products, "auto" (bf16 on a CPU that multiplies it natively), "bf16" or "fp32"
        (``decoding.resolve_decode_precision``; the trained weights stay float32 either way)."""
        from tqdm.auto import tqdm

        from speechllm_redundancy.decoding import decoding_model, greedy, resolve_decode_precision

        llm = decoding_model(self.llm, resolve_decode_precision(precision, self.device))

        prompts = [task] * len(features) if isinstance(task, str) else list(task)
        # a batch holds rows with one set of stop tokens (tasks may stop at different strings)
        groups: dict[frozenset[int], list[int]] = {}
        for i in sorted(range(len(features)), key=lambda i: features[i].shape[0]):
            groups.setdefault(self.layout.stop_ids(prompts[i]), []).append(i)
        chunk = batch_size * DECODE_CHUNK
        chunks = [(stops, g[s : s + chunk]) for stops, g in groups.items() for s in range(0, len(g), chunk)]
        out: list[str] = [""] * len(features)
        was_training = self.training
        self.eval()
        try:
            with tqdm(total=len(features), desc="decode", disable=not progress) as bar:
                for stops, idx in chunks:
                    row_prompts = [prompts[i] for i in idx]
                    batch = self.embed_batch([features[i] for i in idx], row_prompts, padding_side="left")
                    caps = [min(max_new_tokens, CAP_SLACK + int(self._output_ratio(p, tokens_per_frame) * n))
                            for p, n in zip(row_prompts, batch["speech_lengths"])]
                    floors = [min(cap, int(self._floor_ratio(p, min_tokens_per_segment) * n))
                              for p, n, cap in zip(row_prompts, batch["speech_lengths"], caps)]
                    seqs = greedy(llm, batch["inputs_embeds"], batch["attention_mask"], caps,
                                  stop_ids=stops, pad_id=self.layout.pad_id, keep_stop=True, width=batch_size,
                                  min_new_tokens=floors)
                    for i, p, ids in zip(idx, row_prompts, seqs):
                        out[i] = self.layout.finish(p, ids)
                    bar.update(len(idx))
        finally:
            self.train(was_training)
        return out

    @staticmethod
    def _output_ratio(prompt: str, tokens_per_frame: float | None) -> float:
        if tokens_per_frame is not None:
            if not tokens_per_frame > 0:
                raise UserError(f"tokens_per_frame={tokens_per_frame!r}: use a positive number (None: by task).")
            return tokens_per_frame
        return OUTPUT_RATIO.get(prompt, DEFAULT_OUTPUT_RATIO)

    def _floor_ratio(self, prompt: str, min_tokens_per_segment: float | None) -> float:
        if min_tokens_per_segment is not None:
            if not min_tokens_per_segment >= 0:
                raise UserError(f"min_tokens_per_segment={min_tokens_per_segment!r}: use a number >= 0 (0: no "
                                "floor; None: by task).")
            ratio = min_tokens_per_segment
        else:
            ratio = MIN_OUTPUT_RATIO.get(prompt, 0.0)
        return ratio if self.config.ctc_compress else 0.0

    # -- persistence --------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, state: dict[str, torch.Tensor] | None = None,
                        llm_fingerprint: str | None = None) -> Path:
        """Write the trained model in the ecosystem's layout: ``config.json`` (the SlamConfig, the LLM and
        encoder referenced by name and weights hash, never copied), ``model.safetensors`` (the input side:
        projector, CTC head, soft prompt) and, with LoRA, peft's own adapter folder ``adapters/``
        (``PeftModel.save_pretrained``: ``adapter_config.json`` + ``adapter_model.safetensors``, an adapter
        other than ``default`` in ``adapters/<name>/``). Written atomically and sealed (checksums.json: each
        file's size and sha256, checked on load); an existing directory is replaced only if it is itself a
        saved SLAM model. ``state``: the tensors to write, by ``state_dict()`` name (at least the input side and
        the adapters'), when this model's own are not whole (the shards of an FSDP launch, gathered by
        ``training``); default: ``self.state_dict()``. ``llm_fingerprint``: the decoder's weights hash, for a
        decoder that is not yet where ``config.llm`` names it (written beside the model in one atomic step, as
        ``slam heal`` does; ``features.fingerprint`` of its folder); default: hashed from ``config.llm``."""
        from safetensors.torch import save_file

        from speechllm_redundancy.cache import atomic_path

        directory = Path(directory)
        if directory.exists() and not is_saved_slam(directory) and any(directory.iterdir()):
            raise UserError(f"{directory} exists and is not a saved SLAM model: choose an empty or new directory.")
        adapters = list(getattr(self.llm, "peft_config", None) or {})
        record = {**asdict(self.config), "slam_format": FORMAT_VERSION, "adapters": adapters,
                  "llm_layers": num_decoder_layers(self.llm),  # a pruned decoder is not the one config.llm names
                  "llm_fingerprint": llm_fingerprint or _safe_fingerprint(self.config.llm),
                  "encoder_fingerprint": _safe_fingerprint(self.config.encoder)}
        # peft picks each adapter's tensors out of the decoder's state (by default its own)
        peft_state = {} if state is None else {"state_dict": {k.removeprefix("llm."): v for k, v in state.items()
                                                              if k.startswith("llm.")}}
        state = self.state_dict() if state is None else state
        with atomic_path(directory, seal=True) as tmp:
            tmp.mkdir()
            (tmp / CONFIG_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            save_file({k: v.detach().cpu().contiguous() for k, v in _input_side(state).items()},
                      str(tmp / WEIGHTS_FILE))
            if adapters:
                self.llm.save_pretrained(tmp / ADAPTERS_DIR, **peft_state)
        return directory

    def load_weights(self, directory: str | os.PathLike, adapters: bool = True) -> None:
        """Load a saved model's projector, CTC head, soft prompt and (with ``adapters``) LoRA weights into
        this model, whose adapters must already exist (``from_pretrained`` builds a model from scratch). A
        file that differs from what ``save_pretrained`` recorded is refused, named."""
        from peft import load_peft_weights, set_peft_model_state_dict
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        record = _saved_config(directory)
        try:
            state = load_file(str(directory / WEIGHTS_FILE))
        except (SafetensorError, OSError) as err:  # a model saved before checksum records, since damaged
            raise UserError(f"{directory / WEIGHTS_FILE} cannot be read ({err}): the file is damaged. Save the "
                            "model again (a training run's final model: delete the run's directory to train it "
                            "again).") from None
        ctc = {k.removeprefix("ctc."): v for k, v in state.items() if k.startswith("ctc.")}
        if ctc:
            self.ctc = CtcHead.from_state(ctc).to(self.device)
        prompt = state.get("soft_prompt")
        if prompt is not None and (self.soft_prompt is None or self.soft_prompt.shape != prompt.shape):
            raise UserError(f"{directory} has a soft prompt of {tuple(prompt.shape)} that this model lacks "
                            f"(prompt_vectors={self.config.prompt_vectors}): use SlamModel.from_pretrained.")
        unexpected = self.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise UserError(f"{directory / WEIGHTS_FILE} holds weights this model has no place for "
                            f"({unexpected[:3]}): use SlamModel.from_pretrained.")
        if self.ctc is not None:
            self.ctc.requires_grad_(False)
        if not adapters:
            return
        for name in record["adapters"]:
            if name not in (getattr(self.llm, "peft_config", None) or {}):
                raise UserError(f"{directory} has LoRA adapter {name!r} that this model lacks: "
                                "use SlamModel.from_pretrained.")
            res = set_peft_model_state_dict(self.llm, load_peft_weights(str(_adapter_dir(directory, name))),
                                            adapter_name=name)
            if getattr(res, "unexpected_keys", None):
                raise UserError(f"{directory}: adapter {name!r} does not fit this LLM "
                                f"({res.unexpected_keys[:3]}).")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, llm: nn.Module | None = None, tokenizer=None,
                        device: str | None = None) -> "SlamModel":
        """Rebuild a model written by ``save_pretrained``: the LLM by name/path (a pruned model's directory
        works) or as given, its LoRA adapters through ``PeftModel.from_pretrained``, then the input side.
        Warns when the LLM's weights differ from those it was trained on."""
        from peft import PeftModel

        directory = Path(directory)
        record = _saved_config(directory)
        names = {f.name for f in fields(SlamConfig)}
        config = SlamConfig(**{k: v for k, v in record.items() if k in names})
        model = cls(replace(config, lora=None), llm, tokenizer)  # the adapters come from their folders
        model.config.lora = config.lora
        saved_layers, layers = record.get("llm_layers"), num_decoder_layers(model.llm)
        if saved_layers is not None and layers != saved_layers:
            given = "the LLM passed in" if llm is not None else repr(config.llm)
            raise UserError(f"{directory} was trained on a decoder of {saved_layers} layers, but {given} has "
                            f"{layers}: it was saved from a pruned decoder (a healing run's model) that its "
                            "config does not name. Pass that decoder (SlamModel.from_pretrained(directory, "
                            "llm=…, tokenizer=…)), or load the final/ of a `slam heal` folder, which names its "
                            "pruned decoder/.")
        if llm is None and _safe_fingerprint(config.llm) != record["llm_fingerprint"]:
            warnings.warn(f"the LLM {config.llm!r} differs from the one this SLAM model was trained with "
                          "(weights hash changed): results may differ.", stacklevel=2)
        for name in record["adapters"]:
            path = str(_adapter_dir(directory, name))
            if isinstance(model.llm, PeftModel):
                model.llm.load_adapter(path, adapter_name=name, is_trainable=True)
            else:
                model.llm = PeftModel.from_pretrained(model.llm, path, adapter_name=name, is_trainable=True)
        model.load_weights(directory, adapters=False)
        if device:
            model.to(device)
        return model


def _input_side(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of a SlamModel's ``state_dict()`` but the LLM's: what training adds in front of the decoder."""
    return {k: v for k, v in state.items() if not k.startswith("llm.")}


def is_saved_slam(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a model written by ``SlamModel.save_pretrained`` (any format version)."""
    try:
        return "slam_format" in json.loads((Path(directory) / CONFIG_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return False


def _adapter_dir(directory: Path, name: str) -> Path:
    """Where ``PeftModel.save_pretrained`` puts adapter ``name`` (``default`` at the top of its folder)."""
    return directory / ADAPTERS_DIR if name == "default" else directory / ADAPTERS_DIR / name


def _saved_config(directory: Path) -> dict:
    """config.json of a saved model of this format, once its files match the sizes and sha256
    ``save_pretrained`` recorded (small files: always hashed)."""
    from speechllm_redundancy.cache import verify_entry

    if not is_saved_slam(directory):
        raise UserError(f"{directory} is not a saved SLAM model (no {CONFIG_FILE} written by "
                        "SlamModel.save_pretrained): pass a directory written by it or by `slam train`.")
    verify_entry(directory, hash_limit=None, fix=f"delete {directory} and save the model again (a training "
                 "run's final model: delete the run's directory to train it again)")
    record = json.loads((directory / CONFIG_FILE).read_text())
    if record["slam_format"] != FORMAT_VERSION:
        raise UserError(f"{directory} holds a SLAM model of format {record['slam_format']}; this version "
                        f"reads format {FORMAT_VERSION}: save or train it again with this version.")
    return record


def _safe_fingerprint(name: str) -> str | None:
    """Weights hash of a model by name, or None when it cannot be resolved here (recorded, not required)."""
    from speechllm_redundancy.encoders import resolve_model
    from speechllm_redundancy.features import fingerprint

    try:
        return fingerprint(resolve_model(name))
    except UserError:
        return None
