"""Fingerprints: what a cached prefix's KV depends on (weights, adapter content, merged or not, dtype)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

FORMAT = "duomem-kv-1"
_SAMPLES, _CHUNK = 64, 16384  # 1 MiB read per file: content-sensitive without hashing 0.5 GB on every load


def file_digest(path: Path, full: bool = False) -> str:
    """sha256 of a file: the whole file if `full`, else its size, header and 64 spread 16 KiB samples."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        if full or size <= _SAMPLES * _CHUNK:
            h.update(f.read())
        else:
            for i in range(_SAMPLES):
                f.seek(i * (size - _CHUNK) // (_SAMPLES - 1))
                h.update(f.read(_CHUNK))
    return h.hexdigest()


def model_fingerprint(files: list[Path], config: Path, adapter_digest: str | None, merged: bool,
                      dtype: torch.dtype, weight_dtype: torch.dtype | None = None) -> str:
    """One short hex id for (weights, adapter content, merged, dtype, weight dtype where it differs, KV format)."""
    h = hashlib.sha256(FORMAT.encode())
    h.update(file_digest(config, full=True).encode())
    for f in files:
        h.update(file_digest(f).encode())
    h.update(f"adapter={adapter_digest}|merged={merged and adapter_digest is not None}|dtype={dtype}".encode())
    if weight_dtype is not None:  # unmerged LoRA factors follow the weight dtype
        h.update(f"|weights={weight_dtype}{'|lora=w' if adapter_digest and not merged else ''}".encode())
    return h.hexdigest()[:24]
