"""Per-call cost of duomem_fast.ops.lora_linear's dispatcher on CPU: the public op against calling the C++ op directly
(pybind `_C.lora_linear_cpu`, and `torch.ops.duomem.lora_linear` through torch's dispatcher), with torch's merged
F.linear beside them, on a decode-sized shape (default 576->192, M=1, r=16, fp32, weights hot).

    python benchmarks/bench_lora_linear_dispatch.py [--K 576 --N 192] [--rounds 15] [--json runs/dispatch.json]

Each round times `--calls` back-to-back calls of every variant in turn (interleaved: the neighbours on a shared box
hit all alike); the table gives the best and the median round in us per call, and the best over `_C` directly, i.e.
the dispatcher's own cost.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from duomem_fast import ops
from duomem_fast.timing import print_table, write_json


def variants(K: int, N: int, r: int) -> dict:
    x, w = torch.randn(1, K), torch.randn(N, K) / K ** 0.5
    a, b = torch.randn(r, K) / K ** 0.5, torch.randn(N, r) / r ** 0.5
    return {
        "ops.lora_linear": lambda: ops.lora_linear(x, w, a, b, 2.0),
        "_C.lora_linear_cpu": lambda: ops._C.lora_linear_cpu(x, w, a, b, 2.0, None, None, None),
        "torch.ops.duomem.lora_linear": lambda: torch.ops.duomem.lora_linear(x, w, a, b, 2.0, None, None, None),
        "F.linear (merged)": lambda: F.linear(x, w),
    }


def run(K: int, N: int, r: int, rounds: int, calls: int) -> list[dict]:
    fns = variants(K, N, r)
    per_call: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():  # warm-up; the first ops call also resolves the backend (and logs it)
            for _ in range(200):
                fn()
        for _ in range(rounds):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                per_call[name].append((time.perf_counter() - t0) / calls * 1e6)
    direct = min(per_call["_C.lora_linear_cpu"])
    return [dict(variant=name, best_us=min(v), median_us=statistics.median(v), over_direct_us=min(v) - direct)
            for name, v in per_call.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--K", type=int, default=576)
    p.add_argument("--N", type=int, default=192)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=5000, help="calls per variant per round")
    p.add_argument("--json", default=None, help="write rows + machine info here")
    args = p.parse_args(argv)
    if not ops.HAS_NATIVE:
        p.error("needs the native build (duomem_fast._C)")
    torch.set_num_threads(1)
    rows = run(args.K, args.N, args.r, args.rounds, args.calls)
    print(f"{args.K}->{args.N}, M=1, r={args.r}, fp32, 1 thread; us per call over {args.rounds} interleaved rounds")
    print_table(rows)
    if args.json:
        write_json(args.json, {"bench": "lora_linear_dispatch", "K": args.K, "N": args.N, "r": args.r,
                               "rounds": args.rounds, "calls": args.calls, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
