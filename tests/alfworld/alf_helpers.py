import importlib.util
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "alfworld"
SAMPLE = SHARED / "real_sample_single_agent"
HAVE_ALFWORLD = all(importlib.util.find_spec(m) for m in ("alfworld", "textworld", "fast_downward"))

needs_alfworld = pytest.mark.skipif(not HAVE_ALFWORLD, reason="alfworld/textworld/fast_downward not installed")
needs_sample = pytest.mark.skipif(not (SAMPLE / "game.tw-pddl").is_file(),
                                  reason=f"real ALFWorld sample not found at {SAMPLE}")


def make_official(root: Path, split: str = "valid_unseen",
                  task_dir: str = "pick_heat_then_place_in_recep-Potato-None-SinkBasin-1",
                  trial: str = "trial_T20190908_231731_054988") -> Path:
    """Copy the real sample into the official layout under root; returns the trial folder."""
    dst = root / "json_2.1.1" / split / task_dir / trial
    dst.mkdir(parents=True)
    for name in ("game.tw-pddl", "traj_data.json"):
        shutil.copy(SAMPLE / name, dst / name)
    return dst


def write_trial(root: Path, split: str, task_dir: str, task_type: str, game: dict | str | None) -> Path:
    dst = root / "json_2.1.1" / split / task_dir / "trial_1"
    dst.mkdir(parents=True)
    (dst / "traj_data.json").write_text(json.dumps({"task_type": task_type, "pddl_params": {}}))
    if game is not None:
        (dst / "game.tw-pddl").write_text(game if isinstance(game, str) else json.dumps(game))
    return dst
