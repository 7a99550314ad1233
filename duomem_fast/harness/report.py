"""summary.json and report.md (tables + PNG plots) for one or more agents that played the same games."""
from __future__ import annotations

import json
import os
from pathlib import Path

from . import plots
from .metrics import paired, speedup, summarize


def machine_state() -> dict:
    """CPU, threads, load average and free memory now: a timing is only meaningful beside these."""
    from ..timing import machine_info

    info = machine_info()
    info["cpu_count"] = os.cpu_count()
    info["loadavg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    try:
        mem = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        info["mem_available_gib"] = round(int(mem["MemAvailable"].split()[0]) / 2**20, 1)
    except (OSError, KeyError, ValueError):
        pass
    return info


def build_summary(runs: dict[str, dict], meta: dict, pair: tuple[str, str] | None = None) -> dict:
    """runs: {name: {"records": [...], "seconds": run wall, "spec": str, "run_dir": str}}."""
    agents = {}
    for name, run in runs.items():
        s = summarize(run["records"], run.get("seconds"))
        s.update(spec=run.get("spec", name), run_dir=str(run.get("run_dir", "")), config=run.get("config"),
                 errors=[{"game": g, "error": e} for g, e in run.get("errors", [])])
        agents[name] = s
    out = {"meta": meta, "agents": agents}
    if pair:
        st, te = pair
        out["pair"] = {"student": st, "teacher": te, **paired(runs[st]["records"], runs[te]["records"]),
                       "speedup": speedup(agents[st], agents[te])}
    return out


def write_report(out: str | os.PathLike, runs: dict[str, dict], meta: dict,
                 pair: tuple[str, str] | None = None) -> dict:
    """Write summary.json, report.md and plots/*.png into `out`; returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = build_summary(runs, meta, pair)
    _atomic(out / "summary.json", json.dumps(summary, indent=2, default=str))
    agents = summary["agents"]
    pngs = [plots.success_per_type(agents, out / "plots" / "success_per_type.png"),
            plots.time_per_task(agents, out / "plots" / "time_per_task.png"),
            plots.steps({n: r["records"] for n, r in runs.items()}, out / "plots" / "steps.png")]
    _atomic(out / "report.md", render_markdown(summary, [p.relative_to(out) for p in pngs]))
    return summary


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pct(c: dict) -> str:
    lo, hi = c["ci95"]
    return f"{c['won']}/{c['games']} = {c['success_rate']:.1%} [{lo:.0%}, {hi:.0%}]"


def _run_per_task(s: dict) -> str:
    """'-' for a resumed run: its elapsed time covers only the games it played this time."""
    v = s.get("run_seconds_per_task")
    return "-" if v is None else f"{v:.3g}"


def _agent_table(agents: dict) -> list[str]:
    rows = ["| agent | success (95% CI) | avg steps | model s/task | env s/task | wall s/task | run s/task "
            "| tokens new / reused / generated per task | tok/s new+gen | gen tok/s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in agents.items():
        new, reused = s["tokens_in"] / max(1, s["games"]), s["tokens_reused"] / max(1, s["games"])
        rows.append(f"| {name} | {_pct(s)} | {s['avg_steps']:.1f} | {s['model_seconds_per_task']:.3g} "
                    f"| {s['env_seconds_per_task']:.3g} | {s['wall_seconds_per_task']:.3g} "
                    f"| {_run_per_task(s)} | {new:.0f} / {reused:.0f} / "
                    f"{s['tokens_out_per_task']:.0f} | {s['total_tok_per_s']:.1f} | {s['gen_tok_per_s']:.1f} |")
    return rows


def _type_table(agents: dict) -> list[str]:
    types = sorted({t for s in agents.values() for t in s["per_type"]})
    rows = ["| task type | " + " | ".join(agents) + " |", "|---|" + "---|" * len(agents)]
    for t in types:
        cells = [_pct(s["per_type"][t]) if t in s["per_type"] else "-" for s in agents.values()]
        rows.append(f"| {t} | " + " | ".join(cells) + " |")
    return rows


def _pair_lines(p: dict) -> list[str]:
    sp = p["speedup"]
    fmt = lambda v: f"{v:.2f}x" if v else "n/a"  # noqa: E731
    return ["## Student vs teacher", "",
            f"Student **{p['student']}**, teacher **{p['teacher']}**, {p['games']} games played by both.", "",
            "| | teacher won | teacher lost |", "|---|---|---|",
            f"| **student won** | {p['both']} (both) | {p['only_student']} (only student) |",
            f"| **student lost** | {p['only_teacher']} (only teacher) | {p['neither']} (neither) |", "",
            f"Speedup (teacher time / student time per task; below 1 the student is slower): wall "
            f"{fmt(sp['wall'])}, model {fmt(sp['model'])}, whole run {fmt(sp['run'])}.", ""]


def render_markdown(summary: dict, pngs: list) -> str:
    m = summary["meta"]
    lines = [f"# duomem-fast {m.get('command_name', 'run')} report", "",
             f"- games: **{m.get('games')}** from `{m.get('data_root')}` split `{m.get('split')}`, "
             f"**{m.get('source', 'unknown')}** games (official = ALFWorld's released json_2.1.1; generated = "
             "built offline by duomem-fast)",
             f"- max steps {m.get('max_steps')}, {m.get('workers')} episodes at once",
             f"- command: `{m.get('command')}`",
             "- machine at the end: " + ", ".join(f"{k} `{v}`" for k, v in m.get("machine", {}).items()),
             f"- load average (1, 5, 15 min) at the start: `{m.get('loadavg_at_start')}`: other processes on "
             "this machine slow every timing below", "",
             "Per-episode times are latencies (model + environment per task); *run s/task* is the elapsed time of "
             "the whole run divided by its games, which parallel episodes make smaller (- where the run resumed).", "",
             "## Agents", "", *_agent_table(summary["agents"]), "", "## Success per task type", "",
             *_type_table(summary["agents"]), ""]
    for name, s in summary["agents"].items():
        if s.get("errors"):
            lines += [f"**{name}: {len(s['errors'])} episode(s) failed with an error and are not counted** "
                      f"(rerun the same command to retry them); first: `{s['errors'][0]['error']}`", ""]
    if "pair" in summary:
        lines += _pair_lines(summary["pair"])
    lines += ["## Agent configs", ""] + [f"- **{n}** (`{s['spec']}`): `{json.dumps(s.get('config'))}`, episodes in "
                                          f"`{s['run_dir']}`" for n, s in summary["agents"].items()] + [""]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.as_posix()})" for p in pngs] + [""]
    return "\n".join(lines)
