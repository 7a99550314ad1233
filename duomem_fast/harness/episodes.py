"""How one episode is played by the harness: locally (the alfworld agent loop), or with the game in a worker
process (`GameHost` behind a RemoteEnv) while the policy runs here on the shared engine."""
from __future__ import annotations

import time

from ..alfworld.agent import _record, play_loop, run_episode
from ..alfworld.env import AlfEnv


def game_id(game) -> str:
    return game.id


def no_env():
    return None


def play_local(env, game, policy, max_steps: int, config: str = "") -> dict:
    """Whole episode in this process (env is unused: AlfEnv is per game)."""
    return run_episode(game, policy, max_steps=max_steps, config=config)


class GameHost:
    """Lives in an env worker: loads a game, resets, steps; the policy stays in the parent."""

    def __init__(self):
        self.env: AlfEnv | None = None

    def open(self, game, max_steps: int):
        self.finish()
        self.env = AlfEnv(game, max_steps=max_steps)
        return self.env.reset()

    def step(self, action: str):
        return self.env.step(action)

    def finish(self) -> dict | None:
        if self.env is None:
            return None
        env, self.env = self.env, None
        env.close()
        return {"task": env.task, "env_seconds": env.env_seconds}


class _Done:
    """What `_record` reads from an env, rebuilt from the worker's final figures."""

    def __init__(self, game, task: str, env_seconds: float):
        self.game, self.task, self.env_seconds = game, task, env_seconds


def play_remote(host, game, policy, max_steps: int, config: str = "") -> dict:
    """The agent loop of alfworld.agent.run_episode with the game in a worker (`host`: RemoteEnv of GameHost)."""
    t0 = time.perf_counter()
    obs = host.open(game, max_steps)
    try:
        actions, observations, won = play_loop(obs, host.step, policy, game.task_type)
    finally:
        info = host.finish()
    done = _Done(game, info["task"], info["env_seconds"])
    return _record(done, policy, config, actions, observations, won, time.perf_counter() - t0)
