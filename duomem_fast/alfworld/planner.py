"""The PDDL planner as a teacher (optional): TextWorld's `policy_commands` (Fast Downward) for a game, computed in
a child process under a time and memory cap, then replayed as a Policy.

Planning can take minutes and gigabytes on big scenes; the cap turns that into `None` (no plan) instead.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .env import AlfEnv

_CHILD = r"""
import json, resource, sys
limit = int(sys.argv[2]) << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import textworld
from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
infos = textworld.EnvInfos(policy_commands=True, admissible_commands=True)
env = textworld.start(sys.argv[1], request_infos=infos, wrappers=[AlfredDemangler(), AlfredInfos])
print(json.dumps(env.reset()["policy_commands"]))
"""


def plan(game_path: str | Path, timeout: float = 60.0, memory_mb: int = 4096) -> list[str] | None:
    """The planner's command list for a game, or None if it fails or exceeds `timeout` s / `memory_mb` MiB."""
    if timeout <= 0 or memory_mb <= 0:
        raise ValueError(f"timeout and memory_mb must be > 0, got {timeout}, {memory_mb}")
    try:
        out = subprocess.run([sys.executable, "-c", _CHILD, str(game_path), str(memory_mb)],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return None
    commands = json.loads(lines[-1])
    return list(commands) if commands else None


class PlannerPolicy:
    """Replays the planner's plan for the attached env's game; "look" once the plan is spent or missing."""

    name = "planner"

    def __init__(self, timeout: float = 60.0, memory_mb: int = 4096):
        self.timeout, self.memory_mb = timeout, memory_mb
        self.env: AlfEnv | None = None
        self.plan: list[str] | None = None
        self._next = 0

    def attach(self, env: AlfEnv) -> None:
        self.env = env

    def begin(self, task: str, task_type: str, observation: str, admissible: list[str]) -> None:
        if self.env is None:
            raise ValueError("PlannerPolicy needs attach(env) before begin()")
        self.plan, self._next = plan(self.env.game.path, self.timeout, self.memory_mb), 0

    def act(self, observation: str, admissible: list[str]) -> str:
        if not self.plan or self._next >= len(self.plan):
            return "look"
        self._next += 1
        return self.plan[self._next - 1]

    def usage(self) -> dict:
        return {"tokens_in": 0, "tokens_reused": 0, "tokens_out": 0, "model_seconds": 0.0}
