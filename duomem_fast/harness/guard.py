"""One engine shared by the policies of parallel episodes: a lock around every engine call, and per-policy
token/time counters.

Policies read their usage as deltas of `engine.stats`; with several episodes on one engine those deltas would mix
their work. Each policy gets a `GuardedEngine` whose `stats` count only the calls it made (measured inside the
lock, so model seconds exclude time spent waiting for another episode's call).
"""
from __future__ import annotations

import threading

from ..engine import Conversation, Session, Stats

_WRAP = (Session, Conversation)


class _Guarded:
    """Forwards attribute access to `_obj`; method calls run under the owner's lock and are counted."""

    def __init__(self, obj, owner: "GuardedEngine"):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_owner", owner)

    def __getattr__(self, name: str):
        value = getattr(self._obj, name)
        return self._owner._call(value) if callable(value) else value

    def __setattr__(self, name: str, value) -> None:
        setattr(self._obj, name, value)

    def __len__(self) -> int:
        return len(self._obj)


class GuardedEngine(_Guarded):
    """An engine view for one policy: same model and prefix cache, own `stats`."""

    def __init__(self, engine, lock: threading.Lock):
        super().__init__(engine, self)
        object.__setattr__(self, "_lock", lock)
        object.__setattr__(self, "stats", Stats())

    def _call(self, fn):
        def guarded(*args, **kwargs):
            args = [a._obj if isinstance(a, _Guarded) else a for a in args]
            if args and isinstance(args[0], (list, tuple)):
                args[0] = [a._obj if isinstance(a, _Guarded) else a for a in args[0]]
            with self._lock:
                before = self._obj.stats.copy()
                out = fn(*args, **kwargs)
                delta = self._obj.stats - before
            for key in ("tokens_encoded", "tokens_reused", "tokens_generated", "model_seconds"):
                setattr(self.stats, key, getattr(self.stats, key) + getattr(delta, key))
            return _Guarded(out, self) if isinstance(out, _WRAP) else out
        return guarded
