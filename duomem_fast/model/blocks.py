"""Exact GGUF blocks: fp32 weights that a GGUF file de-quantised (the default model: SmolLM2's Q4_1 layers, Q8_0
embedding) are stored back in those blocks, 6 or 9 bits a weight instead of 32, and widened in the kernel.

Lossless by construction: a matrix is packed only if de-quantising the packed blocks (`dequantize_blocks_ref`, the
same arithmetic as the C++ kernel and as gguf-py) gives back every one of its fp32 values bit for bit; otherwise it
stays fp32. A decode step streams every weight once per token, so on a memory-bound CPU the smaller stream is the
speed: the default model's layers and lm_head go from 538 MB to 112 MB a token, with the same fp32 weight values.
GGUF's fp16 scales are stored widened to fp32 (6 bits a weight instead of 5 for Q4_1): the kernel then broadcasts
them straight from memory, which on AVX-512 costs no shuffle-port work, and the shuffle port is its bottleneck.
"""
from __future__ import annotations

import torch
from torch import Tensor

from duomem_fast.kernels.reference import BLOCK, dequantize_blocks_ref
from duomem_fast.model.weights import Weights

_LINEARS = ("qkv", "o", "gate_up", "down")

_ROWS = 4096  # rows per pass: bounds the packer's scratch to a few hundred MB on the largest matrices


def pack_linears(weights: Weights) -> int:
    """Each projection matrix and lm_head that packs exactly is replaced by its blocks (the embedding table stays
    fp32 for the lookup, so a tied lm_head becomes a tensor of its own). Returns the number of matrices packed."""
    packed = 0
    for lw in weights.layers:
        for name in _LINEARS:
            blocks = pack_blocks(getattr(lw, name))
            if blocks is not None:
                setattr(lw, name, blocks)
                packed += 1
    head = pack_blocks(weights.lm_head)
    if head is not None:
        weights.lm_head = head
        packed += 1
    return packed


def pack_blocks(w: Tensor) -> Tensor | None:
    """fp32 (N, K) -> uint8 (N, K/32, 24) Q4_1 or (N, K/32, 36) Q8_0 blocks that de-quantise to exactly `w`, or None
    when neither format holds it exactly."""
    if w.dtype != torch.float32 or w.dim() != 2 or w.shape[1] % BLOCK or w.numel() == 0:
        return None
    for pack in (_pack_q4_1, _pack_q8_0):
        parts = []
        for lo in range(0, w.shape[0], _ROWS):
            part = pack(w[lo:lo + _ROWS])
            if part is None or not torch.equal(dequantize_blocks_ref(part), w[lo:lo + _ROWS]):
                break
            parts.append(part)
        else:
            return torch.cat(parts)
    return None


def _pack_q4_1(w: Tensor) -> Tensor | None:
    """Q4_1 blocks of w, or None if some block is not d·q + m with fp16 d, m and q in 0..15."""
    b = w.reshape(w.shape[0], -1, BLOCK)
    m = b.amin(-1, keepdim=True)
    if not torch.equal(m.half().float(), m):
        return None
    d, q = _fit(b, m, (b.amax(-1, keepdim=True) - m) / 15, 0, 15)
    if d is None:
        return None
    q = q.to(torch.uint8)
    qs = q[..., :16] | (q[..., 16:] << 4)
    return torch.cat([_bytes(d), _bytes(m), qs], dim=-1)


def _pack_q8_0(w: Tensor) -> Tensor | None:
    """Q8_0 blocks of w, or None if some block is not d·q with fp16 d and q in -128..127."""
    b = w.reshape(w.shape[0], -1, BLOCK)
    d, q = _fit(b, torch.zeros_like(b[..., :1]), b.abs().amax(-1, keepdim=True) / 127, -128, 127)
    if d is None:
        return None
    return torch.cat([_bytes(d), q.to(torch.int8).view(torch.uint8)], dim=-1)


def _fit(b: Tensor, m: Tensor, guess: Tensor, qmin: int, qmax: int) -> tuple[Tensor | None, Tensor | None]:
    """Per block the fp16 step d (the guess rounded to fp16, or up to 2 fp16 steps off it: the rounding of the
    largest weight's d·q + m) with b == d·q + m exactly for integer q in [qmin, qmax]; (None, None) if a block has
    none."""
    g16 = guess.half()
    best_d = torch.full_like(guess, float("nan"))
    best_q = torch.zeros_like(b)
    todo = torch.ones_like(guess, dtype=torch.bool)
    for step in (0, -1, 1, -2, 2):
        d = (g16.view(torch.int16) + step).view(torch.float16).float() if step else g16.float()
        q = torch.round((b - m) / torch.where(d == 0, torch.ones_like(d), d)).clamp_(qmin, qmax)
        exact = todo & (q * d + m == b).all(-1, keepdim=True)
        best_d = torch.where(exact, d, best_d)
        best_q = torch.where(exact, q, best_q)
        todo &= ~exact
        if not todo.any():
            return best_d, best_q
    return None, None


def _bytes(v: Tensor) -> Tensor:
    """(N, nb, 1) fp32 -> (N, nb, 4) uint8."""
    return v.contiguous().view(torch.uint8)
