"""Prefix KV on disk (safetensors) with its identity; a file that does not match the engine is refused."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from duomem_fast.engine.identity import FORMAT
from duomem_fast.engine.kv import Prefix

if TYPE_CHECKING:
    from duomem_fast.engine.engine import Engine


def save_prefix(engine: "Engine", prefix: Prefix, path: Path) -> None:
    from safetensors.torch import save_file

    if not len(prefix):
        raise ValueError("cannot save an empty prefix")
    tensors = {"k": prefix.k.contiguous(), "v": prefix.v.contiguous(),
               "tokens": torch.tensor(prefix.tokens, dtype=torch.int64), "logits": prefix.logits.contiguous()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "fingerprint": engine.fingerprint,
                                           "dtype": str(engine.dtype), "n_tokens": str(len(prefix))})
    tmp.replace(path)


def load_prefix(engine: "Engine", path: Path, expect: str | Sequence[int] | None) -> Prefix:
    from safetensors import safe_open

    if not path.is_file():
        raise ValueError(f"prefix file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            _check_meta(engine, path, meta)
            t = {name: f.get_tensor(name) for name in ("k", "v", "tokens", "logits")}
    except ValueError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError for a damaged file
        raise ValueError(f"prefix file {str(path)!r} is not a readable duomem prefix: {exc}") from None
    tokens = tuple(int(x) for x in t["tokens"].tolist())
    if expect is not None and tokens != tuple(engine._ids(expect)):
        raise ValueError(f"prefix file {str(path)!r} holds different tokens than expected")
    prefix = Prefix(tokens=tokens, k=t["k"], v=t["v"], logits=t["logits"])
    _check_shapes(engine, path, prefix)
    existing = engine.store.get(tokens)
    if existing is not None:
        return existing
    engine.store.put(prefix)
    return prefix


def _check_meta(engine: "Engine", path: Path, meta: dict) -> None:
    if meta.get("format") != FORMAT:
        raise ValueError(f"prefix file {str(path)!r} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("fingerprint") != engine.fingerprint:
        raise ValueError(f"prefix file {str(path)!r} was made by engine {meta.get('fingerprint')!r} "
                         f"(weights/adapter/merge/dtype), this engine is {engine.fingerprint!r}: refused")


def _check_shapes(engine: "Engine", path: Path, p: Prefix) -> None:
    cfg = engine.config
    want = (cfg.num_layers, len(p.tokens), cfg.num_kv_heads, cfg.head_dim)
    if tuple(p.k.shape) != want or tuple(p.v.shape) != want or p.k.dtype != engine.dtype:
        raise ValueError(f"prefix file {str(path)!r}: KV shape {tuple(p.k.shape)} {p.k.dtype} does not match "
                         f"{want} {engine.dtype}")
