"""Attention of new query rows over shared KV segments (fully visible) plus each row's own causal KV.

Three interchangeable paths, none copying the prefix KV, and "auto" (the default) picking per call (a fourth,
"rows", for a few tokens of one session: the native decode kernel with one row per token): "flash" calls
torch's CPU flash-attention kernel per segment and merges through the lse; "ops" goes through
`duomem_fast.ops.prefix_attention` (+ merge_attention for extra segments); "torch" is a readable grouped-query
matmul path.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from duomem_fast import ops

_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)  # returns (o, lse)


def attend(q: Tensor, shared: list[tuple[Tensor, Tensor]], own_k: Tensor | None, own_v: Tensor | None,
           own_lens: Tensor | None, impl: str) -> Tensor:
    """q (B, T, Hq, D); shared: [(k (P, Hkv, D), v)]; own_k/v (B, S, Hkv, D) right-padded, causal, valid lengths
    own_lens (B,) (None = all S; query t sits at own position len - T + t). Returns (B, T, Hq, D)."""
    shared = [(k, v) for k, v in shared if k.shape[0] > 0]
    if impl == "auto":
        impl = _auto(q, (shared[0][0] if shared else own_k).shape[-2])
        impl = "rows" if impl == "flash" and _rows_fit(q, shared, own_k, own_lens) else impl
    if impl == "rows":
        return _attend_rows(q, shared, own_k, own_v)
    if impl == "flash" and _FLASH is not None:
        return _attend_flash(q, shared, own_k, own_v, own_lens)
    if impl in ("torch", "flash"):
        return _attend_torch(q, shared, own_k, own_v, own_lens)
    if impl == "lowp":
        return _attend_torch(q, shared, own_k, own_v, own_lens, upcast=False)
    return _attend_ops(q, shared, own_k, own_v, own_lens)


def _auto(q: Tensor, hkv: int) -> str:
    """fp32: the native kernels for decode rows and wherever a KV head has `ops.tiled_min_rows()` query rows or more
    (its register tiles; one thread, ms per layer against torch's flash kernel: 60 rows over 2,000 + 70 keys 1.87 vs
    3.87, a 2,000-token causal prefill 88 vs 124), else torch's flash kernel (2-15 tokens over 2,400 cold keys, 30
    layers: the native row blocks were 10-20% slower). bf16 (one thread, 2,400 keys, ms per forward of 30 layers):
    up to LOWP_MIN_ROWS query tokens the native kernel (T=4: 26.5 vs 32.6 flash), above it bf16 GEMMs with an fp32
    softmax (T=69: flash upcasts to fp32 and runs at fp32 speed; oneDNN's bf16 GEMMs run ~4.8x fp32 here)."""
    native = ops.backend(q.device.type) == "native"
    if q.dtype == torch.bfloat16 and q.is_cpu:
        return "lowp" if q.shape[1] > LOWP_MIN_ROWS or not native else "ops"
    B, T, Hq, _ = q.shape
    return "ops" if native and (T == 1 or B * T * (Hq // hkv) >= ops.tiled_min_rows()) else "flash"


def _rows_fit(q: Tensor, shared, own_k: Tensor | None, own_lens: Tensor | None) -> bool:
    """A few tokens of one session over a prefix and its own KV, fp32, where "auto" would take the flash kernel:
    the native decode kernel takes them as T one-token rows (see _attend_rows). One thread, 2,000 prefix keys and
    300 own, cold, ms a layer, flash -> rows: T=2 0.97 -> 0.63, T=4 1.02 -> 0.80, T=12 1.90 -> 1.54 (two
    threads: 1.15 -> 0.51, 1.04 -> 0.59, 2.39 -> 1.48)."""
    return (q.dtype == torch.float32 and q.shape[0] == 1 and q.shape[1] > 1 and len(shared) == 1
            and own_k is not None and own_lens is None and ops.has_decode_step(q.device.type))


def _attend_rows(q, shared, own_k, own_v) -> Tensor:
    """q (1, T, Hq, D): token t is a decode row of its own whose own KV ends at itself (causal), all T sharing the
    prefix, which the native decode kernel reads once for the T x G rows of a KV head (decode_attention_shared)."""
    T, S = q.shape[1], own_k.shape[1]
    k, v = shared[0]
    lens = [S - T + t + 1 for t in range(T)]
    out = ops.decode_attention(q[0], k, v, own_k.expand(T, -1, -1, -1), own_v.expand(T, -1, -1, -1), lens)
    return out[None]


LOWP_MIN_ROWS = 8


def _attend_flash(q, shared, own_k, own_v, own_lens) -> Tensor:
    """torch's CPU flash kernel once per segment (it returns the lse), merged exactly. GQA without copying KV: the
    g query heads of a KV head become g·T query rows; for a shared segment all B rows go in one call (KV read once)."""
    B, T, Hq, D = q.shape
    hkv = (shared[0][0] if shared else own_k).shape[-2]
    g = Hq // hkv
    qg = q.view(B, T, hkv, g, D).permute(0, 2, 3, 1, 4).reshape(B, hkv, g * T, D)  # row = group * T + t
    parts = []
    if shared:
        qs = qg.transpose(0, 1).reshape(1, hkv, B * g * T, D)
        for k, v in shared:
            o, lse = _FLASH(qs, k.transpose(0, 1)[None], v.transpose(0, 1)[None], 0.0, False)
            parts.append((o.view(hkv, B, g * T, D).transpose(0, 1), lse.view(hkv, B, g * T).transpose(0, 1)))
    if own_k is not None:
        mask = _own_mask(B, T, own_k.shape[1], own_lens, g, q.dtype)
        parts.append(_FLASH(qg, own_k.transpose(1, 2), own_v.transpose(1, 2), 0.0, False, attn_mask=mask))
    o, lse = parts[0]
    for o2, lse2 in parts[1:]:
        o, lse = _merge(o, lse, o2, lse2)
    return o.view(B, hkv, g, T, D).permute(0, 3, 1, 2, 4).reshape(B, T, Hq, D)


def _own_mask(B: int, T: int, S: int, lens: Tensor | None, g: int, dtype) -> Tensor | None:
    """Additive causal mask (B, 1, g·T, S) for right-padded own KV; None when every row sees all S keys. Every layer
    of a forward asks for the same mask: built once (1.4 of ~28 ms per 4-token forward when built per layer)."""
    if T == 1 and lens is None:
        return None
    return _own_mask_built(B, T, S, None if lens is None else tuple(lens.tolist()), g, dtype)


@functools.lru_cache(maxsize=4)
def _own_mask_built(B: int, T: int, S: int, lens: tuple[int, ...] | None, g: int, dtype) -> Tensor:
    lens = torch.full((B,), S) if lens is None else torch.tensor(lens)
    qpos = lens[:, None] - T + torch.arange(T)[None]  # (B, T)
    ok = torch.arange(S)[None, None] <= qpos[:, :, None]
    mask = torch.zeros(B, T, S, dtype=dtype).masked_fill_(~ok, float("-inf"))
    return mask[:, None, None].expand(B, 1, g, T, S).reshape(B, 1, g * T, S)


def _merge(o, lse, o2, lse2):
    m = torch.maximum(lse, lse2)
    w, w2 = torch.exp(lse - m), torch.exp(lse2 - m)
    den = w + w2
    return (o * (w / den)[..., None] + o2 * (w2 / den)[..., None]).to(o.dtype), m + torch.log(den)


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


def _attend_torch(q, shared, own_k, own_v, own_lens, upcast: bool = True) -> Tensor:
    """Grouped matmuls: the g query heads of a KV head are g·T rows of one GEMM against that head's keys (KV read in
    place, strided), one score block per segment, a softmax across the blocks without concatenating them (max, exp
    in place, sums), then P·V per segment. upcast: every product in fp32 (the readable reference); else the products
    stay in q.dtype (bf16 GEMMs) and only the softmax runs in fp32, as HF's eager attention does in bf16."""
    B, T, Hq, D = q.shape
    hkv = (shared[0][0] if shared else own_k).shape[-2]
    g = Hq // hkv
    c = torch.float32 if upcast else q.dtype
    qg = (q.to(c) * (1.0 / math.sqrt(D))).reshape(B, T, hkv, g, D).permute(2, 0, 3, 1, 4)  # (Hkv, B, G, T, D)
    scores, values = [], []  # fp32 scores (Hkv, B, G, T, n) per segment
    for k, v in shared:
        s = qg.reshape(hkv, B * g * T, D) @ k.to(c).permute(1, 2, 0)  # (Hkv, BGT, P): KV read once for B rows
        scores.append(s.float().reshape(hkv, B, g, T, -1))
        values.append(v)
    if own_k is not None:
        S = own_k.shape[1]
        s = (qg @ own_k.to(c).permute(2, 0, 3, 1)[:, :, None]).float()  # (Hkv, B, G, T, S)
        lens = torch.full((B,), S) if own_lens is None else own_lens.long()
        qpos = lens[:, None] - T + torch.arange(T)[None, :]  # (B, T)
        mask = torch.arange(S)[None, None, :] <= qpos[:, :, None]  # (B, T, S)
        scores.append(s.masked_fill_(~mask[None, :, None], float("-inf")))
        values.append(own_v)
    m = functools.reduce(torch.maximum, [s.amax(-1, keepdim=True) for s in scores])
    total, out = 0, None
    for s, v in zip(scores, values):
        p = s.sub_(m).exp_()
        total = total + p.sum(-1, keepdim=True)
        p, n = p.to(c), s.shape[-1]
        if v.dim() == 3:  # shared (P, Hkv, D)
            o = (p.reshape(hkv, B * g * T, n) @ v.to(c).permute(1, 0, 2)).reshape(hkv, B, g, T, D)
        else:  # own (B, S, Hkv, D)
            o = p @ v.to(c).permute(2, 0, 1, 3)[:, :, None]
        out = o.float() if out is None else out.add_(o.float())
    out = out.div_(total)
    return out.permute(1, 3, 0, 2, 4).reshape(B, T, Hq, D).to(q.dtype)
