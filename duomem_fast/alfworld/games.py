"""Game sources: the official ALFWorld layout `$ALFWORLD_DATA/json_2.1.1/<split>/<task dir>/<trial>/game.tw-pddl`,
and generated suites written in the same layout (marked by `json_2.1.1/GENERATED.json`).

Selection follows alfworld's `AlfredTWEnv.collect_game_files`: a trial folder needs `traj_data.json` and
`game.tw-pddl`, its path must not contain `movable` or `Sliced`, its task type must be one of the six, and the game
must carry `"solvable": true`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
SPLITS = ("train", "valid_seen", "valid_unseen")
SOURCES = ("official", "generated")
DATA_DIR = "json_2.1.1"
GENERATED_MARKER = "GENERATED.json"
GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"
GAME_KEYS = ("pddl_domain", "grammar", "pddl_problem")
# ALFRED goals alfworld knows but does not play (movable receptacles, slices, ...): skipped, not an error.
_OTHER_ALFRED_TYPES = (
    "pick_and_place_with_movable_recep", "pick_heat_and_place_with_movable_recep",
    "pick_cool_and_place_with_movable_recep", "pick_clean_and_place_with_movable_recep",
    "place_all_obj_type_into_recep", "pick_three_obj_and_place",
)


@dataclass(slots=True)
class Game:
    """One playable game. `path` is the `game.tw-pddl` file; `root` the data root its id is relative to."""

    path: Path
    split: str
    source: str
    task_type: str
    root: Path | None = None

    def __post_init__(self):
        self.path = Path(self.path)
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; expected one of {SPLITS}")
        if self.source not in SOURCES:
            raise ValueError(f"unknown game source {self.source!r}; expected one of {SOURCES}")
        check_task_type(self.task_type, where=str(self.path))

    @property
    def id(self) -> str:
        """The game file's path relative to the data root (its last three parts when no root is known)."""
        if self.root is not None:
            return self.path.relative_to(self.root).as_posix()
        return "/".join(self.path.parts[-3:])

    @property
    def traj_path(self) -> Path:
        return self.path.parent / TRAJ_FILE


def check_task_type(task_type: str, where: str = "") -> str:
    if task_type not in TASK_TYPES:
        at = f" in {where}" if where else ""
        raise ValueError(f"unknown task type {task_type!r}{at}; expected one of {TASK_TYPES}")
    return task_type


def resolve_root(data_root: Path | str | None = None) -> Path:
    """`data_root` or `$ALFWORLD_DATA`; it must exist and hold `json_2.1.1/`."""
    if data_root is None:
        env = os.environ.get("ALFWORLD_DATA")
        if not env:
            raise ValueError("no data root given and ALFWORLD_DATA is not set")
        data_root = env
    root = Path(os.path.expandvars(str(data_root))).expanduser()
    if not (root / DATA_DIR).is_dir():
        raise ValueError(f"ALFWorld data folder missing: {root / DATA_DIR} does not exist")
    return root


def suite_source(root: Path) -> str:
    return "generated" if (root / DATA_DIR / GENERATED_MARKER).is_file() else "official"


def read_json(path: Path, keys: tuple[str, ...] = ()) -> dict:
    """Parse a JSON object; ValueError naming the file when it is not JSON or lacks one of `keys`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable JSON file: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{path} lacks key(s) {missing}")
    return data


def traj_task_type(traj_path: Path) -> str:
    data = read_json(traj_path, ("task_type",))
    return data["task_type"]


def _select(trial: Path) -> str | None:
    """The task type if alfworld would play this trial folder, None if it would skip it."""
    if "movable" in str(trial) or "Sliced" in str(trial):
        return None
    task_type = traj_task_type(trial / TRAJ_FILE)
    if task_type in _OTHER_ALFRED_TYPES or task_type.endswith("_slice"):
        return None
    check_task_type(task_type, where=str(trial / TRAJ_FILE))
    game_path = trial / GAME_FILE
    if not game_path.is_file():
        return None
    game = read_json(game_path, GAME_KEYS)
    return task_type if game.get("solvable") else None


def list_games(data_root: Path | str | None, split: str) -> list[Game]:
    """The playable games of one split, sorted by id.

    data_root: folder holding `json_2.1.1/` (None: `$ALFWORLD_DATA`); split: one of SPLITS.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    root = resolve_root(data_root)
    split_dir = root / DATA_DIR / split
    if not split_dir.is_dir():
        raise ValueError(f"ALFWorld split folder missing: {split_dir}")
    source = suite_source(root)
    games = []
    for traj in sorted(split_dir.rglob(TRAJ_FILE)):
        task_type = _select(traj.parent)
        if task_type is not None:
            games.append(Game(traj.parent / GAME_FILE, split, source, task_type, root))
    if not games:
        raise ValueError(f"split {split!r} is empty: no solvable game under {split_dir}")
    return sorted(games, key=lambda g: g.id)
