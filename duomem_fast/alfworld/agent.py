"""The agent loop: a Policy plays games; one record per episode, appended as it ends.

A Policy (docs/design.md):
    name: str
    begin(task, task_type, observation, admissible) -> None
    act(observation, admissible) -> str        # observation = result of the last action
    usage() -> dict                            # tokens_in, tokens_reused, tokens_out, model_seconds since begin()
Policies that read the game state (the expert) also have `attach(env)`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Protocol

from .engine_policy import EnginePolicy  # noqa: F401  (re-exported: agent.EnginePolicy is the documented name)
from .env import AlfEnv
from .games import Game
from .records import append_record, config_fingerprint, read_records


class Policy(Protocol):
    name: str

    def begin(self, task: str, task_type: str, observation: str, admissible: list[str]) -> None: ...

    def act(self, observation: str, admissible: list[str]) -> str: ...

    def usage(self) -> dict: ...


def run_episode(game: Game | AlfEnv, policy: Policy, max_steps: int = 50, config: str = "") -> dict:
    """Play one episode; returns the record of docs/design.md. `game` may be an AlfEnv already loaded."""
    t0 = time.perf_counter()
    env = game if isinstance(game, AlfEnv) else AlfEnv(game, max_steps=max_steps)
    env.max_steps = max_steps
    try:
        obs = env.reset()
        if hasattr(policy, "attach"):
            policy.attach(env)
        actions, observations, won = play_loop(obs, env.step, policy, env.game.task_type)
        return _record(env, policy, config, actions, observations, won, time.perf_counter() - t0)
    finally:
        if env is not game:
            env.close()


def play_loop(obs, step, policy: Policy, task_type: str) -> tuple[list[str], list[str], bool]:
    """The agent loop proper, from the reset observation until the game is done (won, lost or out of steps).

    `step(action) -> Observation` is the env's step, local or in a worker process. -> (actions, observations, won).
    """
    policy.begin(obs.task, task_type, obs.text, obs.admissible)
    actions, observations = [], [obs.text]
    while not obs.done:
        action = policy.act(obs.text, obs.admissible)
        obs = step(action)
        actions.append(action)
        observations.append(obs.text)
    return actions, observations, obs.won


def _record(env: AlfEnv, policy: Policy, config: str, actions, observations, won: bool, wall: float) -> dict:
    usage = policy.usage()
    game = env.game
    return {
        "game": game.id, "source": game.source, "split": game.split, "task_type": game.task_type,
        "task": env.task, "agent": policy.name, "config": config, "won": bool(won), "steps": len(actions),
        "actions": actions, "observations": observations,
        "tokens_in": int(usage.get("tokens_in", 0)), "tokens_reused": int(usage.get("tokens_reused", 0)),
        "tokens_out": int(usage.get("tokens_out", 0)), "model_seconds": float(usage.get("model_seconds", 0.0)),
        "env_seconds": env.env_seconds, "wall_seconds": wall,
    }


def run_games(games: Iterable[Game], policy: Policy, out_jsonl: str | Path, config: dict,
              max_steps: int = 50) -> list[dict]:
    """Play each game not yet in `out_jsonl` under the same config fingerprint; append each record as it ends.

    Returns the records of this config for the given games (earlier ones read back, new ones played).
    """
    fingerprint = config_fingerprint({**config, "max_steps": max_steps, "agent": policy.name})
    done = {r["game"]: r for r in read_records(out_jsonl) if r.get("config") == fingerprint}
    records = []
    for game in games:
        if game.id in done:
            records.append(done[game.id])
            continue
        rec = run_episode(game, policy, max_steps=max_steps, config=fingerprint)
        append_record(out_jsonl, rec)
        done[game.id] = rec
        records.append(rec)
    return records
