"""Offline game generator: suites in the official json_2.1.1 layout, from what the alfworld wheel ships.

    python -m duomem_fast.alfworld.generate OUT --split valid_unseen=134 --split train=200 [--seed 0 --workers 2]

Each split gets its games spread over the six task types in the official proportions (interleaved, so a suite cut
short stays balanced). Game k of a split is deterministic from (seed, split, k): up to MAX_TRIES samples of a scene
(train/valid_seen: ALFRED's training scenes; valid_unseen: the held-out FloorPlan 1-6, 201-206, 301-306, 401-406)
and task; the first that the expert wins within EXPERT_STEPS steps is written as solvable. A slot that never wins is
written with "solvable": false (alfworld and list_games skip it). Finished slots are skipped on rerun.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from .agent import run_episode
from .expert import ExpertPolicy
from .games import DATA_DIR, GAME_FILE, GENERATED_MARKER, SPLITS, TRAJ_FILE, Game, check_task_type
from .problem import game_files
from .proportions import OFFICIAL, interleave
from .sample import place_objects, sample_task
from .scene import constants, load_scene
from .suite_report import print_report

EXPERT_STEPS = 40
MAX_TRIES = 48     # scene/task samples per slot (most rejections are cheap: the room cannot host the task)
MAX_PLAYS = 4      # expert plays per slot (each costs a game load and up to EXPERT_STEPS steps)
VERSION = 1


def split_scenes(split: str) -> list[int]:
    c = constants()
    return list(c.TEST_SCENE_NUMBERS if split == "valid_unseen" else c.TRAIN_SCENE_NUMBERS)


def trial_name(seed: int, k: int) -> str:
    return f"trial_S{seed}_{k:05d}"


def done_slots(out_root: Path, split: str, seed: int) -> dict[int, Path]:
    """Slots whose game file is written (solvable or not), keyed by k."""
    found = {}
    for game in (out_root / DATA_DIR / split).glob(f"*/trial_S{seed}_*/{GAME_FILE}"):
        found[int(game.parent.name.rsplit("_", 1)[1])] = game.parent
    return found


def _write(trial: Path, game: dict, traj: dict) -> None:
    trial.mkdir(parents=True, exist_ok=True)
    (trial / TRAJ_FILE).write_text(json.dumps(traj, indent=1))
    tmp = trial / (GAME_FILE + ".tmp")
    tmp.write_text(json.dumps(game))
    tmp.replace(trial / GAME_FILE)  # written last and atomically: its presence marks the slot done


def _expert_play(trial: Path, seed: int) -> dict:
    game = Game(trial / GAME_FILE, "train", "generated", json.loads((trial / TRAJ_FILE).read_text())["task_type"])
    rec = run_episode(game, ExpertPolicy(seed=seed), max_steps=EXPERT_STEPS)
    return {"won": rec["won"], "steps": rec["steps"], "actions": rec["actions"], "task": rec["task"]}


def _sample(task_type: str, split: str, rng: random.Random):
    scene = load_scene(rng.choice(split_scenes(split)), rng)
    task = sample_task(task_type, scene, rng)
    if task is None:
        return None
    place_objects(task, scene, rng)
    return game_files(f"gen_{rng.getrandbits(48):012x}", task, scene, rng)


def make_slot(out_root: str, split: str, k: int, task_type: str, seed: int) -> dict:
    """Generate and verify slot k of a split; returns its summary (task_type, solvable, steps, tries, plays)."""
    out_root = Path(out_root)
    scratch = out_root / DATA_DIR / ".scratch" / f"{split}_{seed}_{k:05d}"
    try:
        found = _search(task_type, split, k, seed, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if found is None:
        return {"k": k, "task_type": task_type, "solvable": False, "steps": None, "tries": MAX_TRIES, "plays": 0}
    game, traj, expert, tries, plays = found
    game["solvable"] = bool(expert["won"])
    traj["generated"] = {"seed": seed, "slot": k, "tries": tries, "plays": plays, "expert": expert,
                         "generator_version": VERSION}
    params = traj["pddl_params"]
    target = params["parent_target"] or params["toggle_target"]
    task_dir = f"{task_type}-{params['object_target']}-None-{target}-{traj['scene']['scene_num']}"
    _write(out_root / DATA_DIR / split / task_dir / trial_name(seed, k), game, traj)
    return {"k": k, "task_type": task_type, "solvable": game["solvable"], "steps": expert["steps"],
            "tries": tries, "plays": plays}


def _search(task_type: str, split: str, k: int, seed: int, scratch: Path):
    """Sample until the expert wins (or MAX_TRIES samples / MAX_PLAYS plays are spent).
    -> (game, traj, expert result, tries, plays) of the last game played, None if none could be sampled."""
    plays, last = 0, None
    for attempt in range(MAX_TRIES):
        files = _sample(task_type, split, random.Random(f"{seed}:{split}:{k}:{attempt}"))
        if files is None:
            continue
        shutil.rmtree(scratch, ignore_errors=True)
        _write(scratch, *files)
        plays += 1
        last = (*files, _expert_play(scratch, seed), attempt + 1, plays)
        if last[2]["won"] or plays >= MAX_PLAYS:
            return last
    return last


def _mark(out_root: Path, seed: int) -> None:
    marker = out_root / DATA_DIR / GENERATED_MARKER
    marker.parent.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        info = {"generator": "duomem_fast.alfworld.generate", "version": VERSION, "seed": seed,
                "note": "generated offline from the alfworld wheel's layouts and goal library; not official games"}
        marker.write_text(json.dumps(info, indent=1))


def slot_types(n: int | dict, split: str) -> list[str]:
    """Task type of each slot k. n: a number of games (types in the split's official proportions) or
    {task_type: count}. Interleaved and prefix-stable, so a suite cut short or grown later stays balanced."""
    if isinstance(n, int):
        if n < 0:
            raise ValueError(f"number of games must be >= 0, got {n}")
        return interleave(OFFICIAL[split], n)
    weights = {check_task_type(t): int(v) for t, v in n.items()}
    return interleave(weights, sum(weights.values()))


def build_suite(out_root, counts: dict, seed: int = 0, workers: int = 2, progress: bool = True) -> list[dict]:
    """Generate (or finish) a suite. counts: split -> number of games, or split -> {task_type: number}.

    Splits are built in the order given. Returns the summaries of the slots generated in this call.
    """
    out_root = Path(out_root)
    for split in counts:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _mark(out_root, seed)
    shutil.rmtree(out_root / DATA_DIR / ".scratch", ignore_errors=True)  # left by a killed run
    jobs = []
    for split, n in counts.items():
        done = done_slots(out_root, split, seed)
        jobs += [(str(out_root), split, k, t, seed) for k, t in enumerate(slot_types(n, split)) if k not in done]
    return _run(jobs, workers, progress)


def _run(jobs: list[tuple], workers: int, progress: bool) -> list[dict]:
    bar = _progress(len(jobs), progress)
    results = []
    if workers == 1:
        for job in jobs:
            results.append(make_slot(*job))
            bar(results[-1])
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(make_slot, *job): job for job in jobs}
        for fut in as_completed(futures):
            try:
                results.append(fut.result())
                bar(results[-1])
            except Exception as exc:  # one broken slot must not stop the suite; a rerun retries it
                _, split, k, task_type, _ = futures[fut]
                bar({"k": k, "task_type": task_type, "error": repr(exc)})
    return results


def _progress(total: int, enabled: bool):
    """A tqdm bar on a terminal; one line per finished slot otherwise (logs of background runs)."""
    from tqdm import tqdm

    if not enabled:
        return lambda result: None
    if sys.stderr.isatty():
        bar = tqdm(total=total, desc="games", unit="game")
        return lambda result: (bar.update(), bar.set_postfix_str(f"{result.get('task_type', '')}"))
    count = iter(range(1, total + 1))
    return lambda result: print(f"[{next(count)}/{total}] {json.dumps(result)}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="data root; games go to OUT/json_2.1.1/<split>/")
    p.add_argument("--split", action="append", required=True, help="SPLIT=N, e.g. valid_unseen=134 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    counts = {}
    for item in args.split:
        name, _, n = item.partition("=")
        if not n.isdigit():
            raise SystemExit(f"--split needs SPLIT=N, got {item!r}")
        counts[name] = int(n)
    build_suite(args.out, counts, seed=args.seed, workers=args.workers, progress=not args.no_progress)
    print_report(args.out)


if __name__ == "__main__":
    main()
