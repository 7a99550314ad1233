"""Play a list of games with one agent: resumable, parallel, with a live progress bar.

Every agent plays the same games in the same order (the order of `games`); records land in an EpisodeLog as
episodes end, and games already in the log are skipped.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable

from tqdm import tqdm

from .store import EpisodeLog
from .workers import _CTX, RemoteEnv, init_episode_worker, play_in_worker


@dataclass(slots=True)
class RunOptions:
    max_steps: int = 50
    workers: int = 2          # episodes at once; 1 = everything in this process
    progress: bool = True

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers!r}")


@dataclass(slots=True)
class Plan:
    """How one agent plays: `play(env, game, policy, max_steps) -> record`, with envs and policies from factories.

    in_worker: True = whole episodes run in worker processes (factories must be picklable);
    False = policies live in this process (sharing its engine) and only envs run in workers.
    """
    make_env: Callable
    make_policy: Callable
    play: Callable
    game_id: Callable
    in_worker: bool


class _Progress:
    def __init__(self, total: int, done: list[dict], label: str, enabled: bool):
        self.won = sum(bool(r["won"]) for r in done)
        self.n = len(done)
        self.added = 0
        self.errors: list[tuple[str, str]] = []
        self.bar = tqdm(total=total, initial=len(done), desc=label, unit="game", disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True)
        self._post()

    def _post(self):
        self.bar.set_postfix_str(f"success {self.won}/{self.n}" + (f" = {self.won / self.n:.0%}" if self.n else ""))

    def add(self, record: dict):
        self.added += 1
        self.n += 1
        self.won += bool(record["won"])
        self._post()
        self.bar.update(1)

    def close(self):
        self.bar.close()


MAX_EARLY_ERRORS = 3     # this many failed episodes before any success: the config is broken, stop


def run_games(plan: Plan, games: list, log: EpisodeLog, opts: RunOptions, label: str = "") -> tuple[float, list]:
    """Play every game of `games` not yet in `log`; returns (elapsed seconds of this call, errors).

    An episode that raises is not recorded (a rerun retries it): its (game id, message) goes into `errors` and the
    other games go on; if the first MAX_EARLY_ERRORS episodes all fail, the first error is raised.
    """
    ids = [plan.game_id(g) for g in games]
    todo = [g for g, i in zip(games, ids) if not log.done(i)]
    progress = _Progress(len(games), log.ordered(ids), label, opts.progress)
    t0 = time.perf_counter()
    run = _run_serial if opts.workers == 1 else _run_process_pool if plan.in_worker else _run_threads
    try:
        if todo:
            run(plan, todo, log, opts, progress)
    finally:
        progress.close()
    return time.perf_counter() - t0, progress.errors


class EpisodeError(RuntimeError):
    """The first episodes of a run all failed: the agent or its games are broken."""


def _record(log: EpisodeLog, progress: _Progress, record: dict) -> None:
    if "error" in record:
        progress.errors.append((record["game"], record["error"]))
        tqdm.write(f"episode failed, not recorded (a rerun retries it): {record['game']}: {record['error']}",
                   file=sys.stderr)
        if len(progress.errors) >= MAX_EARLY_ERRORS and progress.added == 0:
            raise EpisodeError(f"the first {MAX_EARLY_ERRORS} episodes failed; first: {progress.errors[0][1]}")
        return
    if log.append(record):
        progress.add(record)


def safe_play(play: Callable, env, game, policy, max_steps: int, game_id: Callable) -> dict:
    """play(...), or {"game", "error"} if it raised."""
    try:
        return play(env, game, policy, max_steps)
    except Exception as e:
        return {"game": game_id(game), "error": f"{type(e).__name__}: {e}"}


def _run_serial(plan: Plan, todo: list, log: EpisodeLog, opts: RunOptions, progress: _Progress) -> None:
    env = plan.make_env()
    policy = plan.make_policy(env)
    for game in todo:
        _record(log, progress, safe_play(plan.play, env, game, policy, opts.max_steps, plan.game_id))


def _run_process_pool(plan: Plan, todo: list, log: EpisodeLog, opts: RunOptions, progress: _Progress) -> None:
    workers = min(opts.workers, len(todo))
    with ProcessPoolExecutor(workers, mp_context=_CTX, initializer=init_episode_worker,
                             initargs=(plan.make_env, plan.make_policy, plan.play)) as pool:
        futures = [pool.submit(play_in_worker, g, opts.max_steps, plan.game_id) for g in todo]
        try:
            for fut in as_completed(futures):
                _record(log, progress, fut.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _run_threads(plan: Plan, todo: list, log: EpisodeLog, opts: RunOptions, progress: _Progress) -> None:
    jobs: queue.Queue = queue.Queue()
    for g in todo:
        jobs.put(g)
    errors: list[BaseException] = []
    envs = [RemoteEnv(plan.make_env) for _ in range(min(opts.workers, len(todo)))]

    def worker(env):
        policy = plan.make_policy(env)
        while not errors:
            try:
                game = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                _record(log, progress, safe_play(plan.play, env, game, policy, opts.max_steps, plan.game_id))
            except BaseException as e:
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(e,), daemon=True) for e in envs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for e in envs:
            e.close_worker()
    if errors:
        raise errors[0]
