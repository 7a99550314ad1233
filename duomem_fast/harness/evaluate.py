"""Evaluate one or more agents on the same games, in the same order, and write the report.

Each agent's episodes go to `<out>/runs/<agent>-<fingerprint>/episodes.jsonl` (the fingerprint covers the agent's
config, the data root, the split and max_steps, not the number of games: a larger --games extends a run);
`<out>/summary.json`, `<out>/report.md` and `<out>/plots/` describe the games of this invocation.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .agents import Agent
from .report import machine_state, write_report
from .runner import RunOptions, run_games
from .store import EpisodeLog, fingerprint, run_dir

HARNESS_VERSION = 1


def default_data_root() -> Path:
    """$ALFWORLD_DATA, else ~/.cache/duomem_fast/alfworld."""
    env = os.environ.get("ALFWORLD_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "duomem_fast" / "alfworld"


@dataclass(slots=True)
class EvalConfig:
    data_root: Path = field(default_factory=default_data_root)
    split: str = "valid_unseen"
    games: int = 0                # first N games of the split (0 = all)
    max_steps: int = 50
    workers: int = 2
    out: Path = Path("runs/latest")
    progress: bool = True

    def __post_init__(self):
        self.data_root, self.out = Path(self.data_root).expanduser(), Path(self.out)
        if self.games < 0:
            raise ValueError(f"games must be >= 0 (0 = all), got {self.games!r}")
        RunOptions(self.max_steps, self.workers)      # validates both


def interleave_by_type(games: list) -> list:
    """Round-robin over task types (each type's games sorted by id), so the first N games cover every type."""
    by_type: dict[str, list] = {}
    for g in sorted(games, key=lambda g: g.id):
        by_type.setdefault(g.task_type, []).append(g)
    queues = [by_type[t] for t in sorted(by_type)]
    out = []
    for i in range(max(map(len, queues), default=0)):
        out += [q[i] for q in queues if i < len(q)]
    return out


def select_games(cfg: EvalConfig) -> list:
    """The first cfg.games games of the split in type-interleaved order: every agent gets this list, in order."""
    from ..alfworld.games import list_games

    games = interleave_by_type(list_games(cfg.data_root, cfg.split))
    return games[: cfg.games] if cfg.games else games


def ensure_suite(cfg: EvalConfig, n: int, seed: int = 0) -> bool:
    """Build a generated suite of n games for cfg.split under cfg.data_root if that split has none. True if built."""
    from ..alfworld.games import DATA_DIR

    if (cfg.data_root / DATA_DIR / cfg.split).is_dir():
        return False
    from ..alfworld.generate import build_suite

    print(f"no games under {cfg.data_root / DATA_DIR / cfg.split}: generating {n} {cfg.split} games there "
          f"(seed {seed}, {cfg.workers} workers)", file=sys.stderr)
    build_suite(cfg.data_root, {cfg.split: n}, seed=seed, workers=cfg.workers, progress=cfg.progress)
    return True


def run_config(agent: Agent, cfg: EvalConfig) -> dict:
    """What identifies a run: the agent's config, the games' source and the episode limit."""
    return {"agent": agent.config, "data_root": str(cfg.data_root.resolve()), "split": cfg.split,
            "max_steps": cfg.max_steps, "harness": HARNESS_VERSION}


def run_agent(agent: Agent, games: list, cfg: EvalConfig) -> dict:
    """Play `games` with `agent` (resuming its run dir); returns {records, seconds, run_dir, spec, errors}."""
    config = run_config(agent, cfg)
    rdir = run_dir(cfg.out, agent.name, config)
    log = EpisodeLog(rdir / "episodes.jsonl")
    plan = dataclasses.replace(agent.plan, play=functools.partial(agent.plan.play, config=fingerprint(config)[:16]))
    before = sum(log.done(plan.game_id(g)) for g in games)
    seconds, errors = run_games(plan, games, log, RunOptions(cfg.max_steps, cfg.workers, cfg.progress), agent.name)
    return {"records": log.ordered([plan.game_id(g) for g in games]), "spec": agent.spec.text, "config": config,
            "run_dir": str(rdir), "seconds": seconds if before == 0 and not errors else None, "errors": errors}


def evaluate(agents: list[Agent], cfg: EvalConfig, pair: bool = False, command_name: str = "eval",
             games: list | None = None) -> dict:
    """Run each agent on the same games, then write the report. pair: agents[0] is the student, [1] the teacher."""
    games = select_games(cfg) if games is None else games
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    runs, done = {}, {}
    for agent in agents:
        name = agent.name if agent.name not in runs else f"{agent.name}#{len(runs)}"
        key = fingerprint(run_config(agent, cfg))
        if key in done:        # e.g. ablation arms that coincide when no adapter or bank is shipped
            print(f"{name}: same config as {done[key][0]}, reusing its episodes", file=sys.stderr)
            runs[name] = {**done[key][1], "spec": agent.spec.text}
            continue
        runs[name] = run_agent(agent, games, cfg)
        done[key] = (name, runs[name])
    names = list(runs)
    meta = {"command_name": command_name, "command": shlex.join(["duomem-fast", *sys.argv[1:]]),
            "data_root": str(cfg.data_root), "split": cfg.split, "games": len(games),
            "source": getattr(games[0], "source", "unknown") if games else "unknown",
            "max_steps": cfg.max_steps, "workers": cfg.workers, "machine": machine_state(),
            "loadavg_at_start": load_at_start}
    return write_report(cfg.out, runs, meta, pair=(names[0], names[1]) if pair else None)
