"""Attention of new query rows over shared KV segments (fully visible) plus each row's own causal KV.

Two interchangeable paths: "ops" goes through `duomem_fast.ops.prefix_attention` (+ lse merges for extra
segments); "torch" is a grouped-query matmul path that reads every shared segment once for all B rows without
expanding or concatenating KV (the fast path while ops runs its pure-torch reference).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from duomem_fast import ops


def attend(q: Tensor, shared: list[tuple[Tensor, Tensor]], own_k: Tensor | None, own_v: Tensor | None,
           own_lens: Tensor | None, impl: str) -> Tensor:
    """q (B, T, Hq, D); shared: [(k (P, Hkv, D), v)]; own_k/v (B, S, Hkv, D) right-padded, causal, valid lengths
    own_lens (B,) (None = all S; query t sits at own position len - T + t). Returns (B, T, Hq, D)."""
    shared = [(k, v) for k, v in shared if k.shape[0] > 0]
    if impl == "sdpa" and q.shape[0] == 1:
        return _attend_sdpa(q, shared, own_k, own_v)
    if impl in ("torch", "sdpa"):
        return _attend_torch(q, shared, own_k, own_v, own_lens)
    return _attend_ops(q, shared, own_k, own_v, own_lens)


def _attend_sdpa(q, shared, own_k, own_v) -> Tensor:
    """B = 1: one concatenated KV (a copy of the context per layer, cheaper than strided GEMVs) and torch SDPA."""
    T = q.shape[1]
    ks = [k for k, _ in shared] + ([own_k[0]] if own_k is not None else [])
    vs = [v for _, v in shared] + ([own_v[0]] if own_v is not None else [])
    k, v = (torch.cat(ks) if len(ks) > 1 else ks[0]), (torch.cat(vs) if len(vs) > 1 else vs[0])
    mask = None
    if T > 1 and own_k is not None:
        S, L = own_k.shape[1], k.shape[0]
        mask = torch.ones(T, L, dtype=torch.bool)
        mask[:, L - S:] = torch.arange(S)[None] <= (S - T + torch.arange(T))[:, None]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                       attn_mask=mask, enable_gqa=True)
    return o.transpose(1, 2)


def _attend_ops(q, shared, own_k, own_v, own_lens) -> Tensor:
    first_k, first_v = shared[0] if shared else (None, None)
    if len(shared) <= 1:
        return ops.prefix_attention(q, first_k, first_v, own_k, own_v, own_lens)
    o, lse = ops.prefix_attention(q, first_k, first_v, return_lse=True)
    for k, v in shared[1:]:
        o2, lse2 = ops.prefix_attention(q, k, v, return_lse=True)
        o, lse = ops.merge_attention(o, lse, o2, lse2)
    if own_k is not None:
        o2, lse2 = ops.prefix_attention(q, None, None, own_k, own_v, own_lens, return_lse=True)
        o, lse = ops.merge_attention(o, lse, o2, lse2)
    return o


def _attend_torch(q, shared, own_k, own_v, own_lens) -> Tensor:
    B, T, Hq, D = q.shape
    hkv = (shared[0][0] if shared else own_k).shape[-2]
    g = Hq // hkv
    qg = q.float().reshape(B, T, hkv, g, D).permute(2, 0, 3, 1, 4) * (1.0 / math.sqrt(D))  # (Hkv, B, G, T, D)
    scores, values = [], []
    for k, v in shared:
        s = qg.reshape(hkv, B * g * T, D) @ k.float().permute(1, 2, 0)  # (Hkv, BGT, P): KV read once for B rows
        scores.append(s.reshape(hkv, B, g, T, -1))
        values.append(v)
    if own_k is not None:
        S = own_k.shape[1]
        s = qg @ own_k.float().permute(2, 0, 3, 1)[:, :, None]  # (Hkv, B, G, T, S)
        lens = torch.full((B,), S) if own_lens is None else own_lens.long()
        qpos = lens[:, None] - T + torch.arange(T)[None, :]  # (B, T)
        mask = torch.arange(S)[None, None, :] <= qpos[:, :, None]  # (B, T, S)
        scores.append(s.masked_fill(~mask[None, :, None], float("-inf")))
        values.append(own_v)
    p = torch.softmax(torch.cat(scores, dim=-1), dim=-1)
    out, start = None, 0
    for s, v in zip(scores, values):
        n = s.shape[-1]
        part = p[..., start:start + n]
        if v.dim() == 3:  # shared (P, Hkv, D)
            o = (part.reshape(hkv, B * g * T, n) @ v.float().permute(1, 0, 2)).reshape(hkv, B, g, T, D)
        else:  # own (B, S, Hkv, D)
            o = part @ v.float().permute(2, 0, 1, 3)[:, :, None]
        out = o if out is None else out + o
        start += n
    return out.permute(1, 3, 0, 2, 4).reshape(B, T, Hq, D).to(q.dtype)
