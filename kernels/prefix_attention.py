"""Shared-prefix (cascade) attention in Triton: one prefix KV read once for all sequences, plus per-sequence suffixes.

Two launches of one flash-attention kernel and a merge:
  - prefix pass: grid (row blocks of all B·T·G query rows of a KV head, Hkv). The rows of a block come from different
    sequences but share the prefix K/V tiles, so each prefix tile is loaded once per block of 16 rows instead of once
    per sequence (a GEMM, not B GEMVs; Hydragen).
  - suffix pass: grid (row blocks of one sequence's T·G rows, Hkv, B), causal against its own suffix.
  - merge through the log-sum-exp (FlashInfer cascade), exact.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from duomem_fast.kernels.checks import check_merge_attention, check_prefix_attention


@triton.jit
def _prefix_attention_kernel(
    q_ptr, k_ptr, v_ptr, lens_ptr, o_ptr, lse_ptr,
    T, G, L, rows_per_group, scale,
    sqb, sqt, sqh, skb, skn, skh, sob, sot, soh, slb, slt, slh,
    D: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m, h, grp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    loc = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = loc < rows_per_group
    r = grp * rows_per_group + loc  # global row = (b, t, g) flattened
    b, t, g = r // (T * G), (r // G) % T, r % G
    rd = tl.arange(0, BLOCK_D)
    d_ok = rd < D
    q = tl.load(q_ptr + b[:, None] * sqb + t[:, None] * sqt + (h * G + g)[:, None] * sqh + rd[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    if CAUSAL:  # query t of sequence b sits at suffix position lens[b] - T + t
        limit = tl.load(lens_ptr + b, mask=row_ok, other=0) - T + t + 1
    else:
        limit = tl.zeros((BLOCK_M,), dtype=tl.int32) + L
    kv_base = grp * skb + h * skh  # skb = 0 for the shared prefix
    m_i = tl.zeros((BLOCK_M,), dtype=tl.float32) - 1e30
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, L, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        kv_mask = (rn < L)[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + kv_base + rn[:, None] * skn + rd[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + kv_base + rn[:, None] * skn + rd[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        s = tl.where(rn[None, :] < limit[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        m_i = m_new
    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), m_i + tl.log(tl.where(empty, 1.0, l_i)))
    hq = h * G + g
    tl.store(o_ptr + b[:, None] * sob + t[:, None] * sot + hq[:, None] * soh + rd[None, :], o,
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + b * slb + t * slt + hq * slh, lse, mask=row_ok)


@triton.jit
def _merge_attention_kernel(oa_ptr, la_ptr, ob_ptr, lb_ptr, o_ptr, l_ptr, R, D: tl.constexpr,
                            BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rr = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rd = tl.arange(0, BLOCK_D)
    r_ok = rr < R
    mask = r_ok[:, None] & (rd < D)[None, :]
    la = tl.load(la_ptr + rr, mask=r_ok, other=float("-inf"))
    lb = tl.load(lb_ptr + rr, mask=r_ok, other=float("-inf"))
    m = tl.maximum(la, lb)
    m = tl.where(m == float("-inf"), 0.0, m)
    wa, wb = tl.exp(la - m), tl.exp(lb - m)
    den = wa + wb
    oa = tl.load(oa_ptr + rr[:, None] * D + rd[None, :], mask=mask, other=0.0).to(tl.float32)
    ob = tl.load(ob_ptr + rr[:, None] * D + rd[None, :], mask=mask, other=0.0).to(tl.float32)
    o = (oa * wa[:, None] + ob * wb[:, None]) / tl.maximum(den, 1e-30)[:, None]
    tl.store(o_ptr + rr[:, None] * D + rd[None, :], o.to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(l_ptr + rr, tl.where(den > 0, m + tl.log(tl.maximum(den, 1e-30)), float("-inf")), mask=r_ok)


def _attend(q: Tensor, k: Tensor, v: Tensor, lens: Tensor | None, shared: bool, scale: float) -> tuple[Tensor, Tensor]:
    """One pass over a KV segment: k, v (B or 1, L, Hkv, D) with unit stride on D. Returns o fp32, lse fp32."""
    B, T, Hq, D = q.shape
    Hkv, L = k.shape[2], k.shape[1]
    G = Hq // Hkv
    o = torch.empty(B, T, Hq, D, dtype=torch.float32, device=q.device)
    lse = torch.empty(B, T, Hq, dtype=torch.float32, device=q.device)
    rows = B * T * G if shared else T * G
    grid = (triton.cdiv(rows, 16), Hkv, 1 if shared else B)
    _prefix_attention_kernel[grid](
        q, k, v, lens if lens is not None else lse, o, lse,
        T, G, L, rows, scale,
        q.stride(0), q.stride(1), q.stride(2), 0 if shared else k.stride(0), k.stride(1), k.stride(2),
        o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1), lse.stride(2),
        D=D, CAUSAL=not shared, BLOCK_M=16, BLOCK_N=16, BLOCK_D=max(16, triton.next_power_of_2(D)),
    )
    return o, lse


def prefix_attention(q: Tensor, k_prefix: Tensor | None, v_prefix: Tensor | None, k_suffix: Tensor | None = None,
                     v_suffix: Tensor | None = None, suffix_lens: Tensor | None = None, scale: float | None = None,
                     return_lse: bool = False):
    """Attention of B sequences' last T tokens over a shared prefix KV and each sequence's own causal suffix KV.

    q: (B, T, Hq, D); k/v_prefix: (P, Hkv, D) shared, fully visible; k/v_suffix: (B, S, Hkv, D) right-padded with
    valid lengths suffix_lens (B,) (default S). Returns o (B, T, Hq, D) in q.dtype (+ lse (B, T, Hq) fp32).
    """
    check_prefix_attention(q, k_prefix, v_prefix, k_suffix, v_suffix, suffix_lens)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    q = q if q.stride(-1) == 1 else q.contiguous()
    parts = []
    if k_prefix is not None and k_prefix.shape[0] > 0:
        kp, vp = (t.contiguous().unsqueeze(0) for t in (k_prefix, v_prefix))
        parts.append(_attend(q, kp, vp, None, True, scale))
    if k_suffix is not None:
        B, S = k_suffix.shape[:2]
        lens = torch.full((B,), S, device=q.device) if suffix_lens is None else suffix_lens
        parts.append(_attend(q, k_suffix.contiguous(), v_suffix.contiguous(),
                             lens.to(device=q.device, dtype=torch.int32).contiguous(), False, scale))
    o, lse = parts[0] if len(parts) == 1 else merge_attention(parts[0][0], parts[0][1], parts[1][0], parts[1][1])
    o = o.to(q.dtype)
    return (o, lse) if return_lse else o


def merge_attention(o_a: Tensor, lse_a: Tensor, o_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Exact merge of two partial attentions over disjoint keys. o_*: (..., H, D); lse_*: (..., H) natural log.

    Returns (o in o_a.dtype, lse fp32); a side with lse = -inf contributes nothing.
    """
    check_merge_attention(o_a, lse_a, o_b, lse_b)
    D = o_a.shape[-1]
    oa, ob = o_a.reshape(-1, D).contiguous(), o_b.reshape(-1, D).contiguous()
    la, lb = (t.reshape(-1).float().contiguous() for t in (lse_a, lse_b))
    R = la.numel()
    o = torch.empty_like(oa)
    lse = torch.empty(R, dtype=torch.float32, device=oa.device)
    _merge_attention_kernel[(triton.cdiv(R, 16),)](oa, la, ob, lb, o, lse, R, D=D, BLOCK_R=16,
                                                   BLOCK_D=triton.next_power_of_2(D))
    return o.reshape(o_a.shape), lse.reshape(lse_a.shape)
