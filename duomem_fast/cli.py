"""`duomem-fast`: evaluate agents on ALFWorld, compare a student with its teacher, build games, distill, benchmark,
serve. Each subcommand is a typed function below, mirrored by its argparse subparser.

    duomem-fast eval                                   # shipped DuoMem student on a small generated unseen suite
    duomem-fast compare --teacher expert --games 20    # student vs ALFWorld's expert on the same 20 games
    duomem-fast compare --teacher openai:http://127.0.0.1:8000/v1 --ablation
    duomem-fast games list --data ~/alfworld           # what a data root holds
    duomem-fast serve --port 8000                      # OpenAI-compatible server over the engine
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .harness.evaluate import EvalConfig, default_data_root

ABLATION = ("base", "memories", "lora", "duomem")
SUITE_GAMES = 12


def _config(data, split, games, max_steps, workers, out, progress, threads=None) -> EvalConfig:
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        import torch
        torch.set_num_threads(threads)    # the engine's: its calls are serialised, the envs run in workers
    return EvalConfig(Path(data) if data else default_data_root(), split, games, max_steps, workers, Path(out),
                      progress)


def eval_cmd(agent: str = "duomem", data: str | None = None, split: str = "valid_unseen", games: int = 6,
             max_steps: int = 50, workers: int = 2, out: str = "runs/eval", progress: bool = True,
             suite_games: int = SUITE_GAMES, seed: int = 0, threads: int | None = None) -> int:
    """Play the first `games` games of `split` with one agent; write the report into `out`."""
    from .harness.agents import build_agent, for_workers, parse_agent
    from .harness.evaluate import ensure_suite, evaluate

    cfg = _config(data, split, games, max_steps, workers, out, progress, threads)
    spec = for_workers(parse_agent(agent), workers, threads)   # a bad spec fails before any game is built
    ensure_suite(cfg, max(suite_games, games), seed)
    summary = evaluate([build_agent(spec)], cfg, command_name="eval")
    return _print_summary(summary, cfg.out)


def compare_cmd(student: str = "duomem", teacher: str = "expert", ablation: bool = False, data: str | None = None,
                split: str = "valid_unseen", games: int = 6, max_steps: int = 50, workers: int = 2,
                out: str = "runs/compare", progress: bool = True, suite_games: int = SUITE_GAMES,
                seed: int = 0, threads: int | None = None) -> int:
    """Student vs teacher on the same games in the same order (ablation: base/+memories/+LoRA/DuoMem too)."""
    from .harness.agents import build_agent, for_workers, parse_agent
    from .harness.evaluate import ensure_suite, evaluate

    cfg = _config(data, split, games, max_steps, workers, out, progress, threads)
    names = [student, teacher] + ([a for a in ABLATION if a != student] if ablation else [])
    specs = [for_workers(parse_agent(s), workers, threads) for s in names]
    ensure_suite(cfg, max(suite_games, games), seed)
    summary = evaluate([build_agent(s) for s in specs], cfg, pair=True, command_name="compare")
    return _print_summary(summary, cfg.out)


def games_cmd(action: str, data: str | None = None, split: str = "valid_unseen", counts: list[str] | None = None,
              seed: int = 0, workers: int = 2) -> dict:
    """`list`: games per split and task type under `data`; `build`: generate splits (counts like valid_unseen=134)."""
    from collections import Counter

    from .alfworld.games import SPLITS, list_games

    root = Path(data) if data else default_data_root()
    if action == "build":
        from .alfworld.generate import build_suite

        build_suite(root, _counts(counts or [f"{split}=134"]), seed=seed, workers=workers)
    found = {}
    for s in SPLITS:
        try:
            games = list_games(root, s)
        except ValueError:
            continue
        found[s] = dict(sorted(Counter(g.task_type for g in games).items()))
        print(f"{s}: {len(games)} {games[0].source} games  " + "  ".join(f"{t}={n}" for t, n in found[s].items()))
    if not found:
        print(f"no games under {root}/json_2.1.1 (build some: duomem-fast games build --data {root})")
    return found


def _counts(items: list[str]) -> dict:
    out = {}
    for item in items:
        split, eq, n = item.partition("=")
        if not eq or not n.isdigit():
            raise ValueError(f"bad count {item!r}: expected SPLIT=N, e.g. valid_unseen=134")
        out[split] = int(n)
    return out


def distill_cmd(data: str | None = None, out: str = "runs/distill", split: str = "train", games: int = 0,
                max_steps: int = 50, teacher: str = "expert", skip_train: bool = False,
                max_minutes: float | None = None, progress: bool = True, dagger_rounds: int = 0,
                dagger_games: int = 0) -> dict:
    """The DuoMem pipeline: teacher trajectories -> memory bank + LoRA adapter, into `out` (resumable)."""
    from .distill.config import TrainConfig
    from .distill.dagger import DaggerConfig
    from .distill.pipeline import PipelineConfig, run_pipeline
    from .distill.trajectories import CollectConfig
    from .harness.agents import build_agent, parse_agent

    spec = parse_agent(teacher)
    factory = None
    if spec.kind != "expert":          # any other agent spec as the teacher (e.g. openai:URL)
        agent = build_agent(spec)
        factory = lambda run: agent.plan.make_policy(None)  # noqa: E731
    cfg = PipelineConfig(collect=CollectConfig(split=split, max_steps=max_steps, max_games=games or None,
                                               teacher=spec.text),
                         train=TrainConfig(max_minutes=max_minutes), skip_train=skip_train,
                         dagger_rounds=dagger_rounds, dagger=DaggerConfig(split=split, max_games=dagger_games or None))
    summary = run_pipeline(Path(data) if data else default_data_root(), Path(out), cfg, policy_factory=factory,
                           progress=progress)
    print(f"distilled into {out}: {summary.get('stages')}; final adapter: {summary.get('adapter')}")
    return 0


def bench_cmd(only: str | None = None, extra: list[str] | None = None) -> int:
    """Run benchmarks/bench_*.py (those whose name contains `only`), printing their tables; returns failures."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    scripts = sorted(p for p in root.glob("bench_*.py") if not only or only in p.stem)
    if not scripts:
        raise ValueError(f"no benchmark script matches {only!r} in {root}")
    failed = 0
    for script in scripts:
        print(f"== {script.name}", flush=True)
        failed += subprocess.run([sys.executable, str(script), *(extra or [])]).returncode != 0
    return failed


