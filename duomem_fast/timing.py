"""Timing helpers shared by every benchmark: robust timer, in-process bandwidth probe, table and JSON output.

Benchmarks print a table (ours and baselines side by side, with GB/s against the bandwidth measured in the same
process and thread count) and write the same rows as JSON with the machine they ran on. Cold-cache timing (what a
decode step sees: each layer's weights come from DRAM once per token) rotates through enough copies of the data to
overflow the last-level cache, as Triton's do_bench flushes L2 between calls.
"""
from __future__ import annotations

import datetime
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from duomem_fast import ops


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


def read_bytes(tensors: Sequence[torch.Tensor], ahead: int = 0) -> int:
    """Read every byte of these contiguous CPU tensors once (native vector loads, torch's thread count).

    The floor of any op that reads the same bytes once under the same cache regime: a benchmark times it beside the
    implementations to show the best ratio any of them could reach. Returns the XOR of each tensor's bytes
    (zero-padded to 8) as little-endian 64-bit words, so the read is checkable and cannot be elided. ahead > 0: each
    256 bytes also asks for the bytes `ahead` further on, into L2 (a software look-ahead, as the GEMV streams use).
    """
    if ahead < 0:
        raise ValueError(f"read_bytes needs ahead >= 0 bytes, got {ahead}")
    if not ops.HAS_NATIVE or not hasattr(ops._C, "read_bytes"):
        raise ValueError("read_bytes needs the native CPU build (duomem_fast._C), which is not loaded")
    return ops._C.read_bytes(list(tensors), ahead)


def llc_bytes() -> int:
    """Size in bytes of one last-level (highest-level) CPU cache, from sysfs, else `lscpu -B -C`.

    Raises ValueError when neither source reports a cache (a benchmark must then be told the size, not guess it).
    """
    sizes: dict[int, int] = {}
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level, size = int((d / "level").read_text()), (d / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        sizes[level] = int(size.rstrip("KMG")) * unit
    if sizes:
        return sizes[max(sizes)]
    return _llc_from_lscpu()


def _llc_from_lscpu() -> int:
    try:
        out = subprocess.run(["lscpu", "-B", "-C=LEVEL,ONE-SIZE"], capture_output=True, text=True, timeout=5).stdout
        rows = [line.split() for line in out.splitlines()[1:] if line.split()[:1] and line.split()[0].isdigit()]
        return int(max(rows, key=lambda r: int(r[0]))[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        raise ValueError("last-level cache size unknown: neither /sys/devices/system/cpu/cpu0/cache nor "
                         "`lscpu -B -C` reports one") from None


def cold_copies(nbytes: int, llc: int | None = None, factor: float = 4.0) -> int:
    """Distinct copies of an `nbytes` working set to rotate through so that each call finds its data evicted from the
    last-level cache: copies covering `factor` x the LLC (1 when one copy already does).

    4x by default: on this EPYC (32 MiB L3) a 576x576 fp32 GEMV rotated over 2x / 4x / 8x the LLC took p10 51.7 /
    55.8 / 59.0 us, so at 2x about a tenth of the calls still found part of their weights in the cache.
    """
    if nbytes <= 0 or factor <= 0:
        raise ValueError(f"cold_copies needs nbytes > 0 and factor > 0, got nbytes={nbytes}, factor={factor}")
    llc = llc_bytes() if llc is None else llc
    return max(1, math.ceil(factor * llc / nbytes))


def rotate(fns: Sequence[Callable[[], Any]]) -> Callable[[], Any]:
    """One callable that calls fns[0], fns[1], ... in turn, wrapping around (cold-cache timing over data copies)."""
    if not fns:
        raise ValueError("rotate needs at least one function, got none")
    if len(fns) == 1:
        return fns[0]
    nxt = itertools.cycle(fns).__next__
    return lambda: nxt()()


def machine_info() -> dict:
    """CPU model, last-level cache bytes (or None), thread count, torch version, UTC date, git commit (or None)."""
    try:
        llc = llc_bytes()
    except ValueError:
        llc = None
    return {
        "cpu": _cpu_model(),
        "llc_bytes": llc,
        "threads": torch.get_num_threads(),
        "cpu_isa": ops.cpu_isa(),
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
