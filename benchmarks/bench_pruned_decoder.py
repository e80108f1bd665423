"""Wall-clock and peak memory of a pruned vs unpruned decoder (prefill and greedy decoding), in one run.

Removes 10–50% of the decoder layers and compares each measured saving with the ideal (the removed
share of the decoder's FLOPs; the LM head is not pruned). Target: saving ≥ 0.9 × ideal.

    python benchmarks/bench_pruned_decoder.py                          # SmolLM2-135M shape, CPU
    python benchmarks/bench_pruned_decoder.py --shape llama-3.1-8b --device cuda --dtype bfloat16 \\
        --batch-size 8 --prompt-tokens 1024 --new-tokens 128           # the paper's 8B claim, on a GPU
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from speechllm_redundancy.angles import DTYPES
from speechllm_redundancy.efficiency import SHAPES, measure_efficiency, random_decoder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES),
                        help="random-init decoder of this real shape (default)")
    parser.add_argument("--model", help="instead, a real model: zoo name, hub id or local dir")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="dtype of the model's weights (default: float32)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5],
                        help="shares of the decoder layers to remove, one row each, besides the unpruned "
                             "row (default: 0.1 0.2 0.3 0.4 0.5)")
    parser.add_argument("--batch-size", type=int, default=1, help="prompts per batch (default: 1)")
    parser.add_argument("--prompt-tokens", type=int, default=256,
                        help="length of the random prompt that is prefilled (default: 256)")
    parser.add_argument("--new-tokens", type=int, default=32,
                        help="tokens greedily decoded after the prompt, at least 2 (default: 32)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of each row; the median counts (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.model:
        from speechllm_redundancy.zoo import load_causal_lm

        model, name = load_causal_lm(args.model, dtype)[0].to(device).eval(), args.model
    else:
        model = random_decoder(args.shape, dtype=dtype, device=device)
        name = f"{args.shape} shape, random init"
    print(f"model: {name}; device {device} ({torch.get_num_threads()} CPU threads); dtype {args.dtype}; "
          f"batch {args.batch_size}; prompt {args.prompt_tokens} tokens; {args.new_tokens} new tokens; "
          f"median of {args.repeats} repeats")
    frame = measure_efficiency(model, [0.0, *args.fractions], batch_size=args.batch_size,
                               prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                               repeats=args.repeats, device=device)
    gib = 2**30
    header = (f"{'removed':>9} | {'prefill s':>9} {'saving':>7} {'ideal':>6} {'ratio':>6} | "
              f"{'decode s':>8} {'tok/s':>7} {'saving':>7} {'ideal':>6} {'ratio':>6} | "
              f"{'params GiB':>10} {'KV GiB':>7} {'peak GiB':>8} {'peak/base':>9}")
    print(header)
    print("-" * len(header))
    base_peak = frame.loc[0, "decode_peak_bytes"]
    for _, r in frame.iterrows():
        peak = r["decode_peak_bytes"]
        known = not pd.isna(peak)  # None / NaN where memory was not measurable
        peak_s = f"{peak / gib:>8.3f}" if known else f"{'n/a':>8}"
        rel = f"{peak / base_peak:>9.2f}" if known and base_peak else f"{'n/a':>9}"
        print(f"{int(r['removed']):>3}/{int(r['removed'] + r['layers']):<2} {r['fraction']:>3.0%} | "
              f"{r['prefill_s']:>9.3f} {r['prefill_saving']:>7.1%} {r['ideal_prefill_saving']:>6.1%} "
              f"{r['prefill_vs_ideal']:>6.2f} | {r['decode_s']:>8.3f} {r['decode_tokens_per_s']:>7.1f} "
              f"{r['decode_saving']:>7.1%} {r['ideal_decode_saving']:>6.1%} {r['decode_vs_ideal']:>6.2f} | "
              f"{r['parameter_bytes'] / gib:>10.3f} {r['kv_cache_bytes'] / gib:>7.3f} {peak_s} {rel}")
    pruned = frame[frame["removed"] > 0]
    print(f"\nmeasured saving / ideal (target >= 0.90): prefill mean {pruned['prefill_vs_ideal'].mean():.2f} "
          f"(min {pruned['prefill_vs_ideal'].min():.2f}), decode mean {pruned['decode_vs_ideal'].mean():.2f} "
          f"(min {pruned['decode_vs_ideal'].min():.2f})")
    print(f"the same on process CPU time (steadier on a shared CPU): prefill mean "
          f"{pruned['prefill_cpu_vs_ideal'].mean():.2f}, "
          f"decode mean {pruned['decode_cpu_vs_ideal'].mean():.2f}")
    print(f"memory: {frame.loc[0, 'memory_method']}; peak = parameters + peak increase during decoding")


if __name__ == "__main__":
    main()
