"""Timing helpers shared by every benchmark: robust timer, in-process bandwidth probe, table and JSON output.

Benchmarks print a table (ours and baselines side by side, with GB/s against the bandwidth measured in the same
process and thread count) and write the same rows as JSON with the machine they ran on.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch


@dataclass(slots=True)
class Stats:
    """Seconds per call over `reps` timed calls."""

    median: float
    p10: float
    p90: float
    reps: int

    def as_dict(self) -> dict:
        return asdict(self)


def _quantile(sorted_xs: list[float], q: float) -> float:
    i = min(len(sorted_xs) - 1, max(0, round(q * (len(sorted_xs) - 1))))
    return sorted_xs[i]


def bench(fn: Callable[[], Any], warmup: int = 5, reps: int = 50, min_seconds: float = 0.0) -> Stats:
    """Call fn() `warmup` times, then time `reps` calls one by one (more if min_seconds is not yet reached)."""
    if warmup < 0 or reps < 1:
        raise ValueError(f"bench needs warmup >= 0 and reps >= 1, got warmup={warmup}, reps={reps}")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 100 * reps:
            break
    times.sort()
    return Stats(statistics.median(times), _quantile(times, 0.1), _quantile(times, 0.9), len(times))


def measure_bandwidth(nbytes: int = 256 << 20, reps: int = 10) -> float:
    """Read bandwidth in bytes/s: a streaming reduction over a buffer much larger than the caches.

    Runs in this process with torch's current thread count, so it is the ceiling a GEMV in this process can reach.
    A sum reads every byte once and writes nothing, the same traffic pattern as streaming a weight matrix. The
    fastest rep is taken (the ceiling): on a shared machine the median mostly measures who else is running.
    """
    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    buf.sum()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def machine_info() -> dict:
    """CPU model, thread count, torch version, UTC date, git commit of the checkout (or None)."""
    return {
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def print_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """Print rows (dicts) as an aligned text table; floats get 4 significant digits. Returns the text."""
    if not rows:
        print("(no rows)")
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write payload plus a "machine" entry as indented JSON (parent directories created). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine_info(), **payload}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
    return path
