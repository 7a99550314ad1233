import json

from duomem_fast.harness import testing as T
from duomem_fast.harness.report import write_report
from duomem_fast.harness.runner import Plan, RunOptions, run_games
from duomem_fast.harness.store import EpisodeLog


def test_report_files_hold_the_run_figures(tmp_path):
    games = T.fake_games(6)
    runs = {}
    for name, flaky in (("student", True), ("teacher", False)):
        plan = Plan(T.make_fake_env, lambda env, f=flaky: T.SolverPolicy(env, flaky=f, name=name), T.fake_play,
                    T.fake_game_id, in_worker=False)
        log = EpisodeLog(tmp_path / f"{name}.jsonl")
        secs, _ = run_games(plan, games, log, RunOptions(max_steps=5, workers=1, progress=False))
        runs[name] = {"records": log.ordered([g.path for g in games]), "seconds": secs}
    meta = {"games": 6, "split": "valid_unseen", "source": "generated", "command": "pytest"}
    summary = write_report(tmp_path / "out", runs, meta, pair=("student", "teacher"))
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["agents"]["teacher"]["won"] == 6 and on_disk == json.loads(json.dumps(summary))
    s = on_disk["agents"]["student"]
    assert set(s) >= {"games", "success_rate", "per_type", "model_seconds_per_task", "env_seconds_per_task"}
    p = on_disk["pair"]
    assert p["both"] == s["won"] and p["only_teacher"] == 6 - s["won"] and p["only_student"] == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"{s['won']}/6" in md and "generated" in md and "plots/success_per_type.png" in md
    for png in ("success_per_type", "time_per_task", "steps"):
        assert (tmp_path / "out" / "plots" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


def test_resumed_runs_show_no_run_time_per_task(tmp_path):
    games = T.fake_games(2)
    plan = Plan(T.make_fake_env, lambda env: T.SolverPolicy(env, name="a"), T.fake_play, T.fake_game_id, in_worker=False)
    log = EpisodeLog(tmp_path / "a.jsonl")
    secs, _ = run_games(plan, games, log, RunOptions(max_steps=5, workers=1, progress=False))
    meta = {"games": 2, "split": "valid_unseen", "source": "generated", "command": "pytest"}
    records = log.ordered([g.path for g in games])
    fresh = write_report(tmp_path / "fresh", {"a": {"records": records, "seconds": secs}}, meta)
    write_report(tmp_path / "resumed", {"a": {"records": records, "seconds": None}}, meta)
    row = lambda d: next(x for x in (tmp_path / d / "report.md").read_text().splitlines() if x.startswith("| a |"))
    assert row("resumed").split("|")[7].strip() == "-"
    assert row("fresh").split("|")[7].strip() == f"{fresh['agents']['a']['run_seconds_per_task']:.3g}"
