"""Teacher trajectories: play the train split with a teacher policy, keep the won episodes.

Any Policy works (docs/design.md): the ALFWorld expert by default; a language-model teacher (local engine, or an
OpenAI-compatible endpoint through the harness) via `policy_factory`. Stochastic teachers play each game
`runs` times (run r gets seed r). Records are appended to one JSONL as episodes end; a rerun skips every
(game, run) already in the file, so an interrupted collection resumes where it stopped.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from duomem_fast.alfworld.agent import run_games
from duomem_fast.alfworld.games import SPLITS, list_games
from duomem_fast.alfworld.records import read_records


@dataclass(slots=True)
class CollectConfig:
    split: str = "train"
    runs: int = 1                   # plays per game (seeds 0..runs-1); >1 only helps stochastic teachers
    max_steps: int = 50
    max_games: int | None = None    # first N games of the sorted split (None = all)
    teacher: str = "expert"         # a label for the records' config fingerprint

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; expected one of {SPLITS}")
        if self.runs < 1 or self.max_steps < 1:
            raise ValueError(f"runs and max_steps must be >= 1, got runs={self.runs}, max_steps={self.max_steps}")
        if self.max_games is not None and self.max_games < 1:
            raise ValueError(f"max_games must be >= 1 or None, got {self.max_games}")


def expert_factory(run: int):
    from duomem_fast.alfworld.expert import ExpertPolicy
    return ExpertPolicy(seed=run)


def collect_trajectories(data_root: str | Path | None, out_jsonl: str | Path, config: CollectConfig | None = None,
                         policy_factory: Callable[[int], object] | None = None, progress: bool = True) -> list[dict]:
    """Play (or resume) the teacher on the split; returns the won, de-duplicated records of this config."""
    from tqdm import tqdm
    cfg = config or CollectConfig()
    factory = policy_factory or expert_factory
    games = list_games(data_root, cfg.split)[:cfg.max_games]
    records = []
    with tqdm(total=len(games) * cfg.runs, desc=f"teacher {cfg.teacher}", unit="game", disable=not progress) as bar:
        for run in range(cfg.runs):
            policy = factory(run)
            fp = {"teacher": cfg.teacher, "run": run, "split": cfg.split}
            for game in games:                       # one game per call: the bar moves, each record is on disk
                records += run_games([game], policy, out_jsonl, fp, max_steps=cfg.max_steps)
                bar.update(1)
                bar.set_postfix(won=sum(r["won"] for r in records))
    return successful(records)


def successful(records: list[dict]) -> list[dict]:
    """Won records, one per distinct (game, action sequence), in their original order."""
    seen, out = set(), []
    for rec in records:
        key = (rec.get("game"), tuple(rec.get("actions", ())))
        if rec.get("won") and key not in seen:
            seen.add(key)
            out.append(rec)
    return out


def read_successful(path: str | Path) -> list[dict]:
    return successful(read_records(path))
