"""Token and time counters kept per engine and per session."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Stats:
    """tokens_encoded: prompt tokens run through the model; tokens_reused: context tokens whose KV was reused
    instead of recomputed (cached prefixes, earlier turns); tokens_generated: decoded tokens; model_seconds: wall
    time inside the model."""

    tokens_encoded: int = 0
    tokens_reused: int = 0
    tokens_generated: int = 0
    model_seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    def copy(self) -> "Stats":
        return Stats(**asdict(self))

    def __sub__(self, other: "Stats") -> "Stats":
        return Stats(*(a - b for a, b in zip(asdict(self).values(), asdict(other).values())))
