"""Per split and task type: games generated (slots written), expert plays (candidate games the expert played
before one was won or the slot gave up), solvable (won by the expert within the step budget), expert steps."""
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
        stats = {t: {"generated": 0, "solvable": 0, "steps": [], "plays": 0} for t in TASK_TYPES}
        for game_path in split_dir.glob(f"*/*/{GAME_FILE}"):
            traj = json.loads((game_path.parent / TRAJ_FILE).read_text())
            s = stats[traj["task_type"]]
            s["generated"] += 1
            s["plays"] += traj.get("generated", {}).get("plays", 0)
            if json.loads(game_path.read_text()).get("solvable"):
                s["solvable"] += 1
                s["steps"].append(traj.get("generated", {}).get("expert", {}).get("steps"))
        for t, s in stats.items():
            steps = [x for x in s["steps"] if x is not None]
            rows.append({"split": split, "task_type": t, "generated": s["generated"], "expert_plays": s["plays"],
                         "solvable": s["solvable"],
                         "expert_steps_mean": round(statistics.mean(steps), 1) if steps else None,
                         "expert_steps_max": max(steps) if steps else None})
    return rows


def print_report(out_root) -> str:
    from ..timing import print_table

    print(f"suite {out_root} (source: {suite_source(Path(out_root))})")
    return print_table(suite_rows(out_root))


def _replay(game_path: str, seed: int, fix_move: bool, max_steps: int) -> dict:
    from .agent import run_episode
    from .expert import ExpertPolicy
    from .games import Game

    traj = json.loads((Path(game_path).parent / TRAJ_FILE).read_text())
    game = Game(Path(game_path), "train", "generated", traj["task_type"])
    rec = run_episode(game, ExpertPolicy(seed=seed, fix_move=fix_move), max_steps=max_steps)
    return {"task_type": traj["task_type"], "won": rec["won"], "steps": rec["steps"]}


def replay_suite(out_root, split: str, seed: int = 0, fix_move: bool = True, max_steps: int = 40,
                 workers: int = 2, task_types: tuple[str, ...] = TASK_TYPES) -> list[dict]:
    """Play the expert again on every solvable game of a split (e.g. to check a suite, or the unfixed expert)."""
    from concurrent.futures import ProcessPoolExecutor

    from .games import list_games

    games = [g for g in list_games(out_root, split) if g.task_type in task_types]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_replay, str(g.path), seed, fix_move, max_steps) for g in games]
        return [f.result() for f in futures]
