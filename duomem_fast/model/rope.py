"""Rotary position tables, with every RoPE scaling transformers knows (default, linear, dynamic, yarn, llama3...)."""
from __future__ import annotations

import torch
from torch import Tensor


class Rope:
    """cos/sin tables (max_context, head_dim) in fp32, built once; HF's rotate-half convention.

    Dynamic NTK scaling equals default RoPE up to max_position_embeddings, which is our context limit.
    """

    def __init__(self, hf_config, head_dim: int, max_context: int) -> None:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        params = getattr(hf_config, "rope_parameters", None) or {}
        rope_type = params.get("rope_type", "default")
        if rope_type == "default":
            base = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
            inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
            scaling = 1.0
        elif rope_type in ROPE_INIT_FUNCTIONS:
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, torch.device("cpu"))
        else:
            raise ValueError(f"unsupported rope_type {rope_type!r}: known are {sorted(ROPE_INIT_FUNCTIONS)}")
        pos = torch.arange(max_context, dtype=torch.float)
        freqs = pos[:, None] * inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = emb.cos() * scaling
        self.sin = emb.sin() * scaling
        self.rope_type = rope_type

    def tables(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """positions (B, T) -> cos, sin (B, T, 1, head_dim) in dtype (broadcast over heads)."""
        return self.cos[positions].to(dtype)[:, :, None], self.sin[positions].to(dtype)[:, :, None]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, T, H, D) rotated: x·cos + rotate_half(x)·sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
