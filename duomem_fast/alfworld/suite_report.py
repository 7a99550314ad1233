"""Per split and task type: games generated, solvable, expert steps (read back from the suite's traj_data)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from .games import DATA_DIR, GAME_FILE, SPLITS, TASK_TYPES, TRAJ_FILE, suite_source


def suite_rows(out_root) -> list[dict]:
    out_root = Path(out_root)
    rows = []
    for split in SPLITS:
        split_dir = out_root / DATA_DIR / split
        if not split_dir.is_dir():
            continue
        stats = {t: {"generated": 0, "solvable": 0, "steps": []} for t in TASK_TYPES}
        for game_path in split_dir.glob(f"*/*/{GAME_FILE}"):
            traj = json.loads((game_path.parent / TRAJ_FILE).read_text())
            s = stats[traj["task_type"]]
            s["generated"] += 1
            if json.loads(game_path.read_text()).get("solvable"):
                s["solvable"] += 1
                s["steps"].append(traj.get("generated", {}).get("expert", {}).get("steps"))
        for t, s in stats.items():
            steps = [x for x in s["steps"] if x is not None]
            rows.append({"split": split, "task_type": t, "generated": s["generated"], "solvable": s["solvable"],
                         "expert_steps_mean": round(statistics.mean(steps), 1) if steps else None,
                         "expert_steps_max": max(steps) if steps else None})
    return rows


def print_report(out_root) -> str:
    from ..timing import print_table

    print(f"suite {out_root} (source: {suite_source(Path(out_root))})")
    return print_table(suite_rows(out_root))
