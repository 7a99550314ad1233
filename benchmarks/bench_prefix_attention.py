"""Benchmark shared-prefix attention on CPU: ours (duomem_fast.ops.prefix_attention) against B separate attentions
over each sequence's own [prefix; suffix] KV (a cache without sharing) and one batched SDPA call over B materialised
copies, on the default model's heads (Hq=9, Hkv=3, D=64).

    python benchmarks/bench_prefix_attention.py [--quick] [--json runs/bench_prefix_attention.json]

Times are medians (us); vs_* ratios compare p10 times (robust on a shared machine). Napkin math: bytes of KV each
method must read (ours: prefix once + B suffixes; the others: B·(prefix + suffix)),
and GB/s for ours against the read bandwidth measured in the same process.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from duomem_fast import ops
from duomem_fast.timing import bench, measure_bandwidth, print_table, write_json

HQ, HKV, D = 9, 3, 64
PREFIXES, BATCHES, SUFFIXES = [512, 1024, 2048, 4096], [1, 4, 16], [1, 16, 64]


def make_case(P: int, B: int, S: int, T: int = 1) -> dict:
    q = torch.randn(B, T, HQ, D)
    kp, vp = torch.randn(P, HKV, D), torch.randn(P, HKV, D)
    ks, vs = torch.randn(B, S, HKV, D), torch.randn(B, S, HKV, D)
    lens = torch.full((B,), S)
    # Unshared cache: every sequence owns a copy of prefix + suffix, laid out for SDPA (1, Hkv, L, D).
    own_k = [torch.cat([kp, ks[b]]).transpose(0, 1).unsqueeze(0).contiguous() for b in range(B)]
    own_v = [torch.cat([vp, vs[b]]).transpose(0, 1).unsqueeze(0).contiguous() for b in range(B)]
    return dict(q=q, kp=kp, vp=vp, ks=ks, vs=vs, lens=lens, own_k=own_k, own_v=own_v,
                k_all=torch.cat(own_k), v_all=torch.cat(own_v), T=T)


def impls(c: dict) -> dict:
    q, T = c["q"], c["T"]
    qh = q.transpose(1, 2)  # (B, Hq, T, D)
    L = c["k_all"].shape[2]
    mask = torch.ones(T, L, dtype=torch.bool).tril(L - T)  # query t sees everything up to its own position

    def separate():
        return [F.scaled_dot_product_attention(qh[b:b + 1], c["own_k"][b], c["own_v"][b], attn_mask=mask,
                                               enable_gqa=True) for b in range(q.shape[0])]
    return {
        "ours": lambda: ops.prefix_attention(q, c["kp"], c["vp"], c["ks"], c["vs"], c["lens"]),
        "separate": separate,
        "sdpa_batched": lambda: F.scaled_dot_product_attention(qh, c["k_all"], c["v_all"], attn_mask=mask,
                                                               enable_gqa=True),
    }


def _one(P, B, S, T, bw, reps) -> dict:
    c = make_case(P, B, S, T)
    t = {name: bench(fn, warmup=2, reps=reps) for name, fn in impls(c).items()}
    kv_ours = 2 * (P + B * S) * HKV * D * 4
    ours, best = t["ours"].median, t["ours"].p10
    return dict(P=P, B=B, S=S, T=T, ours_us=ours * 1e6, ours_p10_us=best * 1e6,
                separate_us=t["separate"].median * 1e6, sdpa_batched_us=t["sdpa_batched"].median * 1e6,
                vs_separate=t["separate"].p10 / best, vs_sdpa=t["sdpa_batched"].p10 / best,
                GBps=kv_ours / best / 1e9, pct_bw=100 * kv_ours / best / bw,
                probe_GBps=bw / 1e9)


COLUMNS = ["P", "B", "S", "T", "ours_us", "ours_p10_us", "separate_us", "sdpa_batched_us", "vs_separate", "vs_sdpa",
           "GBps", "pct_bw"]


def run(prefixes, batches, suffixes, T: int, reps: int) -> list[dict]:
    bw = measure_bandwidth()
    print(f"measured read bandwidth: {bw / 1e9:.1f} GB/s ({torch.get_num_threads()} threads); backend "
          f"{ops.backend('cpu')}", flush=True)
    rows = []
    with torch.inference_mode():
        for P in prefixes:
            for B in batches:
                for S in suffixes:
                    rows.append(_one(P, B, S, T, bw, reps))
                    print("  ".join(f"{rows[-1][k]:.4g}" if isinstance(rows[-1][k], float) else str(rows[-1][k])
                                    for k in COLUMNS), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="P=2048, B in {1, 16}, S=16")
    p.add_argument("--T", type=int, default=1, help="query tokens per sequence (1 = decode)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads first (default: torch's)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        rows = run([2048], [1, 16], [16], args.T, args.reps)
    else:
        rows = run(PREFIXES, BATCHES, SUFFIXES, args.T, args.reps)
    print()
    print_table(rows, COLUMNS)
    if args.json:
        # bandwidth_Bps: a probe at the end; each row's pct_bw is of the probe at the start (its probe_GBps)
        write_json(args.json, {"bench": "prefix_attention", "heads": [HQ, HKV, D], "backend": ops.backend("cpu"),
                               "bandwidth_Bps": measure_bandwidth(), "rows": rows})
    return 0


def _bench_case(benchmark, name: str):
    c = make_case(2048, 16, 16)
    with torch.inference_mode():
        benchmark(impls(c)[name])


def test_prefix_attention_ours_b16_p2048(benchmark):
    _bench_case(benchmark, "ours")


def test_prefix_attention_separate_b16_p2048(benchmark):
    _bench_case(benchmark, "separate")


def test_prefix_attention_sdpa_b16_p2048(benchmark):
    _bench_case(benchmark, "sdpa_batched")


if __name__ == "__main__":
    sys.exit(main())
