"""ALFWorld on its real backend: alfworld's TextWorld PDDL game, with alfworld's own name demangler.

Env seconds (load, reset, step) are measured here, apart from whatever the policy spends.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from .games import GAME_FILE, TRAJ_FILE, Game, read_json

_WELCOME = re.compile(r"-= Welcome to TextWorld, ALFRED! =-\s*")
_TASK = re.compile(r"Your task is to:\s*(.+?)\.?\s*$", re.MULTILINE)
NOTHING = "Nothing happens."


@dataclass(slots=True)
class Observation:
    """What the agent sees after reset or a step."""

    text: str
    admissible: list[str]
    done: bool
    won: bool
    task: str


@dataclass(slots=True)
class EnvClock:
    load: float = 0.0
    reset: float = 0.0
    step: float = 0.0
    steps: int = 0

    @property
    def total(self) -> float:
        return self.load + self.reset + self.step


def as_game(game: Game | Path | str) -> Game:
    """A Game from a Game or a `game.tw-pddl` path (task type read from the `traj_data.json` beside it)."""
    if isinstance(game, Game):
        return game
    path = Path(game)
    if path.is_dir():
        path = path / GAME_FILE
    if not path.is_file():
        raise ValueError(f"game file not found: {path}")
    traj = read_json(path.parent / TRAJ_FILE, ("task_type",))
    return Game(path, "valid_unseen", "official", traj["task_type"])


def parse_task(text: str) -> str:
    """'put a hot potato in sinkbasin' from the initial observation."""
    match = _TASK.search(text)
    if match is None:
        raise ValueError(f"no 'Your task is to:' line in the initial observation: {text[:200]!r}")
    return match.group(1).strip()


def _start(path: Path):
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    infos = textworld.EnvInfos(won=True, admissible_commands=True, facts=True, feedback=True, extras=["gamefile"])
    return textworld.start(str(path), request_infos=infos, wrappers=[AlfredDemangler(), AlfredInfos])


class AlfEnv:
    """One ALFWorld game. `reset()` then `step(action)` until `done` (won or `max_steps` steps taken).

    Invalid commands are passed to the game (which answers "Nothing happens.") and count as steps.
    `state` is the last TextWorld game state (facts included) for teachers that need it.
    """

    def __init__(self, game: Game | Path | str, max_steps: int = 50):
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.game = as_game(game)
        if not self.game.path.is_file():
            raise ValueError(f"game file not found: {self.game.path}")
        self.max_steps = max_steps
        self.clock = EnvClock()
        t0 = time.perf_counter()
        self._env = _start(self.game.path)
        self.clock.load = time.perf_counter() - t0
        self.state = None
        self.task = ""
        self.steps = 0
        self.done = False

    @property
    def env_seconds(self) -> float:
        return self.clock.total

    def reset(self) -> Observation:
        t0 = time.perf_counter()
        self.state = self._env.reset()
        self.clock.reset += time.perf_counter() - t0
        self.steps, self.done = 0, False
        self.task = parse_task(self.state["feedback"])
        return self._observation(_WELCOME.sub("", self.state["feedback"]).strip())

    def step(self, action: str) -> Observation:
        if self.state is None:
            raise ValueError("step() before reset()")
        if self.done:
            raise ValueError(f"episode is over (won={self.state['won']}, steps={self.steps}); call reset()")
        action = " ".join(str(action).split())
        t0 = time.perf_counter()
        if action:  # an empty command is a wasted step; the game itself would echo a parser error for it
            self.state, _, _ = self._env.step(action)
        else:
            self.state = {**self.state, "feedback": NOTHING}
        self.clock.step += time.perf_counter() - t0
        self.clock.steps += 1
        self.steps += 1
        self.done = bool(self.state["won"]) or self.steps >= self.max_steps
        return self._observation(self.state["feedback"].strip() or NOTHING)

    def _observation(self, text: str) -> Observation:
        return Observation(text, list(self.state["admissible_commands"]), self.done, bool(self.state["won"]), self.task)

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> "AlfEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
