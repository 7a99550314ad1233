"""A fake text world for fast harness tests: no ALFWorld needed. Importable, so spawn workers can pickle it."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class FakeGame:
    """A game won by playing `solution` in order; the other admissible commands do nothing."""
    path: str
    task_type: str
    solution: tuple[str, ...]
    split: str = "valid_unseen"
    explode: bool = False          # reset raises: an episode that fails

    @property
    def id(self) -> str:
        return self.path


def fake_games(n: int, types: tuple[str, ...] = ("pick_and_place_simple", "pick_heat_then_place_in_recep")) -> list:
    return [FakeGame(f"valid_unseen/{types[i % len(types)]}-{i}/trial_{i}/game.tw-pddl", types[i % len(types)],
                     tuple(f"go to shelf {j + 1}" for j in range(1 + i % 3))) for i in range(n)]


class FakeEnv:
    """reset(game) -> (obs, admissible); step(action) -> (obs, won, admissible). `delay` seconds per call."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.game: FakeGame | None = None
        self.pos = 0

    def _admissible(self) -> list[str]:
        return sorted({*self.game.solution, "look", "inventory"})

    def reset(self, game: FakeGame):
        time.sleep(self.delay)
        if game.explode:
            raise RuntimeError(f"cannot load {game.path}")
        self.game, self.pos = game, 0
        return f"You are in a room. Your task is to: do {game.task_type}.", self._admissible()

    def step(self, action: str):
        time.sleep(self.delay)
        if self.pos < len(self.game.solution) and action == self.game.solution[self.pos]:
            self.pos += 1
            return "OK.", self.pos == len(self.game.solution), self._admissible()
        return "Nothing happens.", False, self._admissible()


class SolverPolicy:
    """Knows each fake game's solution except those whose hash is odd when `flaky` (so some games are lost)."""

    def __init__(self, env=None, flaky: bool = False, name: str = "solver"):
        self.env, self.flaky, self.name = env, flaky, name

    def begin(self, task, task_type, observation, admissible):
        self.step = 0

    def act(self, observation, admissible):
        self.step += 1
        return admissible[0] if admissible else "look"

    def usage(self):
        return {"tokens_in": 10 * self.step, "tokens_reused": 5 * self.step, "tokens_out": self.step,
                "model_seconds": 0.001 * self.step}


def _lost(game: FakeGame) -> bool:
    return int(hashlib.sha256(game.path.encode()).hexdigest(), 16) % 2 == 1


def fake_play(env, game: FakeGame, policy, max_steps: int, config: str = "fake") -> dict:
    """An episode in the record format of the agent contract (docs/design.md)."""
    t0 = time.perf_counter()
    te = time.perf_counter()
    obs, admissible = env.reset(game)
    env_s = time.perf_counter() - te
    policy.begin(game.task_type, game.task_type, obs, admissible)
    actions, observations, won = [], [obs], False
    cheat = isinstance(policy, SolverPolicy) and not (policy.flaky and _lost(game))
    for step in range(max_steps):
        action = policy.act(obs, admissible)
        if cheat and step < len(game.solution):
            action = game.solution[step]
        te = time.perf_counter()
        obs, won, admissible = env.step(action)
        env_s += time.perf_counter() - te
        actions.append(action)
        observations.append(obs)
        if won:
            break
    return {"game": game.path, "source": "generated", "split": game.split, "task_type": game.task_type,
            "task": game.task_type, "agent": policy.name, "config": config, "won": won, "steps": len(actions),
            "actions": actions, "observations": observations, **policy.usage(), "env_seconds": env_s,
            "wall_seconds": time.perf_counter() - t0}


def make_fake_env():
    return FakeEnv()


def make_solver(env, flaky: bool = True):
    return SolverPolicy(env, flaky=flaky)


SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "alfworld" / "real_sample_single_agent"


def sample_data_root(dest: str | Path, n: int = 2, split: str = "valid_unseen") -> Path | None:
    """A data root holding n copies (distinct trial ids) of the real ALFWorld sample game, in the official layout.

    None when the sample is not on this machine.
    """
    if not (SAMPLE / "game.tw-pddl").is_file():
        return None
    dest = Path(dest)
    task_dir = dest / "json_2.1.1" / split / "pick_heat_then_place_in_recep-Potato-None-SinkBasin-16"
    for i in range(n):
        trial = task_dir / f"trial_T20190000_{i:06d}"
        trial.mkdir(parents=True, exist_ok=True)
        for name in ("game.tw-pddl", "traj_data.json"):
            if not (trial / name).exists():
                (trial / name).symlink_to(SAMPLE / name)
    return dest


def fake_game_id(game: FakeGame) -> str:
    return game.path
