"""PNG plots for the report (matplotlib, Agg): success per task type with 95% intervals, time per task, steps."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


_SHORT = {"pick_and_place_simple": "pick & place", "pick_two_obj_and_place": "pick two",
          "look_at_obj_in_light": "look in light", "pick_clean_then_place_in_recep": "clean",
          "pick_heat_then_place_in_recep": "heat", "pick_cool_then_place_in_recep": "cool"}


def _short(task_type: str) -> str:
    return _SHORT.get(task_type, task_type)


def success_per_type(summaries: dict[str, dict], path: Path) -> Path:
    types = sorted({t for s in summaries.values() for t in s["per_type"]}) + ["overall"]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(types)), 3.8))
    width = 0.8 / max(1, len(summaries))
    for i, (name, s) in enumerate(summaries.items()):
        cells = [s["per_type"].get(t) if t != "overall" else s for t in types]
        rates = [c["success_rate"] if c else 0.0 for c in cells]
        lo = [max(0.0, c["success_rate"] - c["ci95"][0]) if c else 0.0 for c in cells]   # rounding: >= 0
        hi = [max(0.0, c["ci95"][1] - c["success_rate"]) if c else 0.0 for c in cells]
        xs = [j + (i - (len(summaries) - 1) / 2) * width for j in range(len(types))]
        ax.bar(xs, rates, width, yerr=[lo, hi], capsize=3, label=name)
        for x, c in zip(xs, cells):
            if c:
                ax.text(x, 0.01, f"{c['won']}/{c['games']}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(types)), [_short(t) for t in types], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% Wilson CI)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def time_per_task(summaries: dict[str, dict], path: Path) -> Path:
    names = list(summaries)
    model = [summaries[n]["model_seconds_per_task"] for n in names]
    env = [summaries[n]["env_seconds_per_task"] for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(names)), 3.5))
    ax.bar(names, model, label="model")
    ax.bar(names, env, bottom=model, label="environment")
    for i, (m, e) in enumerate(zip(model, env)):
        ax.text(i, m + e, f"{m + e:.2f}s", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("seconds per task (per episode)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def steps(records: dict[str, list[dict]], path: Path) -> Path:
    names = list(records)
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(names)), 3.5))
    data = [[r["steps"] for r in records[n]] or [0] for n in names]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    won = [[r["steps"] for r in records[n] if r["won"]] for n in names]
    for i, w in enumerate(won, 1):
        ax.scatter([i] * len(w), w, s=8, alpha=0.5, color="tab:green", label="won" if i == 1 else None)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("steps per episode")
    if any(won):
        ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
