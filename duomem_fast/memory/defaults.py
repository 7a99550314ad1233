"""The memory bank and LoRA adapter shipped in `duomem_fast/assets/` (see assets/CARD.md for how they were built)."""
from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def default_bank_path() -> Path | None:
    """The shipped memory bank (JSONL; embeddings beside it), or None when none is shipped."""
    path = ASSETS / "bank.jsonl"
    return path if path.exists() else None


def default_adapter_dir() -> Path | None:
    """The shipped PEFT adapter directory for the default student, or None when none is shipped."""
    path = ASSETS / "adapter"
    ok = (path / "adapter_config.json").exists() and (path / "adapter_model.safetensors").exists()
    return path if ok else None
