"""Greedy decoding speed of a SLAM model: the project's decoder against two common ones (and its own former
self), in one run.

Issue 16 anchors the project's decoder (``decoding.greedy``: KV cache, rows batched with left padding, a
batch's width decoded at a time and refilled from the waiting rows as rows end, called as
``SlamModel.generate`` calls it) against
  no-cache   batch 1, the whole sequence (prompt embeddings + tokens so far) re-run at every step, as in
             SpeechBrain's SpeechLLM recipe (LM head at the last position only, so the loop is charged for
             re-running the decoder stack alone: a conservative speed-up)
  generate   Hugging Face ``llm.generate(inputs_embeds=…)``, greedy, batch 1 (each row keeps its own cap)
  full-width the project's decoder before issue 16, batch by batch: a finished row stays in its batch (fed
             padding) until the slowest row ends, and ``DynamicCache`` re-copies each layer's cache each step.
The physical limit is one decoder forward per generated token per batch, the prefill done once, nothing
computed for a finished row; the project's decoder runs that, at full width while rows are waiting.
All four get the same utterances, projected inputs, per-row caps (``SlamModel.generate``'s rule) and stop
ids, and keep the stop token, without ``SlamModel.generate``'s ASR output floor (``min_new_tokens``, which
only rules the stop ids out for a row's first tokens: the same steps, other tokens); their token ids must
agree exactly (else the first differing row is printed and the run exits non-zero). All four run the same
decoder: the LLM as ``SlamModel.generate`` decodes it at ``--precision`` (``decoding.decoding_model``; "auto"
is bf16 products on a CPU that multiplies bf16 natively, float32 elsewhere). Where that is bf16, the table
adds a variant, not compared for equality: ``fp32``, the project's decoder on the float32 model (what bf16
products gain), and the line below it counts the rows whose ids differ. Times exclude the projector, building
the bf16 copy and a short untimed warm-up.

    python benchmarks/bench_decoding.py                      # smollm2-135m and qwen2.5-coder-0.5b, 32 rows
    python benchmarks/bench_decoding.py --slam SMOL_DIR QWEN_DIR --manifest test-clean.jsonl --limit 200
    python benchmarks/bench_decoding.py --tiny               # tiny random Llama (the test)

Without ``--slam`` the packaged decoders read a randomly initialised projector fed random 512-d features of
3–15 s at 50 Hz (fixed seed): they babble to their cap or a stop token, which serves a speed benchmark (all
decoders get the same caps). ``--slam`` decodes real utterances with trained models instead: one or more
folders ``SlamModel.save_pretrained`` wrote (a trained run's ``artifacts/slam/<key>/final``), one per decoder
shape, all reading the same utterances. The last line takes, for each ratio, the smallest over the models.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from speechllm_redundancy.decoding import DECODE_PRECISIONS, decoding_model, greedy, resolve_decode_precision
from speechllm_redundancy.slam import CAP_SLACK, DECODE_CHUNK, DECODE_WIDTH, SlamConfig, SlamModel

DECODERS = ("project", "full-width", "no-cache", "generate")  # the two batched ones back to back
VARIANTS = ("fp32",)  # beside bf16 products: outputs may differ from theirs, so counted, not asserted equal


def batches(model: SlamModel, features, task: str = "asr", max_new_tokens: int = 200,
            batch_size: int = DECODE_WIDTH):
    """Left-padded batches as ``SlamModel.generate`` builds them (by length): embeds, mask, caps, stops."""
    order = sorted(range(len(features)), key=lambda i: features[i].shape[0])
    ratio, out = model._output_ratio(task, None), []
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            b = model.embed_batch([features[i] for i in order[s : s + batch_size]], task, padding_side="left")
            caps = [min(max_new_tokens, CAP_SLACK + int(ratio * n)) for n in b["speech_lengths"]]
            out.append({"embeds": b["inputs_embeds"], "mask": b["attention_mask"], "caps": caps,
                        "stops": model.layout.stop_ids(task)})
    return out


def rows(batch) -> list[tuple[torch.Tensor, int, frozenset]]:
    """(1, L, H) unpadded inputs, cap and stop ids of each row (left padding: real positions come last)."""
    width = batch["embeds"].shape[1]
    return [(batch["embeds"][i : i + 1, width - n :], cap, batch["stops"])
            for i, (n, cap) in enumerate(zip(batch["mask"].sum(1).tolist(), batch["caps"]))]


def project(model, batch, width: int | None = None, llm=None) -> list[list[int]]:
    """The project's decoder on ``batch``, with ``model``'s LLM or another decoder made of it (``llm``)."""
    return greedy(model.llm if llm is None else llm, batch["embeds"], batch["mask"], batch["caps"],
                  stop_ids=batch["stops"], pad_id=model.layout.pad_id, keep_stop=True, width=width)


def chunks(batch_list) -> list[dict]:
    """Consecutive batches merged (left-padded) DECODE_CHUNK at a time: what ``SlamModel.generate`` hands
    ``greedy`` to decode a batch's width at a time, refilling it as rows end."""
    out = []
    for s in range(0, len(batch_list), DECODE_CHUNK):
        part = batch_list[s : s + DECODE_CHUNK]
        cols = max(b["mask"].shape[1] for b in part)
        pads = [cols - b["mask"].shape[1] for b in part]
        out.append({"embeds": torch.cat([F.pad(b["embeds"], (0, 0, n, 0)) for b, n in zip(part, pads)]),
                    "mask": torch.cat([F.pad(b["mask"], (n, 0)) for b, n in zip(part, pads)]),
                    "caps": [c for b in part for c in b["caps"]], "stops": part[0]["stops"]})
    return out


