"""Gold-input ceilings: what a decoder does when handed the *gold* input as text in the SLAM prompt layout.

A frozen decoder can do no better from speech than from the right words themselves, so its score with
the gold transcript (ASR: copy it; AST: translate the gold source sentence) in place of the speech bounds
every projector trained for it. That bound depends on the layout more than on the decoder (frozen
SmolLM2-135M copies the same sentences at 44 % or 13 % WER depending on the quotes around them), so the
layout is chosen by this ceiling on held-out sentences (``search_layouts``) before anything is trained,
and recorded with the model (``SlamConfig.prompts``).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

import torch

from speechllm_redundancy.errors import UserError
from speechllm_redundancy.slam import DECODE_WIDTH

# Layouts tried per task by ``search_layouts`` (benchmarks/gold_ceiling.py; book/method.md shows the table).
# Strings are instructions placed after the speech; dicts are PromptFormats (slam.PromptFormat).
ASR_CANDIDATES = {
    "repeat-words": "Repeat the words above exactly.",
    "transcribe": "Transcribe the speech.",
    "quoted-copy": {"user": '"{speech}"\nCopy the quoted sentence exactly, nothing else.'},
    "quoted-copy+prefill": {"user": '"{speech}"\nCopy the quoted sentence exactly, nothing else.',
                            "answer_prefix": '"', "stop": '"'},
    "quoted-repeat+prefill": {"user": 'Repeat this sentence exactly: "{speech}"', "answer_prefix": '"',
                              "stop": '"'},
    "labelled-copy+prefill": {"user": 'Sentence: "{speech}"\nWrite the sentence again, word for word.',
                              "answer_prefix": '"', "stop": '"'},
}


def ast_candidates(source: str, target: str) -> dict:
    """Layouts for translating ``source`` into ``target`` (language names, e.g. English, German)."""
    return {
        "translate-speech": f"Translate the {source} speech into {target}.",
        "translate-above": f"Translate the {source} text above into {target}.",
        "quoted+prefill": {"user": f'Translate this {source} sentence into {target}: "{{speech}}"',
                           "answer_prefix": '"', "stop": '"'},
        "labelled": {"user": f"{source}: {{speech}}\nTranslate into {target}. Answer with the translation only.",
                     "answer_prefix": "", "stop": "\n"},
        "labelled+prefill": {"user": f"{source}: {{speech}}\nTranslate into {target}.",
                             "answer_prefix": f"{target}: ", "stop": "\n"},
    }


LANGUAGES = {"en": "English", "de": "German", "fr": "French"}


def candidates_for(task: str) -> dict:
    """The layouts ``search_layouts`` tries for a task (``asr`` or ``ast-<src>-<tgt>``)."""
    if task == "asr":
        return dict(ASR_CANDIDATES)
    parts = task.split("-")
    if len(parts) != 3 or parts[0] != "ast" or parts[1] not in LANGUAGES or parts[2] not in LANGUAGES:
        raise UserError(f"task {task!r}: use asr or ast-<src>-<tgt> with languages {', '.join(LANGUAGES)}.")
    return ast_candidates(LANGUAGES[parts[1]], LANGUAGES[parts[2]])


def gold_pairs(utterances, task: str) -> tuple[list[str], list[str]]:
    """(gold inputs, references): the transcript twice for ASR; source transcript and translation for AST
    (``Utterance.target``; UserError naming the rows without one)."""
    from speechllm_redundancy.data.manifest import targets

    refs = targets(utterances, task)
    return (refs if task == "asr" else [u.text for u in utterances]), refs


@torch.inference_mode()
def decode_text_inputs(llm, layout, task: str, sources: Sequence[str], batch_size: int = DECODE_WIDTH,
                       max_new_tokens: int = 200, tokens_per_word: float = 4.0,
                       progress: bool = False) -> list[str]:
    """Greedy answers of ``llm`` to the task's prompt with each source text where the speech goes. Each
    answer is capped at 16 + ``tokens_per_word`` × the source's words (as SLAM decoding caps by length).
    ``progress`` shows a bar over the sources (the answers do not depend on it)."""
    from tqdm.auto import tqdm

    from speechllm_redundancy.decoding import greedy

    device = llm.get_input_embeddings().weight.device
    embed = llm.get_input_embeddings()
    stops = layout.stop_ids(task)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out = [""] * len(sources)
    with tqdm(total=len(sources), desc=f"gold ceiling ({task})", unit="utt", disable=not progress) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            rows = [layout.text_ids(task, sources[i]) for i in idx]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), layout.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, r in enumerate(rows):
                ids[j, width - len(r):] = torch.tensor(r)
                mask[j, width - len(r):] = 1
            caps = [min(max_new_tokens, 16 + math.ceil(tokens_per_word * len(sources[i].split()))) for i in idx]
            seqs = greedy(llm, embed(ids.to(device)), mask.to(device), caps, stops, layout.pad_id, keep_stop=True)
            for i, seq in zip(idx, seqs):
                out[i] = layout.finish(task, seq)
            bar.update(len(idx))
    return out


def gold_ceiling(llm, tokenizer, task: str, utterances, prompt=None, *, chat_template: bool = True,
                 system_prompt: str | None = "", batch_size: int = DECODE_WIDTH, progress: bool = True) -> dict:
    """Score of ``llm`` given the gold input as text in the layout ``prompt`` (an instruction or PromptFormat
    dict; None: the library's default for the task). Returns dict(metric, score, hyps, refs). ``progress``
    shows a bar over the utterances decoded."""
    from speechllm_redundancy.evaluation import score
    from speechllm_redundancy.slam import PROMPTS, PromptLayout

    if prompt is None:
        if task not in PROMPTS:
            raise UserError(f"no default layout for task {task!r}: pass prompt=.")
        prompt = PROMPTS[task]
    layout = PromptLayout(tokenizer, chat_template, system_prompt, {task: prompt})
    sources, refs = gold_pairs(utterances, task)
    hyps = decode_text_inputs(llm, layout, task, sources, batch_size=batch_size, progress=progress)
    metric, value = score(task, refs, hyps)
    return {"metric": metric, "score": value, "hyps": hyps, "refs": refs}


def search_layouts(llm, tokenizer, task: str, utterances, candidates: Mapping[str, object] | None = None,
                   **kwargs) -> list[dict]:
    """Every candidate layout's gold-input ceiling, best first: [{name, prompt, metric, score}, …]."""
    candidates = candidates_for(task) if candidates is None else candidates
    if not candidates:
        raise UserError("no candidate layouts to search: pass at least one.")
    rows = []
    for name, prompt in candidates.items():
        res = gold_ceiling(llm, tokenizer, task, utterances, prompt, **kwargs)
        rows.append({"name": name, "prompt": prompt, "metric": res["metric"], "score": res["score"],
                     "example": res["hyps"][0] if res["hyps"] else ""})
    lower_better = task == "asr"
    return sorted(rows, key=lambda r: r["score"] if lower_better else -r["score"])


CEILING_FORMAT = 1  # bump when what a cached ceiling holds, or how it is measured, changes


def cached_gold_ceiling(decoder, task: str, manifest_path, limit: int | None = None, *, prompt=None,
                        chat_template: bool = True, system_prompt: str | None = "", dtype: str = "float32",
                        device: str | None = None, batch_size: int = DECODE_WIDTH, progress: bool = True) -> dict:
    """``gold_ceiling`` of a decoder on the first ``limit`` utterances of ``manifest_path`` (None: all),
    computed once and kept under ``artifacts/ceilings/``, keyed by the decoder's weights, its layout, the
    task, the manifest's bytes and ``limit``. Returns dict(metric, score, hyps, refs), ready for
    ``results.record_baseline(..., ceiling=)``.

    ``decoder``: a ``SlamModel`` — its already-loaded decoder is measured in the layout it decodes with (its
    config's prompt for the task, chat template and system prompt; the layout arguments here are then
    unused), with any LoRA adapters switched off: the ceiling is that of the *base* decoder, shared by the
    frozen-decoder and LoRA models built on it. Or a decoder name (zoo name / local directory / hub id),
    loaded (with ``dtype``, on ``device``) only when the cache misses, in the layout given here (the
    defaults are ``SlamConfig``'s). A pruned decoder is refused: the ceiling bounds the unpruned model.
    ``progress`` shows a bar while a missing ceiling is decoded (not part of the key).
    """
    from speechllm_redundancy.cache import cached_json, file_sha256, key_of
    from speechllm_redundancy.data.manifest import read_manifest
    from speechllm_redundancy.encoders import resolve_model
    from speechllm_redundancy.features import _slug, fingerprint
    from speechllm_redundancy.paths import artifact_path
    from speechllm_redundancy.slam import PROMPTS, PromptFormat, SlamModel

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit={limit!r}: pass a positive number of utterances, or None for the whole "
                        "manifest.")
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise UserError(f"manifest {manifest_path} does not exist: build the corpus first (`corpus build`).")
    slam = decoder if isinstance(decoder, SlamModel) else None
    if slam is not None:  # exactly what the model decodes with
        name, dtype, prompt = slam.config.llm, slam.config.dtype, slam.layout.format(task)
        chat_template, system_prompt = slam.config.chat_template, slam.config.system_prompt
    else:
        name = str(decoder)
    if prompt is None:
        if task not in PROMPTS:
            raise UserError(f"no default layout for task {task!r}: pass prompt=.")
        prompt = PROMPTS[task]
    path = resolve_model(name)
    layout = {"prompt": asdict(PromptFormat.of(prompt)), "chat_template": chat_template,
              "system_prompt": system_prompt}
    key = key_of(CEILING_FORMAT, fingerprint(path), dtype, layout, task, file_sha256(manifest_path), limit)

    def compute() -> dict:
        utterances = read_manifest(manifest_path)[:limit]
        if slam is None:
            llm, tokenizer = _decoder(name, dtype, device or "cpu")
        else:
            llm, tokenizer = slam.llm, slam.tokenizer
        _check_unpruned(llm, path, name)
        with _adapters_off(llm) as base:
            res = gold_ceiling(base, tokenizer, task, utterances, prompt, chat_template=chat_template,
                               system_prompt=system_prompt, batch_size=batch_size, progress=progress)
        return {**res, "llm": name, "task": task, "manifest": str(manifest_path.resolve()), "limit": limit,
                "layout": layout}

    return cached_json(artifact_path("ceilings", f"{task}-{_slug(manifest_path.stem)}-{key}.json"), compute)


