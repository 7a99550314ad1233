"""A run killed with SIGKILL mid-way and restarted with the same arguments gives the uninterrupted run's summary."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from duomem_fast.harness.testing import sample_data_root

pytest.importorskip("alfworld", reason="needs the alfworld package")
KEYS = ("games", "won", "success_rate", "per_type", "avg_steps")


def _cmd(data, out):
    return [sys.executable, "-m", "duomem_fast.cli", "eval", "--agent", "expert", "--data", str(data), "--games", "2",
            "--max-steps", "16", "--workers", "1", "--out", str(out), "--no-progress"]


def _episodes(out):
    files = list(out.glob("runs/*/episodes.jsonl"))
    return files[0].read_text().splitlines() if files else []


def test_kill_9_then_resume_matches_uninterrupted(tmp_path):
    data = sample_data_root(tmp_path / "data", 2)
    if data is None:
        pytest.skip("the real ALFWorld sample game (../shared/alfworld) is not on this machine")
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(data, killed), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not _episodes(killed) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)          # the CLI and its worker processes, at once
    proc.wait()
    done_at_kill = len(_episodes(killed))
    assert done_at_kill == 1, f"kill landed after {done_at_kill} episodes: not mid-run"
    assert not (killed / "summary.json").exists()
    subprocess.run(_cmd(data, killed), check=True, capture_output=True, timeout=300)
    lines = _episodes(killed)
    games = [json.loads(x)["game"] for x in lines]
    assert len(games) == 2 == len(set(games))     # nothing lost, nothing counted twice
    fresh = tmp_path / "fresh"
    subprocess.run(_cmd(data, fresh), check=True, capture_output=True, timeout=300)
    a = json.loads((killed / "summary.json").read_text())["agents"]["expert"]
    b = json.loads((fresh / "summary.json").read_text())["agents"]["expert"]
    assert {k: a[k] for k in KEYS} == {k: b[k] for k in KEYS}
    assert a["won"] == 2


def test_changed_config_is_a_new_run(tmp_path):
    from duomem_fast.harness.store import run_dir

    a = run_dir(tmp_path, "expert", {"agent": {"kind": "expert", "seed": 0}, "max_steps": 16})
    b = run_dir(tmp_path, "expert", {"agent": {"kind": "expert", "seed": 0}, "max_steps": 17})
    assert a != b and a.parent == b.parent