def serve_cmd(model: str | None = None, adapter: str | None = None, merge: bool = False, dtype: str | None = None,
              host: str = "127.0.0.1", port: int = 8000, name: str | None = None, wdtype: str | None = None) -> None:
    """OpenAI-compatible HTTP server over the engine (chat/completions, completions, models; streaming)."""
    from .server import serve

    serve(model=model, adapter=adapter, merge_lora=merge, dtype=dtype, host=host, port=port, model_name=name,
          weight_dtype=wdtype)


def _print_summary(summary: dict, out: Path) -> int:
    """Print the headline figures; returns the number of episodes that failed with an error (the exit code)."""
    for name, s in summary["agents"].items():
        lo, hi = s["ci95"]
        print(f"{name:>24}: success {s['won']}/{s['games']} = {s['success_rate']:.1%} [{lo:.0%}, {hi:.0%}]  "
              f"model {s['model_seconds_per_task']:.2f} s/task  env {s['env_seconds_per_task']:.2f} s/task  "
              f"steps {s['avg_steps']:.1f}")
    if "pair" in summary:
        p = summary["pair"]
        print(f"paired ({p['games']} games): both {p['both']}, only teacher {p['only_teacher']}, "
              f"only student {p['only_student']}, neither {p['neither']}")
    print(f"report: {out / 'report.md'}  summary: {out / 'summary.json'}")
    errors = sum(len(s.get("errors", [])) for s in summary["agents"].values())
    if errors:
        print(f"{errors} episode(s) failed with an error and are not counted: rerun the same command to retry them",
              file=sys.stderr)
    return min(errors, 1)


