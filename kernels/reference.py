"""Pure-torch references of every op, fp32 upcast.

First-class code: the tests compare each kernel against these, the benchmarks time them as baselines, and
`duomem_fast.ops` falls back to them when no native build is present.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def lora_linear_ref(
    x: Tensor,
    weight: Tensor,
    lora_a: Tensor | None = None,
    lora_b: Tensor | None = None,
    scale: float | Tensor = 1.0,
    bias: Tensor | None = None,
    adapter_ids: Tensor | None = None,
) -> Tensor:
    """y = x Wᵀ + s·(x Aᵀ) Bᵀ (+ bias), computed in fp32, returned in x.dtype.

    x: (..., K); weight: (N, K), or the same matrix in GGUF blocks (`dequantize_blocks_ref`); bias: (N,).
    Single adapter: lora_a (r, K), lora_b (N, r), scale a float.
    Multi-adapter: lora_a (n_adapters, r, K), lora_b (n_adapters, N, r), scale a float or (n_adapters,),
    adapter_ids (M,) int with M = x rows; -1 means base weight only.
    """
    if weight.dtype == torch.uint8:
        weight = dequantize_blocks_ref(weight)
    lead = x.shape[:-1]
    xf = x.reshape(-1, x.shape[-1]).float()
    y = xf @ weight.float().t()
    if bias is not None:
        y = y + bias.float()
    if lora_a is not None:
        if adapter_ids is None:
            y = y + float(scale) * ((xf @ lora_a.float().t()) @ lora_b.float().t())
        else:
            y = y + _multi_lora_delta(xf, lora_a.float(), lora_b.float(), scale, adapter_ids)
    return y.reshape(*lead, weight.shape[0]).to(x.dtype)


# GGUF's 32-weight blocks with their scales widened to fp32 (a broadcast from memory costs the kernel no shuffle),
# told apart by bytes per block: Q4_1 = fp32 d, fp32 m, 16 bytes of 4-bit q (weight j in the low nibble of byte j,
# weight j + 16 in its high nibble), w = d·q + m; Q8_0 = fp32 d, 32 int8 q, w = d·q. GGUF stores d and m in fp16.
BLOCK = 32
Q4_1_BYTES, Q8_0_BYTES = 24, 36


def dequantize_blocks_ref(blocks: Tensor) -> Tensor:
    """(N, K / 32, 24 | 36) uint8 Q4_1 | Q8_0 blocks -> (N, K) fp32, exactly as gguf-py de-quantises (d·q is exact in
    fp32: an fp16-exact d times a 4- or 8-bit q)."""
    if blocks.dtype != torch.uint8 or blocks.dim() != 3 or blocks.shape[2] not in (Q4_1_BYTES, Q8_0_BYTES):
        raise ValueError(f"block weights must be uint8 (N, K/32, {Q4_1_BYTES} or {Q8_0_BYTES}), "
                         f"got {blocks.dtype} {tuple(blocks.shape)}")
    N, nb, nbytes = blocks.shape
    b = blocks.contiguous()
    d = b[..., 0:4].contiguous().view(torch.float32)  # (N, nb, 1)
    if nbytes == Q8_0_BYTES:
        q = b[..., 4:].contiguous().view(torch.int8).float()
        return (q * d).reshape(N, nb * BLOCK)
    m = b[..., 4:8].contiguous().view(torch.float32)
    qs = b[..., 8:]
    q = torch.cat([qs & 15, qs >> 4], dim=-1).float()
    return (q * d + m).reshape(N, nb * BLOCK)


def _multi_lora_delta(xf: Tensor, a: Tensor, b: Tensor, scale: float | Tensor, ids: Tensor) -> Tensor:
    ids = ids.reshape(-1).long()
    scales = torch.as_tensor(scale, dtype=torch.float32).expand(a.shape[0])
    delta = torch.zeros(xf.shape[0], b.shape[1], dtype=torch.float32, device=xf.device)
    for i in ids.unique().tolist():
        if i < 0:
            continue
        rows = ids == i
        delta[rows] = scales[i] * ((xf[rows] @ a[i].t()) @ b[i].t())
    return delta


def prefix_attention_ref(
    q: Tensor,
    k_prefix: Tensor | None,
    v_prefix: Tensor | None,
    k_suffix: Tensor | None = None,
    v_suffix: Tensor | None = None,
    suffix_lens: Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention of B sequences' new tokens over one shared prefix KV plus each sequence's own suffix KV.

    q: (B, T, Hq, D) — the last T tokens of each sequence's suffix.
    k_prefix, v_prefix: (P, Hkv, D), shared by all B sequences and fully visible (P may be 0, or None).
    k_suffix, v_suffix: (B, S, Hkv, D), right-padded; suffix_lens (B,) valid lengths (default S, each >= T).
    Query t of sequence b sits at suffix position suffix_lens[b] - T + t and sees the whole prefix and suffix
    positions up to its own (causal). Without a suffix, every query sees the whole prefix (no mask).
    GQA: Hq must be a multiple of Hkv. Returns o (B, T, Hq, D) in q.dtype, and lse (B, T, Hq) fp32 (natural log)
    if return_lse.
    """
    B, T, Hq, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    qf = q.float().transpose(1, 2)  # (B, Hq, T, D)
    keys, vals, masks = [], [], []
    if k_prefix is not None and k_prefix.shape[0] > 0:
        keys.append(_expand_kv(k_prefix.unsqueeze(0).expand(B, -1, -1, -1), Hq))
        vals.append(_expand_kv(v_prefix.unsqueeze(0).expand(B, -1, -1, -1), Hq))
        masks.append(torch.ones(B, T, k_prefix.shape[0], dtype=torch.bool, device=q.device))
    if k_suffix is not None:
        S = k_suffix.shape[1]
        lens = torch.full((B,), S, device=q.device) if suffix_lens is None else suffix_lens.to(q.device).long()
        qpos = lens[:, None] - T + torch.arange(T, device=q.device)[None, :]  # (B, T)
        kpos = torch.arange(S, device=q.device)
        keys.append(_expand_kv(k_suffix, Hq))
        vals.append(_expand_kv(v_suffix, Hq))
        masks.append(kpos[None, None, :] <= qpos[:, :, None])
    k = torch.cat(keys, dim=2)  # (B, Hq, L, D)
    v = torch.cat(vals, dim=2)
    mask = torch.cat(masks, dim=2)[:, None]  # (B, 1, T, L)
    s = (qf @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (B, Hq, T)
    o = torch.softmax(s, dim=-1).nan_to_num(0.0) @ v
    o = o.transpose(1, 2).to(q.dtype)
    return (o, lse.transpose(1, 2).contiguous()) if return_lse else o


def _expand_kv(kv: Tensor, hq: int) -> Tensor:
    """(B, L, Hkv, D) -> (B, Hq, L, D) fp32, each KV head repeated for its group of query heads."""
    hkv = kv.shape[2]
    return kv.float().transpose(1, 2).repeat_interleave(hq // hkv, dim=1)


def merge_attention_ref(o_a: Tensor, lse_a: Tensor, o_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Exact merge of two attention results over disjoint key sets through their log-sum-exp.

    o_*: (..., H, D); lse_*: (..., H) natural-log. Returns (o, lse), o in o_a.dtype, lse fp32.
    An empty side carries lse = -inf and contributes nothing.
    """
    la, lb = lse_a.float(), lse_b.float()
    m = torch.maximum(la, lb)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    wa, wb = torch.exp(la - m), torch.exp(lb - m)
    den = wa + wb
    o = (o_a.float() * wa[..., None] + o_b.float() * wb[..., None]) / den.clamp_min(1e-30)[..., None]
    return o.to(o_a.dtype), m + torch.log(den)


def rms_norm_ref(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x: (..., H); weight: (H,). Llama RMSNorm: normalise in fp32, cast back, then scale (HF order)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)
