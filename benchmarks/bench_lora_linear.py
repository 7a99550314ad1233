"""Benchmark lora_linear on CPU: ours (C++ via duomem_fast.ops) against torch unfused, torch with the adapter merged,
and peft's LoRA `Linear` forward, on the default model's shapes (and its fused q/k/v, gate/up) and Qwen3-4B's.

    python benchmarks/bench_lora_linear.py [--quick] [--dtype float32|bfloat16] [--mode hot|cold|both] [--ms M ...]
                                           [--prefetch auto|always|never] [--gguf] [--json runs/bench_lora_linear.json]

Two cache regimes, applied alike to every implementation:
  hot   the same W/A/B every call: weights up to a few MB sit in L2/L3, so the kernel is compute/L3-bound;
  cold  calls rotate through enough distinct copies of W/A/B (and of the merged W, and of peft's layer) to cover four
        times the last-level cache read from the machine (timing.cold_copies): each call streams its weights from DRAM, as a decode step does
        for every layer of a 540 MB model. x stays hot (the previous layer just wrote it).
The floor: W, A and B read once with nothing computed (timing.read_bytes), rotated like the rest: no implementation
that reads those bytes can be faster, so max_vs_* (the baseline's p10 over the floor's) is the best ratio any could
reach against it, and pct_floor is ours' time at the floor's rate (100 = as fast as reading the bytes).
Times are medians (us); vs_* ratios compare p10 times (each side at its least-disturbed: on a shared machine the
median mostly measures the neighbours). Napkin math: bytes streamed (W + A + B) / p10 time in GB/s, and % of the
read bandwidth measured in the same process with the same thread count (hot rows can exceed 100%: they read L2/L3).
x_M1 is ours at this M over ours at M=1 (same shape, same regime). --prefetch pins the C++ kernel's next-block prefetch
(default auto: by reuse distance, csrc/weight_reuse.h), to see what it gains cold and costs hot.
--gguf: W as the default model's GGUF has it (every value on the Q4_1 grid; Q8_0 for lm_head's shape), for every
implementation alike, plus "blocks": ours reading W in its exact blocks (duomem_fast/model/blocks.py), the same
values, so the same products; blocks_* columns compare it, its GB/s counting the bytes it reads.
Also collected by `pytest benchmarks/ --benchmark-only` through the test_* functions at the bottom.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from duomem_fast import ops
from duomem_fast.timing import (bench, cold_copies, llc_bytes, measure_bandwidth, print_table, read_bytes, rotate,
                                write_json)

# (K, N): q/o 576x576, k/v 576->192, gate/up 576->1536, down 1536->576; the engine's fused qkv (960) and gate_up
# (3072); lm_head 576->49152 (113 MB fp32: the largest, DRAM-bound weight of the default model).
DEFAULT_SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 960), (576, 3072), (576, 49152)]
QWEN_SHAPES = [(2560, 2560), (2560, 9728), (9728, 2560)]
MS, RANKS = [1, 4, 16, 64], [8, 16, 64]
MODES = ("hot", "cold")


def make_case(K: int, N: int, M: int, r: int, dtype: torch.dtype, copies: int = 1, gguf: bool = False) -> dict:
    """x (M, K) and `copies` distinct weight sets {w, a, b, merged, peft (, blocks)}, each in its own memory."""
    x = torch.randn(M, K, dtype=dtype)
    w = (torch.randn(N, K) / K ** 0.5).to(dtype)
    if gguf:
        from duomem_fast.model.testing import snap_q4_1, snap_q8_0
        w = (snap_q8_0 if N > 8192 else snap_q4_1)(w.float()).to(dtype)
    a, b = (torch.randn(r, K) / K ** 0.5).to(dtype), (torch.randn(N, r) / r ** 0.5).to(dtype)
    merged = (w.float() + 2.0 * b.float() @ a.float()).to(dtype)
    sets = []
    for i in range(copies):
        ws, as_, bs = (t.clone() if i else t for t in (w, a, b))
        sets.append(dict(w=ws, a=as_, b=bs, merged=merged.clone() if i else merged, peft=_peft_linear(ws, as_, bs, r)))
        if gguf:
            from duomem_fast.model.blocks import pack_blocks
            sets[-1]["blocks"] = pack_blocks(ws.float())
    return dict(x=x, sets=sets)


def _peft_linear(w, a, b, r):
    """peft's LoRA Linear over these very tensors (no copy: a cold rotation reaches peft's weights too)."""
    try:
        from peft import LoraConfig
        from peft.tuners.lora import Linear
    except ImportError:
        return None
    base = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype, device="meta")
    base.weight = torch.nn.Parameter(w, requires_grad=False)
    layer = Linear(base, "default", config=LoraConfig(r=r, lora_alpha=2 * r), r=r, lora_alpha=2 * r).to(w.dtype)
    layer.lora_A["default"].weight = torch.nn.Parameter(a, requires_grad=False)
    layer.lora_B["default"].weight = torch.nn.Parameter(b, requires_grad=False)
    return layer.eval()


def _fns(x, s: dict) -> dict:
    w, a, b = s["w"], s["a"], s["b"]
    fns = {
        "ours": lambda: ops.lora_linear(x, w, a, b, 2.0),
        "unfused": lambda: F.linear(x, w) + 2.0 * F.linear(F.linear(x, a), b),
        "merged": lambda: F.linear(x, s["merged"]),
    }
    if s["peft"] is not None:
        fns["peft"] = lambda: s["peft"](x)
    if ops.HAS_NATIVE:  # the floor: W, A and B read once, nothing computed (timing.read_bytes), the faster of
        # no look-ahead and 2 KiB (in process, cold, 1 thread: 1536->576 253 against 216 us, 576->576 103 / 101)
        fns["floor"] = lambda: read_bytes([w, a, b])
        fns["floor_ahead"] = lambda: read_bytes([w, a, b], ahead=2048)
    if s.get("blocks") is not None:
        fns["blocks"] = lambda: ops.lora_linear(x, s["blocks"], a, b, 2.0)
    return fns


def impls(c: dict) -> dict:
    """name -> one callable; with several weight sets each call moves on to the next set."""
    per_set = [_fns(c["x"], s) for s in c["sets"]]
    return {name: rotate([f[name] for f in per_set]) for name in per_set[0]}


def run(shapes, ms, ranks, dtype, reps: int, modes=MODES, rounds: int = 1, gguf: bool = False) -> list[dict]:
    bw, llc = measure_bandwidth(), llc_bytes()
    print(f"measured read bandwidth: {bw / 1e9:.1f} GB/s ({torch.get_num_threads()} threads); last-level cache "
          f"{llc >> 20} MiB; backend {ops.backend('cpu')}; dtype {dtype}", flush=True)
    rows = []
    with torch.inference_mode():
        for mode in modes:
            print(f"\n{mode}:", flush=True)
            first = len(rows)
            for K, N in shapes:
                for r in ranks:
                    for M in ms:
                        rows.append(_one(K, N, M, r, dtype, bw, llc, reps, mode, rows, rounds, gguf))
                        if len(rows) == first + 1:
                            print_table([rows[-1]], _columns(rows[-1]))
                        else:
                            print(_line(rows[-1]), flush=True)
    return rows


def _one(K, N, M, r, dtype, bw, llc, reps, mode, done, rounds: int = 1, gguf: bool = False) -> dict:
    nbytes = (N * K + r * (K + N)) * dtype.itemsize
    copies = cold_copies(nbytes, llc) if mode == "cold" else 1
    c = make_case(K, N, M, r, dtype, copies, gguf)
    reps = max(5, min(reps, int(reps * 2e7 / nbytes)))  # fewer reps for 100 MB weights: same wall time per row
    t = {}
    for _ in range(rounds):  # implementations interleaved, each keeping its best round (p10): neighbours come and go
        for name, fn in impls(c).items():
            s = bench(fn, warmup=2 * copies, reps=reps)
            t[name] = s if name not in t or s.p10 < t[name].p10 else t[name]
    ours, best = t["ours"].median, t["ours"].p10
    row = dict(mode=mode, K=K, N=N, M=M, r=r, copies=copies, ours_us=ours * 1e6, ours_p10_us=best * 1e6)
    for name in ("unfused", "merged", "peft"):
        row[f"{name}_us"] = t[name].median * 1e6 if name in t else float("nan")
    for name in ("unfused", "merged"):  # p10 ratios: both sides at their least-disturbed, robust on a shared box
        row[f"vs_{name}"] = t[name].p10 / best
    row.update(GBps=nbytes / best / 1e9, pct_bw=100 * nbytes / best / bw, probe_GBps=bw / 1e9)
    floor = min(t["floor"].p10, t["floor_ahead"].p10) if "floor" in t else float("nan")
    row.update(floor_us=floor * 1e6, pct_floor=100 * floor / best, max_vs_unfused=t["unfused"].p10 / floor,
               max_vs_merged=t["merged"].p10 / floor)
    m1 = [d for d in done if (d["mode"], d["K"], d["N"], d["r"], d["M"]) == (mode, K, N, r, 1)]
    row["x_M1"] = best / (m1[0]["ours_p10_us"] * 1e-6) if m1 else float("nan")
    if "blocks" in t:
        blk = t["blocks"].p10
        row.update(blocks_p10_us=blk * 1e6, blocks_vs_unfused=t["unfused"].p10 / blk,
                   blocks_vs_merged=t["merged"].p10 / blk,
                   blocks_GBps=(c["sets"][0]["blocks"].nbytes + r * (K + N) * dtype.itemsize) / blk / 1e9)
    return row


COLUMNS = ["mode", "K", "N", "M", "r", "copies", "ours_us", "ours_p10_us", "unfused_us", "merged_us", "peft_us",
           "vs_unfused", "vs_merged", "GBps", "pct_bw", "x_M1", "floor_us", "pct_floor", "max_vs_unfused",
           "max_vs_merged"]


BLOCK_COLUMNS = ["blocks_p10_us", "blocks_vs_unfused", "blocks_vs_merged", "blocks_GBps"]


def _columns(row: dict) -> list[str]:
    return COLUMNS + (BLOCK_COLUMNS if "blocks_p10_us" in row else [])


def _line(row: dict) -> str:
    return "  ".join(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in _columns(row))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="default-model shapes, r=16, M in {1, 4}")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--mode", default="both", choices=["hot", "cold", "both"], help="cache regime (default both)")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds per row, best p10 kept (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads first (default: torch's)")
    p.add_argument("--prefetch", default="auto", choices=["auto", "always", "never"],
                   help="C++ lora_linear's next-block prefetch (default auto)")
    p.add_argument("--gguf", action="store_true",
                   help="W on the default model's GGUF grid (Q4_1; Q8_0 for lm_head), plus ours over its blocks")
    p.add_argument("--ms", type=int, nargs="+", default=None, metavar="M",
                   help="rows of x to run (default: 1 4 with --quick, else 1 4 16 64); e.g. --ms 64 for an append")
    p.add_argument("--json", default=None, help="write rows + machine info here")
    args = p.parse_args(argv)
    if args.ms and min(args.ms) < 1:
        p.error(f"--ms must be positive, got {args.ms}")
    if args.gguf and args.dtype != "float32":
        p.error("--gguf packs fp32 matrices: use it with --dtype float32")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.prefetch != "auto":  # auto is the build's default (and builds before the switch have only that)
        ops._C.set_lora_prefetch(args.prefetch)
    dtype = getattr(torch, args.dtype)
    modes = MODES if args.mode == "both" else (args.mode,)
    if args.quick:
        rows = run(DEFAULT_SHAPES, args.ms or [1, 4], [16], dtype, args.reps, modes, args.rounds, args.gguf)
    else:
        rows = run(DEFAULT_SHAPES + QWEN_SHAPES, args.ms or MS, RANKS, dtype, args.reps, modes, args.rounds, args.gguf)
    for mode in modes:
        print(f"\n{mode}:")
        print_table([r for r in rows if r["mode"] == mode], _columns(rows[0]))
    if args.json:
        # bandwidth_Bps: a probe at the end; each row's pct_bw is of the probe at the start (its probe_GBps)
        write_json(args.json, {"bench": "lora_linear", "dtype": args.dtype, "bandwidth_Bps": measure_bandwidth(),
                               "llc_bytes": llc_bytes(), "backend": ops.backend("cpu"), "modes": list(modes),
                               "prefetch": args.prefetch, "rounds": args.rounds, "gguf": args.gguf,
                               "rows": rows})
    return 0


# pytest-benchmark entry points (pytest benchmarks/ --benchmark-only): one default-model shape per implementation.
def _bench_case(benchmark, name: str, M: int):
    import pytest
    c = make_case(576, 1536, M, 16, torch.float32)
    fn = impls(c).get(name)
    if fn is None:
        pytest.skip(f"{name} unavailable (peft not installed)")
    with torch.inference_mode():
        benchmark(fn)


def test_lora_linear_ours_m1(benchmark):
    _bench_case(benchmark, "ours", 1)


def test_lora_linear_unfused_m1(benchmark):
    _bench_case(benchmark, "unfused", 1)


def test_lora_linear_merged_m1(benchmark):
    _bench_case(benchmark, "merged", 1)


def test_lora_linear_peft_m1(benchmark):
    _bench_case(benchmark, "peft", 1)


def test_lora_linear_ours_m4(benchmark):
    _bench_case(benchmark, "ours", 4)


if __name__ == "__main__":
    sys.exit(main())