@torch.inference_mode()
def full_width(llm, embeds: torch.Tensor, mask: torch.Tensor, caps: list[int], stops, pad_id: int):
    """``decoding.greedy`` before issue 16 (the stop token kept): every row is run until the last one ends."""
    from transformers import DynamicCache

    from speechllm_redundancy.decoding import cache_kwarg

    b, stops = embeds.shape[0], torch.tensor(sorted(stops))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = {cache_kwarg(llm): DynamicCache()}
    out = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
              logits_to_keep=1, **cache)
    next_pos, done = positions[:, -1:] + 1, torch.zeros(b, dtype=torch.bool)
    caps_t, lengths, raw = torch.tensor(caps), torch.zeros(b, dtype=torch.long), []
    for step in range(max(caps)):
        nxt = out.logits[:, -1].argmax(-1)
        capped = step >= caps_t
        hit = torch.isin(nxt, stops) & ~done & ~capped
        done |= hit | capped
        lengths += (~done).long() + hit.long()
        raw.append(nxt)
        if done.all() or step + 1 >= max(caps):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        fed = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        out = llm(input_ids=fed[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True, **cache)
        next_pos = next_pos + 1
    seq = torch.stack(raw, 1).tolist() if raw else [[] for _ in range(b)]
    return [row[:n] for row, n in zip(seq, lengths.tolist())]


@torch.inference_mode()
def no_cache(llm, embeds: torch.Tensor, cap: int, stops) -> list[int]:
    """Batch 1 without a KV cache: re-run prompt + generated tokens at each step; the stop token is kept."""
    table, ids = llm.get_input_embeddings(), []
    while len(ids) < cap:
        x = embeds if not ids else torch.cat([embeds, table(torch.tensor([ids], device=embeds.device))], 1)
        ids.append(int(llm(inputs_embeds=x, use_cache=False, logits_to_keep=1).logits[0, -1].argmax()))
        if ids[-1] in stops:
            break
    return ids


@torch.inference_mode()
def hf_generate(llm, embeds: torch.Tensor, cap: int, stops, pad_id: int) -> list[int]:
    """Hugging Face greedy ``generate`` from embeddings; it keeps the stop (eos) token it ends on."""
    if cap == 0:
        return []
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    out = llm.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, num_beams=1,
                       repetition_penalty=1.0, max_new_tokens=cap, eos_token_id=sorted(stops),
                       pad_token_id=pad_id)
    ids = out[0].tolist()  # only the new tokens, given inputs_embeds alone (transformers 5.24)
    return ids[embeds.shape[1] :] if len(ids) > cap else ids  # a release that prepends the prompt's ids


