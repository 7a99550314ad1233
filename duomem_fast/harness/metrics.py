"""Per-agent metrics over episode records, and the paired comparison of two agents on the same games."""
from __future__ import annotations

import math
from collections import defaultdict


def wilson(won: int, games: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a success rate (95% at z=1.96); (0, 1) when there are no games."""
    if games <= 0:
        return (0.0, 1.0)
    p = won / games
    denom = 1 + z * z / games
    centre = (p + z * z / (2 * games)) / denom
    half = z * math.sqrt(p * (1 - p) / games + z * z / (4 * games * games)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _rate(won: int, games: int) -> dict:
    lo, hi = wilson(won, games)
    return {"games": games, "won": won, "success_rate": won / games if games else 0.0, "ci95": [lo, hi]}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(records: list[dict], wall_seconds: float | None = None) -> dict:
    """Summary of one agent's episodes.

    wall_seconds: elapsed time of the whole (possibly parallel) run, for the amortised time per task.
    Per-episode figures (model/env/wall seconds per task) are latencies; with parallel episodes their sum exceeds
    the run's elapsed time.
    """
    n = len(records)
    won = sum(bool(r["won"]) for r in records)
    by_type: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_type[r.get("task_type", "unknown")].append(r)
    model_s = sum(float(r.get("model_seconds", 0.0)) for r in records)
    tokens_out = sum(int(r.get("tokens_out", 0)) for r in records)
    tokens_in = sum(int(r.get("tokens_in", 0)) for r in records)
    out = _rate(won, n)
    out.update({
        "per_type": {t: _rate(sum(bool(r["won"]) for r in rs), len(rs)) for t, rs in sorted(by_type.items())},
        "avg_steps": _mean([float(r.get("steps", 0)) for r in records]),
        "avg_steps_won": _mean([float(r.get("steps", 0)) for r in records if r["won"]]),
        "model_seconds_per_task": model_s / n if n else 0.0,
        "env_seconds_per_task": _mean([float(r.get("env_seconds", 0.0)) for r in records]),
        "wall_seconds_per_task": _mean([float(r.get("wall_seconds", 0.0)) for r in records]),
        "tokens_in": tokens_in,
        "tokens_reused": sum(int(r.get("tokens_reused", 0)) for r in records),
        "tokens_out": tokens_out,
        "tokens_in_per_task": tokens_in / n if n else 0.0,
        "tokens_out_per_task": tokens_out / n if n else 0.0,
        "gen_tok_per_s": tokens_out / model_s if model_s > 0 else 0.0,
        "total_tok_per_s": (tokens_in + tokens_out) / model_s if model_s > 0 else 0.0,
    })
    if wall_seconds is not None:
        out["run_seconds"] = wall_seconds
        out["run_seconds_per_task"] = wall_seconds / n if n else 0.0
    return out


def paired(student: list[dict], teacher: list[dict]) -> dict:
    """Paired outcome table on the games both agents played: both / only_teacher / only_student / neither."""
    s = {r["game"]: bool(r["won"]) for r in student}
    t = {r["game"]: bool(r["won"]) for r in teacher}
    common = sorted(set(s) & set(t))
    table = {"games": len(common), "both": 0, "only_teacher": 0, "only_student": 0, "neither": 0}
    for g in common:
        key = {(True, True): "both", (False, True): "only_teacher",
               (True, False): "only_student", (False, False): "neither"}[(s[g], t[g])]
        table[key] += 1
    return table


def speedup(student: dict, teacher: dict) -> dict:
    """Teacher time over student time per task (>1 means the student is faster), from two summaries."""
    def ratio(key: str) -> float | None:
        a, b = teacher.get(key, 0.0), student.get(key, 0.0)
        return a / b if b > 0 and a > 0 else None
    return {"wall": ratio("wall_seconds_per_task"), "model": ratio("model_seconds_per_task"),
            "run": ratio("run_seconds_per_task")}
