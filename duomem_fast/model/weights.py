"""Safetensors (sharded or not) -> per-layer weights with q/k/v and gate/up fused into one matrix each."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from duomem_fast.model.config import ModelConfig


@dataclass(slots=True)
class LoraPair:
    """Unmerged LoRA on one (possibly fused) linear: a (r_total, K), b (N, r_total) with the scale folded in."""

    a: Tensor
    b: Tensor


@dataclass(slots=True)
class LayerWeights:
    ln_attn: Tensor
    ln_mlp: Tensor
    qkv: Tensor  # (q_size + 2 kv_size, hidden)
    o: Tensor  # (hidden, q_size)
    gate_up: Tensor  # (2 intermediate, hidden)
    down: Tensor  # (hidden, intermediate)
    qkv_bias: Tensor | None = None
    o_bias: Tensor | None = None
    gate_up_bias: Tensor | None = None
    down_bias: Tensor | None = None
    q_norm: Tensor | None = None
    k_norm: Tensor | None = None
    lora: dict[str, LoraPair] = field(default_factory=dict)  # keys: qkv, o, gate_up, down


@dataclass(slots=True)
class Weights:
    embed: Tensor  # (vocab, hidden)
    norm: Tensor
    lm_head: Tensor  # (vocab, hidden); the embedding itself when tied
    layers: list[LayerWeights]


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model directory, in index order when sharded."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"model directory {str(model_dir)!r} has no *.safetensors weights")
    return files


def read_tensors(model_dir: Path) -> dict[str, Tensor]:
    """Every tensor of the model directory by HF name (memory-mapped)."""
    from safetensors.torch import load_file

    tensors: dict[str, Tensor] = {}
    for path in weight_files(model_dir):
        if not path.is_file():
            raise ValueError(f"weight shard {str(path)!r} listed in the index is missing")
        tensors.update(load_file(str(path)))
    return tensors


def build_weights(cfg: ModelConfig, tensors: dict[str, Tensor], dtype: torch.dtype) -> Weights:
    """Per-layer fused weights in `dtype`. Norm weights stay in `dtype` too (HF multiplies in the model dtype)."""
    def get(name: str, required: bool = True) -> Tensor | None:
        if name not in tensors:
            if required:
                raise ValueError(f"weights lack tensor {name!r} (model_type {cfg.model_type})")
            return None
        return tensors[name].to(dtype)

    layers = [_layer(cfg, get, f"model.layers.{i}.") for i in range(cfg.num_layers)]
    embed = get("model.embed_tokens.weight")
    head = get("lm_head.weight", required=False)
    if head is None or cfg.tie_word_embeddings:
        head = embed
    return Weights(embed=embed, norm=get("model.norm.weight"), lm_head=head.contiguous(), layers=layers)


def _layer(cfg: ModelConfig, get, p: str) -> LayerWeights:
    a, m = p + "self_attn.", p + "mlp."
    q, k, v = (get(f"{a}{n}_proj.weight") for n in "qkv")
    biases = [get(f"{a}{n}_proj.bias", required=False) for n in "qkv"]
    sizes = (q.shape[0], k.shape[0], v.shape[0])
    return LayerWeights(
        ln_attn=get(p + "input_layernorm.weight"), ln_mlp=get(p + "post_attention_layernorm.weight"),
        qkv=torch.cat([q, k, v]).contiguous(), o=get(a + "o_proj.weight").contiguous(),
        gate_up=torch.cat([get(m + "gate_proj.weight"), get(m + "up_proj.weight")]).contiguous(),
        down=get(m + "down_proj.weight").contiguous(), qkv_bias=_fuse_bias(biases, sizes),
        o_bias=get(a + "o_proj.bias", required=False),
        gate_up_bias=_fuse_bias([get(m + "gate_proj.bias", False), get(m + "up_proj.bias", False)],
                                (cfg.intermediate_size,) * 2),
        down_bias=get(m + "down_proj.bias", required=False),
        q_norm=get(a + "q_norm.weight", required=cfg.qk_norm), k_norm=get(a + "k_norm.weight", required=cfg.qk_norm))


def _fuse_bias(parts: list[Tensor | None], sizes: tuple[int, ...]) -> Tensor | None:
    if all(b is None for b in parts):
        return None
    ref = next(b for b in parts if b is not None)
    return torch.cat([b if b is not None else ref.new_zeros(n) for b, n in zip(parts, sizes)])
