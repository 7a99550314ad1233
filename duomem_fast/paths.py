"""Where duomem-fast keeps what it computes once: converted models, saved prefixes."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: `$DUOMEM_CACHE` if set, else `~/.cache/duomem_fast`. Created on first use."""
    env = os.environ.get("DUOMEM_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "duomem_fast"
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    """Converted models (HF directories) live here."""
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
