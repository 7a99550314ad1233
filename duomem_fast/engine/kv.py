"""KV storage: a session's growable buffer and an immutable prefix."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class KVBuffer:
    """Preallocated K and V, each (layers, 1, capacity, kv_heads, head_dim); capacity doubles when full."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, capacity: int = 256) -> None:
        shape = (layers, 1, max(capacity, 1), kv_heads, head_dim)
        self.k, self.v = torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def reserve(self, extra: int) -> None:
        """Make room for `extra` more tokens (amortised O(1): capacity doubles)."""
        need = self.length + extra
        if need <= self.capacity:
            return
        cap = self.capacity
        while cap < need:
            cap *= 2
        k = self.k.new_empty((self.k.shape[0], 1, cap, *self.k.shape[3:]))
        v = torch.empty_like(k)
        k[:, :, :self.length] = self.k[:, :, :self.length]
        v[:, :, :self.length] = self.v[:, :, :self.length]
        self.k, self.v = k, v

    def view(self) -> tuple[Tensor, Tensor]:
        """The filled part, each (layers, length, kv_heads, head_dim) (a view, no copy)."""
        return self.k[:, 0, :self.length], self.v[:, 0, :self.length]

    def copy(self) -> "KVBuffer":
        out = KVBuffer.__new__(KVBuffer)
        out.k, out.v, out.length = self.k.clone(), self.v.clone(), self.length
        return out

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


@dataclass(eq=False)
class Prefix:
    """An encoded, immutable token prefix shared by sessions: k, v (layers, P, kv_heads, head_dim).

    logits (vocab,) fp32 are the next-token scores after the last token (None when P = 0).
    """

    tokens: tuple[int, ...]
    k: Tensor
    v: Tensor
    logits: Tensor | None

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()