def decoders(model, batch_list, label: str = "", show: bool = True, precision: str = "fp32") -> dict:
    """Decoder name → a function that decodes every row of ``batch_list`` (in batch order), each on
    ``model``'s LLM as decoded at ``precision`` (resolved); at bf16 the ``fp32`` variant too."""
    every, width = [r for b in batch_list for r in rows(b)], max(len(b["caps"]) for b in batch_list)
    llm = decoding_model(model.llm, precision)

    def bar(items, name):
        return tqdm(items, desc=f"{label} {name}".strip(), leave=False, disable=not show)

    variants = {} if precision == "fp32" else {
        "fp32": lambda: [ids for b in bar(chunks(batch_list), "fp32")
                         for ids in project(model, b, width, model.llm)]}
    return {
        "project": lambda: [ids for b in bar(chunks(batch_list), "project")
                            for ids in project(model, b, width, llm)],
        "full-width": lambda: [ids for b in bar(batch_list, "full-width")
                               for ids in full_width(llm, b["embeds"], b["mask"], b["caps"], b["stops"],
                                                     model.layout.pad_id)],
        "no-cache": lambda: [no_cache(llm, e, cap, st) for e, cap, st in bar(every, "no-cache")],
        "generate": lambda: [hf_generate(llm, e, cap, st, model.layout.pad_id)
                             for e, cap, st in bar(every, "generate")],
        **variants,
    }


def run(model, batch_list, label: str = "", precision: str = "fp32") -> dict[str, tuple[list[list[int]], float]]:
    """Each decoder's outputs and wall-clock seconds at ``precision`` (resolved), after an untimed warm-up
    (one row, 2 tokens, which also builds the bf16 copy)."""
    model.eval()
    b0 = batch_list[0]
    first = {**b0, "embeds": b0["embeds"][:1], "mask": b0["mask"][:1], "caps": [min(2, b0["caps"][0])]}
    for warm_up in decoders(model, [first], show=False, precision=precision).values():
        warm_up()
    result = {}
    for name, decode in decoders(model, batch_list, label, precision=precision).items():
        start = time.perf_counter()
        out = decode()
        result[name] = (out, time.perf_counter() - start)
    return result


def first_mismatch(result) -> int | None:
    """The first row where another decoder's ids differ from the project's (None: all identical)."""
    ref = result["project"][0]
    return next((i for i, ids in enumerate(ref)
                 if any(i >= len(result[d][0]) or result[d][0][i] != ids for d in DECODERS[1:])), None)


def differing_rows(result, variant: str) -> list[int]:
    """The rows where ``variant``'s ids differ from the project decoder's."""
    return [i for i, (a, b) in enumerate(zip(result["project"][0], result[variant][0])) if a != b]


