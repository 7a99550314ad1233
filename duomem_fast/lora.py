"""PEFT LoRA adapter directories (adapter_config.json + adapter_model.safetensors): validate, merge or keep unmerged.

Unmerged LoRA on the fused q/k/v (and gate/up) weight is one `lora_linear` call: the per-module A matrices are
stacked into (3r, K) and the B matrices placed block-diagonally into (N_q + 2 N_kv, 3r), the scale folded into B.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from duomem_fast.model.config import ModelConfig
from duomem_fast.model.weights import LayerWeights, LoraPair, Weights

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
_FUSED = {"q": "qkv", "k": "qkv", "v": "qkv", "o": "o", "gate": "gate_up", "up": "gate_up", "down": "down"}
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+?)_proj\.lora_([AB])(?:\.default)?\.weight$")


@dataclass(slots=True)
class Adapter:
    """A validated adapter: per (layer, module) the fp32 A (r, K), B (N, r) and its scale."""

    path: Path
    config: dict
    modules: dict[tuple[int, str], tuple[Tensor, Tensor, float]] = field(default_factory=dict)
    digest: str = ""

    @property
    def targets(self) -> list[str]:
        return sorted({m for _, m in self.modules}, key=TARGETS.index)


def load_adapter(path: str | Path, cfg: ModelConfig, base_name: str | None = None) -> Adapter:
    """Read and validate a PEFT LoRA directory against the base model `cfg` (named `base_name`).

    Raises ValueError naming the problem: missing file, unsupported option, unknown target module, a shape that
    does not fit the base model, or an adapter trained on a different base model.
    """
    path = Path(path).expanduser()
    conf_path, weights_path = path / "adapter_config.json", path / "adapter_model.safetensors"
    for needed in (conf_path, weights_path):
        if not needed.is_file():
            raise ValueError(f"adapter {str(path)!r}: missing file {needed.name}")
    config = json.loads(conf_path.read_text())
    _check_config(path, config, base_name)
    from safetensors.torch import load_file

    raw = load_file(str(weights_path))
    adapter = Adapter(path=path, config=config, digest=_digest(conf_path, weights_path))
    pairs: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, tensor in raw.items():
        match = _KEY.search(key)
        if match is None or match.group(2) not in TARGETS:
            raise ValueError(f"adapter {str(path)!r}: unknown target module in tensor {key!r}; "
                             f"supported targets are {[t + '_proj' for t in TARGETS]}")
        layer, module, ab = int(match.group(1)), match.group(2), match.group(3)
        pairs.setdefault((layer, module), {})[ab] = tensor.float()
    for (layer, module), ab in sorted(pairs.items()):
        a, b = _check_pair(path, cfg, layer, module, ab)
        adapter.modules[(layer, module)] = (a, b, _scale(config, f"layers.{layer}.{module}_proj", a.shape[0]))
    if not adapter.modules:
        raise ValueError(f"adapter {str(path)!r} holds no LoRA tensors")
    return adapter


def _check_config(path: Path, config: dict, base_name: str | None) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"adapter {str(path)!r}: peft_type {config.get('peft_type')!r} is not LORA")
    for key, bad in (("use_dora", True), ("fan_in_fan_out", True)):
        if config.get(key) == bad:
            raise ValueError(f"adapter {str(path)!r}: {key}={bad} is not supported")
    if config.get("bias", "none") != "none" or config.get("modules_to_save"):
        raise ValueError(f"adapter {str(path)!r}: trained biases / modules_to_save are not supported")
    targets = config.get("target_modules") or []
    if isinstance(targets, list):
        # peft saves "all-linear" as full module paths (model.layers.0.self_attn.q_proj): judge the last part
        unknown = [t for t in targets if t.rsplit(".", 1)[-1].removesuffix("_proj") not in TARGETS]
        if unknown:
            raise ValueError(f"adapter {str(path)!r}: unknown target module(s) {unknown}; "
                             f"supported are {[t + '_proj' for t in TARGETS]}")
    trained_on = config.get("base_model_name_or_path")
    if base_name and trained_on and _short(trained_on) != _short(base_name):
        raise ValueError(f"adapter {str(path)!r} was trained on base model {trained_on!r}, "
                         f"but this engine runs {base_name!r}")


def _short(name: str) -> str:
    return str(name).rstrip("/").split("/")[-1].lower()


def _check_pair(path: Path, cfg: ModelConfig, layer: int, module: str, ab: dict) -> tuple[Tensor, Tensor]:
    where = f"adapter {str(path)!r}: layers.{layer}.{module}_proj"
    if set(ab) != {"A", "B"}:
        raise ValueError(f"{where} has lora_{'A' if 'A' not in ab else 'B'} missing")
    if layer >= cfg.num_layers:
        raise ValueError(f"{where}: layer {layer} does not exist (the base model has {cfg.num_layers} layers)")
    n, k = _shape(cfg, module)
    a, b = ab["A"], ab["B"]
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != k or b.shape[0] != n or a.shape[0] != b.shape[1]:
        raise ValueError(f"{where}: shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not fit the base weight "
                         f"({n}, {k}) (expected A (r, {k}) and B ({n}, r))")
    return a, b


def _shape(cfg: ModelConfig, module: str) -> tuple[int, int]:
    h, i = cfg.hidden_size, cfg.intermediate_size
    return {"q": (cfg.q_size, h), "k": (cfg.kv_size, h), "v": (cfg.kv_size, h), "o": (h, cfg.q_size),
            "gate": (i, h), "up": (i, h), "down": (h, i)}[module]


def _scale(config: dict, name: str, rank: int) -> float:
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            alpha = value
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _digest(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def merge_adapter(weights: Weights, cfg: ModelConfig, adapter: Adapter) -> None:
    """W += s·B A for every adapted module, in fp32, in place on the fused weights."""
    for (layer, module), (a, b, s) in adapter.modules.items():
        lw = weights.layers[layer]
        fused, start = _slot(cfg, module)
        w = getattr(lw, fused)
        rows = slice(start, start + b.shape[0])
        w[rows] = (w[rows].float() + s * (b @ a)).to(w.dtype)


def attach_adapter(weights: Weights, cfg: ModelConfig, adapter: Adapter) -> None:
    """Unmerged: per fused linear one LoraPair, A stacked (Σr, K), B block-structured (N, Σr), scale folded in B."""
    for layer, lw in enumerate(weights.layers):
        for fused in ("qkv", "o", "gate_up", "down"):
            parts = [(m, *adapter.modules[(layer, m)]) for m in TARGETS
                     if _FUSED[m] == fused and (layer, m) in adapter.modules]
            if parts:
                lw.lora[fused] = _stack(cfg, fused, parts, getattr(lw, fused))


def extend_lora_rows(weights: Weights) -> None:
    """Store each unmerged B as the continuation of its W's rows: one (N, K + r) tensor whose column slices are the
    linear's weight and its LoRA B (no extra memory). The CPU lora_linear recognises the pair and computes
    [x | s·x Aᵀ] · [W | B]ᵀ: each decode GEMV reads one stream instead of W plus a thin second one, and an append
    runs one GEMM instead of base GEMM, expand GEMM and an add. Other backends see an ordinary strided W and B.
    A sits just before them in the same allocation, so a decode call's shrink pass runs on into the W stream.
    A W kept in GGUF blocks (model/blocks.py) keeps its B apart: the block kernel adds the expand itself."""
    for lw in weights.layers:
        for name, pair in lw.lora.items():
            w = getattr(lw, name)
            if w.dtype == torch.uint8:
                continue
            (n, k), r = w.shape, pair.a.shape[0]
            buf = torch.empty(r * k + n * (k + r), dtype=w.dtype)
            a, ext = buf[:r * k].view(r, k), buf[r * k:].view(n, k + r)
            a.copy_(pair.a), ext[:, :k].copy_(w), ext[:, k:].copy_(pair.b)
            setattr(lw, name, ext[:, :k])
            pair.a, pair.b = a, ext[:, k:]


def _stack(cfg: ModelConfig, fused: str, parts: list, w: Tensor) -> LoraPair:
    a = torch.cat([p[1] for p in parts])
    b = torch.zeros(w.shape[0], a.shape[0])
    col = 0
    for module, _, b_m, s in parts:
        _, start = _slot(cfg, module)
        b[start:start + b_m.shape[0], col:col + b_m.shape[1]] = s * b_m
        col += b_m.shape[1]
    return LoraPair(a=a.to(w.dtype).contiguous(), b=b.to(w.dtype).contiguous())


def _slot(cfg: ModelConfig, module: str) -> tuple[str, int]:
    """(fused weight name, first row of `module` inside it)."""
    offsets = {"q": 0, "k": cfg.q_size, "v": cfg.q_size + cfg.kv_size, "gate": 0, "up": cfg.intermediate_size}
    return _FUSED[module], offsets.get(module, 0)


def layer_has_lora(lw: LayerWeights) -> bool:
    return bool(lw.lora)
