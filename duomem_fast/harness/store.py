"""Run directories keyed by a config fingerprint, and an episode log that survives kill -9.

A run directory is `<out>/runs/<label>-<fingerprint[:12]>/` holding `config.json` and `episodes.jsonl`. A changed
config hashes to a new directory, so episodes of two configs are never mixed. Each episode is one JSON line,
flushed and fsynced as it ends; a line cut short by a kill is dropped (and truncated away) on the next open, and
that game is played again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path


def fingerprint(config: dict) -> str:
    """sha256 of the canonical JSON of a config dict."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def run_dir(out: str | os.PathLike, label: str, config: dict) -> Path:
    """The directory for (label, config), created with its config.json if new."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")[:60] or "agent"
    path = Path(out) / "runs" / f"{safe}-{fingerprint(config)[:12]}"
    path.mkdir(parents=True, exist_ok=True)
    cfg = path / "config.json"
    if not cfg.exists():
        tmp = cfg.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        os.replace(tmp, cfg)
    return path


class EpisodeLog:
    """Append-only JSONL of episode records, one per game; thread-safe appends."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.records: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1          # anything after the last newline is a write cut by a kill
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        for lineno, line in enumerate(data[:good].splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}:{lineno}: not a JSON record ({e})") from None
            self.records.setdefault(rec["game"], rec)   # first write wins; a game is never counted twice

    def done(self, game: str) -> bool:
        return game in self.records

    def append(self, record: dict) -> bool:
        """Write one record; False (and nothing written) if its game is already logged."""
        line = json.dumps(record, default=str) + "\n"
        with self._lock:
            if record["game"] in self.records:
                return False
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.records[record["game"]] = record
            return True

    def ordered(self, games: list[str]) -> list[dict]:
        """Records of the given games, in that order (games not yet played are left out)."""
        return [self.records[g] for g in games if g in self.records]
