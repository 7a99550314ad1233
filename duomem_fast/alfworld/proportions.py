"""The official ALFWorld split sizes per task type (json_2.1.1, solvable games), used to spread a generated suite
over the six types in the same proportions."""
from __future__ import annotations

from .games import SPLITS, TASK_TYPES

OFFICIAL = {  # pick, look, clean, heat, cool, pick_two (order of TASK_TYPES)
    "train": dict(zip(TASK_TYPES, (790, 308, 650, 459, 533, 813))),          # 3553
    "valid_seen": dict(zip(TASK_TYPES, (35, 13, 27, 16, 25, 24))),           # 140
    "valid_unseen": dict(zip(TASK_TYPES, (24, 18, 31, 23, 21, 17))),         # 134
}


def allocate(n: int, split: str) -> dict[str, int]:
    """n games over the six types in the split's official proportions (largest remainder, ties in type order)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if n < 0:
        raise ValueError(f"number of games must be >= 0, got {n}")
    ref = OFFICIAL[split]
    total = sum(ref.values())
    exact = {t: n * c / total for t, c in ref.items()}
    counts = {t: int(v) for t, v in exact.items()}
    by_remainder = sorted(TASK_TYPES, key=lambda t: (-(exact[t] - counts[t]), TASK_TYPES.index(t)))
    for t in by_remainder[: n - sum(counts.values())]:
        counts[t] += 1
    return counts


def interleave(weights: dict[str, int], n: int) -> list[str]:
    """n task types in smooth weighted round-robin order: every prefix is within one game per type of the
    weights' proportions, a full cycle (n = sum of weights) hits them exactly, and growing n keeps the prefix."""
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"weights must sum to > 0, got {weights}")
    current = {t: 0 for t in weights}
    order = []
    for _ in range(n):
        for t, w in weights.items():
            current[t] += w
        pick = max(weights, key=lambda t: (current[t], -TASK_TYPES.index(t)))
        current[pick] -= total
        order.append(pick)
    return order
