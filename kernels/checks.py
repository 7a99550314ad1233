"""Argument checks shared by every backend's public launcher: shapes are validated once, at the API edge, and a bad
value raises ValueError naming it (the kernels themselves only assert)."""
from __future__ import annotations

import torch
from torch import Tensor

from .reference import BLOCK, Q4_1_BYTES, Q8_0_BYTES


def check_lora_linear(x: Tensor, weight: Tensor, lora_a: Tensor | None, lora_b: Tensor | None,
                      bias: Tensor | None, adapter_ids: Tensor | None) -> None:
    """x (..., K), weight (N, K), lora_a (r, K) | (n, r, K), lora_b (N, r) | (n, N, r), bias (N,), ids (M,)."""
    if weight.dtype == torch.uint8:  # GGUF blocks (reference.dequantize_blocks_ref)
        if weight.dim() != 3 or weight.shape[2] not in (Q4_1_BYTES, Q8_0_BYTES):
            raise ValueError(f"uint8 weight must be GGUF blocks (N, K/32, {Q4_1_BYTES} or {Q8_0_BYTES}), "
                             f"got shape {tuple(weight.shape)}")
        N, K = weight.shape[0], weight.shape[1] * BLOCK
    elif weight.dim() != 2:
        raise ValueError(f"weight must be (N, K), got shape {tuple(weight.shape)}")
    else:
        N, K = weight.shape
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(f"x must be (..., K={K}), got shape {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(f"bias must be (N={N},), got shape {tuple(bias.shape)}")
    if (lora_a is None) != (lora_b is None):
        raise ValueError("lora_a and lora_b must be given together")
    if lora_a is None:
        if adapter_ids is not None:
            raise ValueError("adapter_ids given without lora_a/lora_b")
        return
    stacked = adapter_ids is not None
    lead = (lora_a.shape[0],) if stacked and lora_a.dim() == 3 else ()
    r = lora_a.shape[-2] if lora_a.dim() >= 2 else -1
    if lora_a.dim() != (3 if stacked else 2) or tuple(lora_a.shape) != (*lead, r, K):
        want = "(n, r, K)" if stacked else "(r, K)"
        raise ValueError(f"lora_a must be {want} with K={K}, got shape {tuple(lora_a.shape)}")
    if tuple(lora_b.shape) != (*lead, N, r):
        raise ValueError(f"lora_b must be {(*lead, N, r)} to match lora_a {tuple(lora_a.shape)}, "
                         f"got {tuple(lora_b.shape)}")
    if stacked and adapter_ids.numel() != x.numel() // max(K, 1):
        raise ValueError(f"adapter_ids must have one id per row of x ({x.numel() // max(K, 1)}), "
                         f"got {adapter_ids.numel()}")


def check_prefix_attention(q: Tensor, k_prefix: Tensor | None, v_prefix: Tensor | None, k_suffix: Tensor | None,
                           v_suffix: Tensor | None, suffix_lens: Tensor | None) -> None:
    """q (B, T, Hq, D); k/v_prefix (P, Hkv, D); k/v_suffix (B, S, Hkv, D); suffix_lens (B,)."""
    if q.dim() != 4:
        raise ValueError(f"q must be (B, T, Hq, D), got shape {tuple(q.shape)}")
    B, T, Hq, D = q.shape
    has_p = k_prefix is not None and k_prefix.shape[0] > 0
    if not has_p and k_suffix is None:
        raise ValueError("prefix_attention needs a prefix KV, a suffix KV, or both")
    if k_prefix is not None:
        if v_prefix is None or k_prefix.dim() != 3 or k_prefix.shape != v_prefix.shape or k_prefix.shape[2] != D:
            raise ValueError(f"k_prefix/v_prefix must both be (P, Hkv, D={D}), got "
                             f"{tuple(k_prefix.shape)} / {None if v_prefix is None else tuple(v_prefix.shape)}")
    if k_suffix is not None:
        if (v_suffix is None or k_suffix.dim() != 4 or k_suffix.shape != v_suffix.shape
                or k_suffix.shape[0] != B or k_suffix.shape[3] != D):
            raise ValueError(f"k_suffix/v_suffix must both be (B={B}, S, Hkv, D={D}), got "
                             f"{tuple(k_suffix.shape)} / {None if v_suffix is None else tuple(v_suffix.shape)}")
        if suffix_lens is not None and suffix_lens.numel() != B:
            raise ValueError(f"suffix_lens must have B={B} entries, got {suffix_lens.numel()}")
    hkv = k_prefix.shape[1] if has_p else k_suffix.shape[2]
    if has_p and k_suffix is not None and k_suffix.shape[2] != hkv:
        raise ValueError(f"prefix has {hkv} KV heads but suffix has {k_suffix.shape[2]}")
    if hkv == 0 or Hq % hkv:
        raise ValueError(f"Hq={Hq} must be a multiple of the KV head count {hkv}")


def check_merge_attention(o_a: Tensor, lse_a: Tensor, o_b: Tensor, lse_b: Tensor) -> None:
    """o_* (..., H, D), lse_* (..., H)."""
    if o_a.shape != o_b.shape:
        raise ValueError(f"o_a {tuple(o_a.shape)} and o_b {tuple(o_b.shape)} differ")
    if lse_a.shape != lse_b.shape or tuple(lse_a.shape) != tuple(o_a.shape[:-1]):
        raise ValueError(f"lse_a {tuple(lse_a.shape)} / lse_b {tuple(lse_b.shape)} must be o's shape without D: "
                         f"{tuple(o_a.shape[:-1])}")