def _play_args(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--data", help="folder holding json_2.1.1/ (default: $ALFWORLD_DATA or "
                   "~/.cache/duomem_fast/alfworld; a small generated suite is built there if the split is missing)")
    p.add_argument("--split", default="valid_unseen", choices=("train", "valid_seen", "valid_unseen"))
    p.add_argument("--games", type=int, default=6, help="first N games of the split, taken round-robin over task types (0 = all)")
    p.add_argument("--max-steps", type=int, default=50, help="steps per episode before it counts as lost")
    p.add_argument("--workers", type=int, default=2, help="episodes played at once (envs in worker processes)")
    p.add_argument("--out", default=out, help="report folder; episodes go to OUT/runs/<agent>-<config hash>/")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--suite-games", type=int, default=SUITE_GAMES, help="size of a suite built when none exists")
    p.add_argument("--seed", type=int, default=0, help="seed of a suite built when none exists")
    p.add_argument("--threads", type=int, help="torch threads per engine (default: the cores split among "
                   "the episode workers)")


AGENT_HELP = ("agent spec: expert | random | duomem | base | memories | lora | engine[,model=M,adapter=A|none,"
              "memory=BANK|none,k=2,mode=score|generate,choose=best|greedy|sum|mean,merge=1|0,wdtype=bfloat16|float32,"
              "dtype=float32|bfloat16] | hf:PATH[,adapter=..] | openai:URL[,model=NAME,"
              "timeout=60,retries=4,rate=REQ_PER_S]")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="duomem-fast", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("eval", help="one agent on a split (default: the shipped DuoMem student)",
                       description=eval_cmd.__doc__)
    p.add_argument("--agent", default="duomem", help=AGENT_HELP)
    _play_args(p, "runs/eval")
    p = sub.add_parser("compare", help="student vs teacher on the same games", description=compare_cmd.__doc__)
    p.add_argument("--student", default="duomem", help=AGENT_HELP)
    p.add_argument("--teacher", default="expert", help="same specs as --student")
    p.add_argument("--ablation", action="store_true", help="also run base, +memories, +LoRA and DuoMem students")
    _play_args(p, "runs/compare")
    p = sub.add_parser("games", help="build or list game suites", description=games_cmd.__doc__)
    p.add_argument("action", choices=("list", "build"))
    p.add_argument("--data", help="folder holding (or to receive) json_2.1.1/")
    p.add_argument("--split", default="valid_unseen")
    p.add_argument("--count", dest="counts", action="append", metavar="SPLIT=N",
                   help="games to generate per split (repeatable; default valid_unseen=134)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p = sub.add_parser("distill", help="DuoMem pipeline: teacher runs -> memory bank + LoRA adapter",
                       description=distill_cmd.__doc__)
    p.add_argument("--data", help="folder holding json_2.1.1/ with the teacher's split")
    p.add_argument("--out", default="runs/distill", help="trajectories.jsonl, bank.jsonl, adapter/, pipeline.json")
    p.add_argument("--split", default="train")
    p.add_argument("--games", type=int, default=0, help="first N games of the split (0 = all)")
    p.add_argument("--max-steps", type=int, default=50)
    p.add_argument("--teacher", default="expert", help="agent spec of the teacher (expert, openai:URL, ...)")
    p.add_argument("--skip-train", action="store_true", help="stop after the memory bank")
    p.add_argument("--max-minutes", type=float, help="LoRA training budget (it saves and stops when spent)")
    p.add_argument("--dagger-rounds", type=int, default=0, help="then N DAgger rounds: the student plays, the expert "
                   "labels the states it reaches, the adapter continues on them (the shipped adapter had 2)")
    p.add_argument("--dagger-games", type=int, default=0, help="games per DAgger round, round i from game "
                   "(i-1)*N of the split (0 = all games every round)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p = sub.add_parser("bench", help="run the benchmark scripts and print their tables", description=bench_cmd.__doc__)
    p.add_argument("--only", help="only scripts whose name contains this")
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server over the engine", description=serve_cmd.__doc__)
    p.add_argument("--model", help="HF model dir or .gguf (default: SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", help="PEFT LoRA adapter directory")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the weights")
    p.add_argument("--dtype", help="float32 | bfloat16")
    p.add_argument("--wdtype", help="bfloat16: projection weights stored in bf16 under fp32 activations and KV "
                   "(half the bytes per token; what engine agents run by default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", help="model id reported by /v1/models")
    return ap


COMMANDS = {"eval": eval_cmd, "compare": compare_cmd, "games": games_cmd, "distill": distill_cmd,
            "bench": bench_cmd, "serve": serve_cmd}


def main(argv: list[str] | None = None) -> int:
    from .harness.openai_client import APIError
    from .harness.runner import EpisodeError

    args = vars(build_parser().parse_args(argv))
    command = COMMANDS[args.pop("command")]
    try:
        result = command(**args)
    except (ValueError, EpisodeError, APIError) as e:     # bad input or a dead endpoint: one clear line
        print(f"duomem-fast: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished episodes are saved; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
