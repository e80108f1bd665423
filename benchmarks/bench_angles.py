"""Cost of measuring angular distances, side by side with the alternatives, in one run.

For each sequence length: a plain forward of the decoder stack (what any forward costs), the same
forward with a causal-LM head (what a naive "run the model" costs), ``measure_angles`` (hooks gathering
the last token of every layer; also with Block Influence), and the ``output_hidden_states`` approach
(keep every layer's all-token states, then pick the last token). Prints throughput and peak-memory
ratios with the targets: angles ≥ 0.9× the plain forward's throughput; angles' peak memory ≤ 1/3 of
output_hidden_states' at 512 tokens.

    python benchmarks/bench_angles.py                         # SmolLM2-135M shape, random init, CPU
    python benchmarks/bench_angles.py --shape qwen2.5-1.5b --device cuda --dtype bfloat16 --batch-size 8
    python benchmarks/bench_angles.py --model smollm2-135m    # real weights through the model zoo
"""

from __future__ import annotations

import argparse
import time

import torch

from speechllm_redundancy.angles import DTYPES, last_token_index, measure_angles
from speechllm_redundancy.efficiency import SHAPES, PeakMemory, random_decoder
from speechllm_redundancy.layers import decoder_stack


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(wall seconds, process CPU seconds, peak bytes above the level before the call)."""
    sync(device)
    with PeakMemory(device) as mem:
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    timed.method = mem.method
    return seconds, cpu_seconds, mem.bytes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES),
                        help="random-init decoder of this real shape (default)")
    parser.add_argument("--model", help="instead, a real model: zoo name, hub id or local dir")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="dtype of the model's weights (default: float32)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048],
                        help="sequence lengths in tokens, one table row each (default: 128 512 2048)")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences per batch (default: 1)")
    parser.add_argument("--batches", type=int, default=2,
                        help="batches per measurement (a stream, as in use)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved rounds of every method; the best time counts (default: 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.model:
        from speechllm_redundancy.zoo import load_causal_lm

        model = load_causal_lm(args.model, dtype)[0].to(device).eval()
        name = args.model
    else:
        model = random_decoder(args.shape, dtype=dtype, device=device)
        name = f"{args.shape} shape, random init"
    stack = decoder_stack(model)
    vocab = model.get_input_embeddings().weight.shape[0]
    print(f"model: {name}; {len(stack.layers)} layers; device {device} "
          f"({torch.get_num_threads()} CPU threads); dtype {args.dtype}; "
          f"{args.batches} batches of {args.batch_size}; best of {args.repeats}")

    header = (f"{'tokens':>6} | {'stack fwd s':>11} {'LM fwd s':>9} {'angles s':>9} {'hidden s':>9} | "
              f"{'angles/stack thr':>16} {'(CPU time)':>10} {'angles/LM thr':>13} | {'angles MiB':>10} "
              f"{'hidden MiB':>10} {'stack MiB':>9} | {'mem angles/hidden':>17} {'extra mem ratio':>15}")
    print(header)
    print("-" * len(header))
    results = {}
    for length in args.lengths:
        gen = torch.Generator().manual_seed(length)
        ids = torch.randint(0, vocab, (args.batch_size, length), generator=gen).to(device)
        mask = torch.ones_like(ids)
        batch = {"input_ids": ids, "attention_mask": mask}

        stream = [batch] * args.batches  # every method processes the same stream of batches

        def plain(ids=ids, mask=mask, stream=stream):
            with torch.inference_mode():
                for _ in stream:
                    stack(input_ids=ids, attention_mask=mask, use_cache=False)

        def with_head(ids=ids, mask=mask, stream=stream):
            with torch.inference_mode():
                for _ in stream:
                    model(input_ids=ids, attention_mask=mask, use_cache=False)

        def angles(stream=stream):
            measure_angles(model, stream, progress=False)

        def angles_bi(stream=stream):
            measure_angles(model, stream, progress=False, block_influence=True)

        def hidden(ids=ids, mask=mask, stream=stream):
            with torch.inference_mode():
                for _ in stream:
                    states = stack(input_ids=ids, attention_mask=mask, use_cache=False,
                                   output_hidden_states=True).hidden_states
                    rows = torch.arange(ids.shape[0], device=device)
                    last = last_token_index(mask)
                    torch.stack([h[rows, last] for h in states], dim=1).double()
                    del states  # before the next batch, or two batches' states would coexist

        methods = {"plain": plain, "head": with_head, "angles": angles, "angles_bi": angles_bi,
                   "hidden": hidden}
        wall = {k: float("inf") for k in methods}
        cpu = dict(wall)
        mem = {k: 0 for k in methods}
        angles()  # warm-up
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all alike
            for key, fn in methods.items():
                seconds, cpu_seconds, peak = timed(fn, device)
                wall[key], cpu[key] = min(wall[key], seconds), min(cpu[key], cpu_seconds)
                mem[key] = max(mem[key], peak or 0)
        t, c, m = wall, cpu, {k: v / 2**20 for k, v in mem.items()}
        nan = float("nan")
        mem_ratio = m["angles"] / m["hidden"] if m["hidden"] else nan
        # memory each method needs beyond the plain forward's own working set
        extra = (m["angles"] - m["plain"]) / (m["hidden"] - m["plain"]) if m["hidden"] > m["plain"] else nan
        results[length] = (t["plain"] / t["angles"], c["plain"] / c["angles"], mem_ratio, extra,
                           t["plain"] / t["angles_bi"])
        print(f"{length:>6} | {t['plain']:>11.3f} {t['head']:>9.3f} {t['angles']:>9.3f} "
              f"{t['hidden']:>9.3f} | {t['plain'] / t['angles']:>16.2f} {c['plain'] / c['angles']:>10.2f} "
              f"{t['head'] / t['angles']:>13.2f} | {m['angles']:>10.1f} {m['hidden']:>10.1f} "
              f"{m['plain']:>9.1f} | {mem_ratio:>17.2f} {extra:>15.3f}")
    print("\nthroughput of angle measurement relative to a plain decoder forward (target >= 0.90): "
          + ", ".join(f"{n}: {r[0]:.2f} wall / {r[1]:.2f} CPU time" for n, r in results.items()))
    print("the same with ShortGPT Block Influence accumulated in the pass (block_influence=True): "
          + ", ".join(f"{n}: {r[4]:.2f}" for n, r in results.items()))
    print("peak memory of angle measurement relative to output_hidden_states (target <= 0.33 at 512): "
          + ", ".join(f"{n}: {r[2]:.2f}" for n, r in results.items()))
    print("memory beyond a plain forward's own working set, angles vs output_hidden_states: "
          + ", ".join(f"{n}: {r[3]:.3f}" for n, r in results.items()))
    print(f"memory: {timed.method} (peak above the level before each call; "
          "the same weights are resident in all)")


if __name__ == "__main__":
    main()
