"""Fused LoRA linear in Triton: y = x Wᵀ + s·(x Aᵀ) Bᵀ (+ bias), fp32 accumulation.

One kernel, not the usual shrink/expand pair: inside the K loop the x tile loaded for the base product also feeds
the rank-r shrink (t += x·Aᵀ, t is (BLOCK_M, r) in registers: 16x64 fp32 = 4 KiB), and the expand t·Bᵀ is added in
the epilogue before the single store of y (vLLM's fused MoE+LoRA design). Multi-adapter (Punica/S-LoRA): each row
carries an adapter id (-1 = base only); its A and B rows are gathered per row, so one tile may mix adapters.
On machines without a GPU the tests run this under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from duomem_fast.kernels.checks import check_lora_linear

# The interpreter (triton 3.9) returns garbage for 16-bit tl.dot (bf16 bits read as integers, errors ~1e10), so under
# TRITON_INTERPRET=1 the tiles are upcast to fp32 before the dot; on a GPU 16-bit tiles go to the tensor cores.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _lora_linear_kernel(
    x_ptr, w_ptr, a_ptr, b_ptr, bias_ptr, ids_ptr, scales_ptr, y_ptr,
    M, N, K, R,
    sxm, sxk, swn, swk, sa_ad, sar, sak, sb_ad, sbn, sbr, sym, syn,
    HAS_LORA: tl.constexpr, MULTI: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rr = tl.arange(0, BLOCK_R)
    rk = tl.arange(0, BLOCK_K)
    m_ok, n_ok, r_ok = rm < M, rn < N, rr < R
    ids = tl.load(ids_ptr + rm, mask=m_ok, other=-1) if MULTI else tl.zeros((BLOCK_M,), dtype=tl.int64)
    use = m_ok & (ids >= 0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    t = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + rk) < K
        xt = tl.load(x_ptr + rm[:, None] * sxm + (k0 + rk)[None, :] * sxk, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        wt = tl.load(w_ptr + rn[None, :] * swn + (k0 + rk)[:, None] * swk, mask=n_ok[None, :] & k_ok[:, None], other=0.0)
        if DOT_FP32:
            acc += tl.dot(xt.to(tl.float32), wt.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(xt, wt.to(xt.dtype))
        if HAS_LORA:  # the shrink reuses the x tile already in registers
            if MULTI:  # per-row gather of A[id_m]: (BLOCK_M, BLOCK_R, BLOCK_K)
                a3 = tl.load(a_ptr + ids[:, None, None] * sa_ad + rr[None, :, None] * sar + (k0 + rk)[None, None, :] * sak,
                             mask=use[:, None, None] & r_ok[None, :, None] & k_ok[None, None, :], other=0.0)
                t += tl.sum(xt.to(tl.float32)[:, None, :] * a3.to(tl.float32), axis=2)
            else:
                at = tl.load(a_ptr + rr[None, :] * sar + (k0 + rk)[:, None] * sak, mask=r_ok[None, :] & k_ok[:, None], other=0.0)
                t += tl.dot(xt.to(tl.float32), at.to(tl.float32), input_precision="ieee")
    if HAS_LORA:  # expand in the epilogue, scaled per row
        s = tl.load(scales_ptr + tl.where(use, ids, 0), mask=use, other=0.0)
        if MULTI:
            b3 = tl.load(b_ptr + ids[:, None, None] * sb_ad + rn[None, :, None] * sbn + rr[None, None, :] * sbr,
                         mask=use[:, None, None] & n_ok[None, :, None] & r_ok[None, None, :], other=0.0)
            delta = tl.sum(t[:, None, :] * b3.to(tl.float32), axis=2)
        else:
            bt = tl.load(b_ptr + rn[None, :] * sbn + rr[:, None] * sbr, mask=n_ok[None, :] & r_ok[:, None], other=0.0)
            delta = tl.dot(t, bt.to(tl.float32), input_precision="ieee")
        acc += s[:, None] * delta
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * sym + rn[None, :] * syn, acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def lora_linear(x: Tensor, weight: Tensor, lora_a: Tensor | None = None, lora_b: Tensor | None = None,
                scale: float | Tensor = 1.0, bias: Tensor | None = None, adapter_ids: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + s·(x Aᵀ) Bᵀ (+ bias), fp32 accumulation, output in x.dtype.

    x: (..., K); weight: (N, K); single adapter lora_a (r, K), lora_b (N, r), scale a float;
    multi-adapter lora_a (n, r, K), lora_b (n, N, r), scale a float or (n,), adapter_ids (M,) with -1 = base only.
    Returns (..., N).
    """
    check_lora_linear(x, weight, lora_a, lora_b, bias, adapter_ids)
    N, K = weight.shape
    x2 = x.reshape(-1, K)
    M = x2.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    has_lora, multi = lora_a is not None, adapter_ids is not None
    a = lora_a if has_lora else x2  # dummies keep the signature fixed; HAS_LORA=False never reads them
    b = lora_b if has_lora else x2
    r = a.shape[-2] if has_lora else 0
    n_ad = a.shape[0] if multi else 1
    scales = torch.as_tensor(scale, dtype=torch.float32, device=x.device).reshape(-1).expand(n_ad).contiguous()
    ids = adapter_ids.reshape(-1).to(device=x.device, dtype=torch.int64) if multi else y
    sa = (a.stride(0), a.stride(1), a.stride(2)) if multi else (0, a.stride(0), a.stride(1))
    sb = (b.stride(0), b.stride(1), b.stride(2)) if multi else (0, b.stride(0), b.stride(1))
    dot_fp32 = x.dtype == torch.float32 or weight.dtype != x.dtype or INTERPRET
    grid = (triton.cdiv(M, 16), triton.cdiv(N, 32))
    _lora_linear_kernel[grid](
        x2, weight, a, b, bias if bias is not None else y, ids, scales, y,
        M, N, K, r,
        x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1), *sa, *sb, y.stride(0), y.stride(1),
        HAS_LORA=has_lora, MULTI=multi, HAS_BIAS=bias is not None, DOT_FP32=dot_fp32,
        BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, BLOCK_R=max(16, triton.next_power_of_2(max(r, 1))),
    )
    return y.reshape(*x.shape[:-1], N)