@functools.lru_cache(maxsize=1)
def _decoder(name: str, dtype: str, device: str):
    """The decoder and tokenizer, loaded once for the several sets a chapter measures it on (one at a time:
    asking for another decoder frees the previous one)."""
    from speechllm_redundancy.slam import load_llm

    llm, tokenizer = load_llm(name, getattr(torch, dtype))
    return llm.to(device).eval(), tokenizer


def _check_unpruned(llm, path: str, name: str) -> None:
    """Refuse a decoder with fewer layers than its weights directory's config (a pruned one)."""
    import json

    from speechllm_redundancy.layers import num_decoder_layers

    config = Path(path) / "config.json"
    if not config.is_file():
        return  # a hub id: nothing local to compare with
    cfg = json.loads(config.read_text())
    layers = cfg.get("num_hidden_layers", (cfg.get("text_config") or {}).get("num_hidden_layers"))
    if layers is not None and num_decoder_layers(llm) != layers:
        raise UserError(f"the decoder has {num_decoder_layers(llm)} layers, {name} has {layers}: the "
                        "gold-input ceiling is of the unpruned decoder; pass the unpruned SLAM model or the "
                        "decoder's name.")


@contextlib.contextmanager
def _adapters_off(llm):
    """The decoder without its LoRA adapters (peft's ``disable_adapter``), in eval mode; restored after."""
    training = llm.training
    llm.eval()
    try:
        if hasattr(llm, "disable_adapter") and getattr(llm, "peft_config", None):
            with llm.disable_adapter():
                yield llm.get_base_model()
        else:
            yield llm
    finally:
        llm.train(training)
