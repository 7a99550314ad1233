"""Episode records as JSONL: one line per finished episode, flushed and fsynced, so a kill loses at most the line
being written (a torn last line is ignored on read) and a rerun can skip what is done."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def config_fingerprint(cfg: dict) -> str:
    """16 hex digits of sha256 over the config as canonical JSON (sorted keys); equal configs, equal prints."""
    if not isinstance(cfg, dict):
        raise ValueError(f"config must be a dict, got {type(cfg).__name__}")
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def append_record(path: str | os.PathLike, rec: dict) -> None:
    """Append one record as a JSON line; flush + fsync before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(rec, default=str)
    with open(path, "ab+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a torn line from a kill: end it so the new record stays whole
                f.write(b"\n")
        f.write(line.encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def read_records(path: str | os.PathLike) -> list[dict]:
    """All whole records; a missing file is an empty list; an unparsable line is skipped only if it is the last."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1 or _torn(lines, i):
                continue
            raise ValueError(f"{path}:{i + 1} is not a JSON record: {exc}") from exc
    return records


def _torn(lines: list[str], i: int) -> bool:
    """A line torn by a kill and later terminated by append_record: only blank or whole lines may follow it."""
    return not lines[i].rstrip().endswith("}")
