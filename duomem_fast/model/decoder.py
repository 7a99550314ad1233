"""The compact Llama-family decoder: fused projections, RoPE, GQA attention over shared + own KV, SwiGLU."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from duomem_fast import ops
from duomem_fast.model.attention import attend
from duomem_fast.model.config import ModelConfig
from duomem_fast.model.rope import Rope, apply_rope
from duomem_fast.model.weights import LayerWeights, Weights


@dataclass(slots=True)
class Step:
    """One forward call's KV context.

    positions (B, T): absolute positions of the new tokens.
    shared: per segment (k, v) each (L, P, Hkv, D), fully visible to every row (prefix, a session's own text).
    own_k/own_v (L, B, cap, Hkv, D): the rows' own KV buffers; the new tokens are written at own_start[b] and
    attend causally up to there. None: the new tokens attend only to themselves (causal) beyond `shared`.
    """

    positions: Tensor
    shared: list[tuple[Tensor, Tensor]]
    own_k: Tensor | None = None
    own_v: Tensor | None = None
    own_start: list[int] | None = None


class Decoder:
    """Weights + forward.

    attn_impl: "auto" (native ops for decode rows, else flash), "flash" (torch's CPU flash kernel per KV segment,
    merged through the lse), "torch" (grouped matmuls) or "ops" (the dispatcher); see model/attention.py.
    fused_decode: decode steps (one new token per row, fp32, attn_impl "auto") run the whole layer stack in one
    native call (`ops.decode_step`) where it is built, and so do one session's appends of enough tokens for the
    tiled attention (`ops.append_step`); False keeps the eager layer loop below (the reference).
    """

    def __init__(self, cfg: ModelConfig, weights: Weights, dtype: torch.dtype, attn_impl: str = "auto",
                 fused_decode: bool = True) -> None:
        if attn_impl not in ("auto", "torch", "ops", "flash", "lowp"):
            raise ValueError(f"unknown attn_impl {attn_impl!r}: expected 'auto', 'flash', 'torch', 'lowp' or 'ops'")
        self.cfg, self.w, self.dtype, self.attn_impl = cfg, weights, dtype, attn_impl
        self.fused_decode = fused_decode
        self.rope = Rope(cfg.hf, cfg.head_dim, cfg.max_context)

    @torch.inference_mode()
    def forward(self, ids: Tensor, step: Step, logits: str = "last") -> Tensor:
        """ids (B, T) -> logits fp32: (B, vocab) for logits="last", (B, T, vocab) for "all"."""
        x = self.w.embed[ids]
        if self._fusable(ids, step):
            x = self._decode_fused(x[:, 0], step)[:, None]
        elif self._appendable(ids, step):
            x = self._append_fused(x[0], step)[None]
        else:
            cos, sin = self.rope.tables(step.positions, self.dtype)
            for i, lw in enumerate(self.w.layers):
                x = self._layer(i, lw, x, cos, sin, step)
        x = x[:, -1] if logits == "last" else x
        x = _rms_norm(x, self.w.norm, self.cfg.rms_norm_eps)
        return ops.lora_linear(x, self.w.lm_head).float()

    def _fusable(self, ids: Tensor, step: Step) -> bool:
        return (self.fused_decode and ids.shape[1] == 1 and self.dtype == torch.float32 and self.attn_impl == "auto"
                and step.own_k is not None and len(step.shared) <= 1 and ops.has_decode_step(ids.device.type))

    def _appendable(self, ids: Tensor, step: Step) -> bool:
        """One session's tokens, as many as "auto" gives the tiled attention (fewer go eager: the decode kernel's
        rows path, _attend_rows, is faster for them)."""
        B, T = ids.shape
        return (self.fused_decode and B == 1 and T * (self.cfg.num_heads // self.cfg.num_kv_heads) >= ops.tiled_min_rows()
                and self.dtype == torch.float32 and self.attn_impl == "auto" and step.own_k is not None
                and len(step.shared) <= 1 and ops.has_append_step(ids.device.type))

    def _append_fused(self, x: Tensor, step: Step) -> Tensor:
        """x (T, H) -> (T, H) after every layer, in one native call; the new KV goes into step.own_k/own_v."""
        pos = step.positions[0]
        k, v = step.shared[0] if step.shared else (None, None)
        weights, extras = decode_plan(self.w)
        return ops.append_step(x, weights, extras, self.rope.cos[pos], self.rope.sin[pos], k, v, step.own_k,
                               step.own_v, step.own_start[0], self.cfg.rms_norm_eps)

    def _decode_fused(self, x: Tensor, step: Step) -> Tensor:
        """x (B, H) -> (B, H) after every layer, in one native call; the new KV goes into step.own_k/own_v."""
        pos = step.positions[:, 0]
        k, v = step.shared[0] if step.shared else (None, None)
        weights, extras = decode_plan(self.w)
        return ops.decode_step(x, weights, extras, self.rope.cos[pos], self.rope.sin[pos], k, v, step.own_k,
                               step.own_v, step.own_start, self.cfg.rms_norm_eps)

    def _layer(self, i: int, lw: LayerWeights, x: Tensor, cos: Tensor, sin: Tensor, step: Step) -> Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        qkv = _linear(_rms_norm(x, lw.ln_attn, cfg.rms_norm_eps), lw.qkv, lw.qkv_bias, lw.lora.get("qkv"))
        hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        v = qkv[..., cfg.q_size + cfg.kv_size:].view(B, T, hkv, d)
        if lw.q_norm is None:  # q and k rotated in one call: fewer small ops per decode step
            qk = apply_rope(qkv[..., :cfg.q_size + cfg.kv_size].view(B, T, hq + hkv, d), cos, sin)
            q, k = qk[:, :, :hq], qk[:, :, hq:]
        else:
            q = _rms_norm(qkv[..., :cfg.q_size].view(B, T, hq, d), lw.q_norm, cfg.rms_norm_eps)
            k = _rms_norm(qkv[..., cfg.q_size:cfg.q_size + cfg.kv_size].view(B, T, hkv, d), lw.k_norm,
                          cfg.rms_norm_eps)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        own_k, own_v, lens = self._write_own(i, k, v, step)
        shared = [(sk[i], sv[i]) for sk, sv in step.shared]
        a = attend(q, shared, own_k, own_v, lens, self.attn_impl).reshape(B, T, cfg.q_size)
        x = x + _linear(a, lw.o, lw.o_bias, lw.lora.get("o"))
        gu = _linear(_rms_norm(x, lw.ln_mlp, cfg.rms_norm_eps), lw.gate_up, lw.gate_up_bias, lw.lora.get("gate_up"))
        gate, up = gu.chunk(2, dim=-1)
        return x + _linear(F.silu(gate) * up, lw.down, lw.down_bias, lw.lora.get("down"))

    @staticmethod
    def _write_own(i: int, k: Tensor, v: Tensor, step: Step) -> tuple[Tensor, Tensor, Tensor | None]:
        if step.own_k is None:
            return k, v, None
        T = k.shape[1]
        for b, start in enumerate(step.own_start):
            step.own_k[i, b, start:start + T] = k[b]
            step.own_v[i, b, start:start + T] = v[b]
        end = max(step.own_start) + T
        lens = torch.tensor(step.own_start) + T if len(step.own_start) > 1 else None
        return step.own_k[i, :, :end], step.own_v[i, :, :end], lens


def decode_plan(w: Weights) -> tuple[list[Tensor], list[Tensor | None]]:
    """The flat per-layer tensor lists `ops.decode_step` takes (see its docstring for the order)."""
    weights: list[Tensor] = []
    extras: list[Tensor | None] = []
    for lw in w.layers:
        weights += [lw.ln_attn, lw.qkv, lw.o, lw.ln_mlp, lw.gate_up, lw.down]
        extras += [lw.qkv_bias, lw.o_bias, lw.gate_up_bias, lw.down_bias, lw.q_norm, lw.k_norm]
        for name in ("qkv", "o", "gate_up", "down"):
            pair = lw.lora.get(name)
            extras += [None, None] if pair is None else [pair.a, pair.b]
    return weights, extras


def _linear(x: Tensor, w: Tensor, bias: Tensor | None, lora) -> Tensor:
    if lora is None:
        return ops.lora_linear(x, w, bias=bias)
    return ops.lora_linear(x, w, lora.a, lora.b, 1.0, bias)


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    if x.dtype == torch.float32:  # one fused kernel; same math as HF's in fp32
        return F.rms_norm(x, weight.shape, weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)
