"""Gold-input ceilings: what a decoder does when handed the *gold* input as text in the SLAM prompt layout.

A frozen decoder can do no better from speech than from the right words themselves, so its score with
the gold transcript (ASR: copy it; AST: translate the gold source sentence) in place of the speech bounds
every projector trained for it. That bound depends on the layout more than on the decoder (frozen
SmolLM2-135M copies the same sentences at 44 % or 13 % WER depending on the quotes around them), so the
layout is chosen by this ceiling on held-out sentences (``search_layouts``) before anything is trained,
and recorded with the model (``SlamConfig.prompts``).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from speechllm_redundancy.errors import UserError

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
    """(gold inputs, references): the transcript twice for ASR; source transcript and translation for AST."""
    if task == "asr":
        refs = [u.text for u in utterances]
        return refs, refs
    if any(u.translation is None for u in utterances):
        raise UserError(f"task {task!r} needs utterances with translations: use a translation manifest.")
    return [u.text for u in utterances], [u.translation for u in utterances]


@torch.inference_mode()
def decode_text_inputs(llm, layout, task: str, sources: Sequence[str], batch_size: int = 16,
                       max_new_tokens: int = 200, tokens_per_word: float = 4.0) -> list[str]:
    """Greedy answers of ``llm`` to the task's prompt with each source text where the speech goes. Each
    answer is capped at 16 + ``tokens_per_word`` × the source's words (as SLAM decoding caps by length)."""
    from speechllm_redundancy.decoding import greedy

    device = llm.get_input_embeddings().weight.device
    embed = llm.get_input_embeddings()
    stops = layout.stop_ids(task)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out = [""] * len(sources)
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
    return out


def gold_ceiling(llm, tokenizer, task: str, utterances, prompt=None, *, chat_template: bool = True,
                 system_prompt: str | None = "", batch_size: int = 16) -> dict:
    """Score of ``llm`` given the gold input as text in the layout ``prompt`` (an instruction or PromptFormat
    dict; None: the library's default for the task). Returns dict(metric, score, hyps, refs)."""
    from speechllm_redundancy.evaluation import score
    from speechllm_redundancy.slam import PROMPTS, PromptLayout

    if prompt is None:
        if task not in PROMPTS:
            raise UserError(f"no default layout for task {task!r}: pass prompt=.")
        prompt = PROMPTS[task]
    layout = PromptLayout(tokenizer, chat_template, system_prompt, {task: prompt})
    sources, refs = gold_pairs(utterances, task)
    hyps = decode_text_inputs(llm, layout, task, sources, batch_size=batch_size)
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
