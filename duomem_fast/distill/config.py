"""LoRA training configuration (data, adapter shape, optimisation, budget)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from duomem_fast.memory.playbook import PARTS


@dataclass(slots=True)
class TrainConfig:
    """Defaults sized for SmolLM2-135M on a 2-core CPU: ~150 expert episodes of <= 1280 tokens, one epoch."""
    model: str | None = None                 # None = SmolLM2-135M-Instruct via resolve_model_dir(None)
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: str | list[str] = "all-linear"  # peft's name for every linear layer except the LM head
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 4
    epochs: float = 1.0
    grad_accum: int = 8                      # episodes per optimizer step (batch 1: no padding waste)
    max_len: int = 1280                      # tokens per episode; longer ones keep their start
    max_examples: int | None = None          # cap on distinct episodes (after shuffling), None = all
    max_minutes: float | None = None         # stop (and save) when the budget is spent
    bf16: bool | None = None                 # autocast to bf16; None = when the CPU has native bf16
    memory_fraction: float = 0.5             # share of episodes trained with a retrieved playbook in the prompt
    memory_k: int = 2
    memory_parts: str = "script"
    placement: str = "system"
    checkpoint_every: int = 5                # optimizer steps
    seed: int = 0
    threads: int | None = None               # torch threads; None = 1 on a busy CPU, else all (see train.py)
    init_adapter: str | None = None          # start from this PEFT adapter's weights (same rank and targets)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        _positive(rank=self.rank, alpha=self.alpha, grad_accum=self.grad_accum, max_len=self.max_len,
                  checkpoint_every=self.checkpoint_every, memory_k=self.memory_k, lr=self.lr, epochs=self.epochs)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.memory_fraction <= 1.0:
            raise ValueError(f"memory_fraction must be in [0, 1], got {self.memory_fraction}")
        if self.memory_parts not in PARTS:
            raise ValueError(f"memory_parts {self.memory_parts!r} not in {PARTS}")
        if self.placement not in ("system", "after_obs"):
            raise ValueError(f"placement {self.placement!r} not in ('system', 'after_obs')")
        if self.max_len < 64:
            raise ValueError(f"max_len must be >= 64, got {self.max_len}")

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """What changes the trained weights (not the budget, checkpoint cadence or thread count)."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("max_minutes", "checkpoint_every", "threads")}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _positive(**values) -> None:
    for name, v in values.items():
        if v is None or v <= 0:
            raise ValueError(f"{name} must be > 0, got {v!r}")
