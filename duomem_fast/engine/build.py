"""Engine construction: resolve the model, read config and weights, attach or merge the adapter, fingerprint."""
from __future__ import annotations

from pathlib import Path

import torch

from duomem_fast.engine.identity import model_fingerprint
from duomem_fast.lora import attach_adapter, extend_lora_rows, load_adapter, merge_adapter
from duomem_fast.model.arena import pack_weights
from duomem_fast.model.blocks import pack_linears
from duomem_fast.model.config import load_config
from duomem_fast.model.decoder import Decoder
from duomem_fast.model.loader import DEFAULT_MODEL, resolve_model_dir
from duomem_fast.model.weights import build_weights, read_tensors, weight_files

_DTYPES = {None: torch.float32, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, torch.float32: torch.float32, torch.bfloat16: torch.bfloat16}


def parse_dtype(dtype) -> torch.dtype:
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}: expected None, 'float32' or 'bfloat16'")
    return _DTYPES[dtype]


def build_engine(cls, model, adapter, merge_lora: bool, dtype, attn_impl: str = "auto",
                 prefix_budget_bytes: int = 2 << 30, lookahead: int = 0, fused_decode: bool = True,
                 weight_dtype=None, block_weights: bool = True):
    from transformers import AutoTokenizer

    dtype = parse_dtype(dtype)
    wdtype = dtype if weight_dtype is None else parse_dtype(weight_dtype)
    if wdtype != dtype and (dtype, wdtype) != (torch.float32, torch.bfloat16):
        raise ValueError(f"weight_dtype {weight_dtype!r} with dtype {dtype}: only bfloat16 weights under float32 "
                         "activations are supported (or weight_dtype = dtype)")
    model_dir = resolve_model_dir(model)
    cfg = load_config(model_dir)
    weights = build_weights(cfg, read_tensors(model_dir), torch.float32 if adapter else dtype)
    digest = None
    if adapter is not None:
        base_name = DEFAULT_MODEL if model is None else model_dir.name
        lora = load_adapter(adapter, cfg, base_name)
        digest = lora.digest
        if merge_lora:
            merge_adapter(weights, cfg, lora)
        _cast(weights, dtype)
        if not merge_lora:
            attach_adapter(weights, cfg, lora)
    if wdtype != dtype:
        _cast_linears(weights, wdtype)
    if block_weights and dtype == wdtype == torch.float32 and not (adapter is not None and merge_lora):
        pack_linears(weights)  # matrices a GGUF de-quantised, back in their blocks, exactly (model/blocks.py)
    if adapter is not None and not merge_lora and dtype == torch.float32:
        extend_lora_rows(weights)  # the CPU kernels' [W | B] rows; all-bf16 engines keep bf16 x paths apart
    pack_weights(weights)  # one arena in decode read order, on 2 MiB pages (model/arena.py)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fingerprint = model_fingerprint(weight_files(model_dir), model_dir / "config.json", digest, merge_lora, dtype,
                                    None if wdtype == dtype else wdtype)
    engine = cls(Decoder(cfg, weights, dtype, attn_impl, fused_decode), tokenizer, fingerprint, Path(model_dir),
                 prefix_budget_bytes, lookahead)
    engine.adapter_path, engine.merged = (Path(adapter) if adapter else None), bool(merge_lora and adapter)
    return engine


def _cast_linears(weights, dtype: torch.dtype) -> None:
    """Only the projection matrices, their unmerged LoRA factors and lm_head in `dtype` (half the bytes per decode
    token for bf16: fp32 factors beside bf16 weights cost 7% more bytes per token, bf16 ones 3.6%); embeddings, norms
    and biases keep theirs, and activations, residual stream and KV stay in the engine dtype."""
    for lw in weights.layers:
        for name in ("qkv", "o", "gate_up", "down"):
            setattr(lw, name, getattr(lw, name).to(dtype))
        for pair in lw.lora.values():
            pair.a, pair.b = pair.a.to(dtype), pair.b.to(dtype)
    weights.lm_head = weights.lm_head.to(dtype)  # a tied embedding stays fp32 for the lookup


def _cast(weights, dtype: torch.dtype) -> None:
    if dtype == torch.float32:
        return
    tied = weights.lm_head is weights.embed
    for obj in [weights, *weights.layers]:
        for name in obj.__slots__:
            value = getattr(obj, name)
            if isinstance(value, torch.Tensor):
                setattr(obj, name, value.to(dtype))
    if tied:
        weights.lm_head = weights.embed
