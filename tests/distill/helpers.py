import random
import shutil
from pathlib import Path

from duomem_fast.memory.synthetic import synthetic_record
from duomem_fast.memory.tasks import TASK_TYPES

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared" / "alfworld" / "real_sample_single_agent"


def records(n_per_type: int = 1, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [synthetic_record(t, rng) for t in TASK_TYPES for _ in range(n_per_type)]


def sample_suite(root: Path, split: str = "train") -> Path:
    """The real ALFWorld sample copied into the official layout: a one-game suite under `root`."""
    dst = root / "json_2.1.1" / split / "pick_heat_then_place_in_recep-Potato-None-SinkBasin-1" / "trial_T1"
    dst.mkdir(parents=True)
    for name in ("game.tw-pddl", "traj_data.json"):
        shutil.copy(SAMPLE / name, dst / name)
    return root
