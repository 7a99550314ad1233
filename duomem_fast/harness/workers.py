"""Worker processes: either a whole episode runs in a worker (expert, random, HTTP agents), or only the
environment does (engine agents keep the model in the main process and step the env over a pipe).

ALFWorld steps take 45-180 ms and loading a game 0.4-2.6 s; running them in other processes overlaps that time
with model time in the main process. Workers use the spawn start method: the parent has torch threads running.
"""
from __future__ import annotations

import multiprocessing as mp
import traceback
from typing import Any, Callable

_CTX = mp.get_context("spawn")

# ---- whole episodes in a worker (ProcessPoolExecutor initializer + task) ----
_STATE: dict[str, Any] = {}


def init_episode_worker(make_env: Callable, make_policy: Callable, play: Callable) -> None:
    env = make_env()
    _STATE.update(env=env, policy=make_policy(env), play=play)


def play_in_worker(game, max_steps: int, game_id: Callable) -> dict:
    from .runner import safe_play
    return safe_play(_STATE["play"], _STATE["env"], game, _STATE["policy"], max_steps, game_id)


# ---- only the environment in a worker ----
def _env_loop(conn, make_env: Callable) -> None:
    try:
        env = make_env()
    except BaseException as e:  # report construction errors to the parent instead of dying silently
        conn.send(("err", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        return
    conn.send(("ok", None))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        name, args, kwargs = msg
        try:
            conn.send(("ok", getattr(env, name)(*args, **kwargs)))
        except BaseException as e:
            conn.send(("err", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class RemoteEnv:
    """Proxy to an env object living in a worker process: every attribute access is a method call over a pipe."""

    def __init__(self, make_env: Callable):
        self._conn, child = _CTX.Pipe()
        self._proc = _CTX.Process(target=_env_loop, args=(child, make_env), daemon=True)
        self._proc.start()
        self._reply()

    def _reply(self):
        status, value = self._conn.recv()
        if status == "err":
            raise RuntimeError(f"env worker: {value}")
        return value

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            self._conn.send((name, args, kwargs))
            return self._reply()
        return call

    def close_worker(self) -> None:
        try:
            self._conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