def tiny_model(n: int = 12):
    """A SlamModel on the tests' tiny random Llama (byte tokenizer) and n random 16-d feature sequences."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from slam_tiny import tiny_llm

    llm, tok = tiny_llm(seed=3)
    torch.manual_seed(2)
    cfg = SlamConfig(encoder="tiny-whisper", llm="tiny", encoder_dim=16, projector_hidden=32)
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(5, 60, (n,), generator=g).tolist()
    return SlamModel(cfg, llm, tok), [3 * torch.randn(t, 16, generator=g) for t in lengths]


def models(args):
    """(name, SlamModel, features) to benchmark, by the command line."""
    if args.tiny:
        yield ("tiny", *tiny_model(args.limit or 12))
    elif args.slam:
        from speechllm_redundancy.data.manifest import read_manifest
        from speechllm_redundancy.features import cached_features

        utterances = read_manifest(args.manifest)[: args.limit]
        for directory in args.slam:
            model = SlamModel.from_pretrained(directory)
            store = cached_features(model.config.encoder, args.manifest, limit=args.limit,
                                    whisper_window=model.config.whisper_window)
            yield Path(model.config.llm).name, model, [store[u.id] for u in utterances]
    else:
        for name in args.llm:
            torch.manual_seed(0)
            model = SlamModel(SlamConfig(llm=name, encoder_dim=512))  # packaged decoder, random projector
            g = torch.Generator().manual_seed(0)
            lengths = torch.randint(150, 751, (args.limit,), generator=g).tolist()  # 3–15 s at 50 Hz
            yield name, model, [torch.randn(t, 512, generator=g) for t in lengths]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"],
                        help="packaged decoders to benchmark behind a random projector, without --slam "
                             "(default: smollm2-135m qwen2.5-coder-0.5b)")
    parser.add_argument("--slam", nargs="+", metavar="DIR",
                        help="saved SLAM model directories, one per decoder shape (with --manifest)")
    parser.add_argument("--manifest", help="the utterances every --slam model decodes")
    parser.add_argument("--limit", type=int, help="utterances (default 200 with --slam, 32 with a random "
                                                   "projector, 12 with --tiny)")
    parser.add_argument("--task", default="asr",
                        help="task whose prompt and stop ids the decoders use (default: asr)")
    parser.add_argument("--max-new-tokens", type=int, default=200,
                        help="cap on each row's generated tokens, besides its cap by input length "
                             "(default: 200)")
    parser.add_argument("--batch-size", type=int, default=DECODE_WIDTH,
                        help=f"the project decoder's batch (default {DECODE_WIDTH}: SlamModel.generate's)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (the test)")
    parser.add_argument("--precision", default="auto", choices=DECODE_PRECISIONS,
                        help="the decoders' products (decoding.resolve_decode_precision; default auto: bf16 on "
                             "a CPU that multiplies it natively); at bf16 the fp32 variant is timed beside")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.slam and not args.manifest:
        parser.error("--slam needs --manifest")
    # a random projector babbles to each row's cap (~150 tokens), which the no-cache loop re-runs quadratically
    args.limit = args.limit or (None if args.tiny else 200 if args.slam else 32)
    torch.set_num_threads(args.threads)
    speedups = {"no-cache": [], "generate": []}
    for name, model, feats in models(args):
        precision = resolve_decode_precision(args.precision, model.device)
        result = run(model, batches(model, feats, args.task, args.max_new_tokens, args.batch_size), name,
                     precision=precision)
        bad = first_mismatch(result)
        if bad is not None:
            print(f"{name}: the decoders' outputs differ at row {bad} (batch order):")
            for dec in DECODERS:
                print(f"  {dec:>10}: {result[dec][0][bad] if bad < len(result[dec][0]) else None}")
            return 1
        tokens = {dec: sum(map(len, ids)) for dec, (ids, _) in result.items()}
        rate = {dec: tokens[dec] / seconds for dec, (_, seconds) in result.items()}
        print(f"\n{name}: {len(feats)} utterances, identical outputs; {torch.get_num_threads()} CPU "
              f"threads, {precision} products, project batch {args.batch_size}")
        print(f"{'decoder':>10} | {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'project ×':>9}")
        for dec in result:
            print(f"{dec:>10} | {tokens[dec]:>7} {result[dec][1]:>8.2f} {rate[dec]:>9.1f} "
                  f"{rate['project'] / rate[dec]:>8.1f}×")
        for dec in (v for v in VARIANTS if v in result):
            differ = differing_rows(result, dec)
            print(f"{dec}: {len(differ)} of {len(feats)} rows differ from {precision} products'"
                  f"{f' (first at row {differ[0]}, batch order)' if differ else ''}; {precision} products "
                  f"decode {rate['project'] / rate[dec]:.1f}× as fast")
        for dec, ratios in speedups.items():
            ratios.append(rate["project"] / rate[dec])
    print(f"decoding speed-up: vs no-cache {min(speedups['no-cache']):.1f}×, "
          f"vs generate {min(speedups['generate']):.1f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
