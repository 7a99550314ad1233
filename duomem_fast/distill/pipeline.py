"""One call from games to a distilled student: teacher trajectories -> memory bank -> LoRA adapter.

Layout of `out_dir`:
  trajectories.jsonl   every teacher episode (won or not), appended as it ends
  bank.jsonl (+ .safetensors)   one memory per won trajectory, saved every `save_every` new memories
  adapter/             PEFT adapter + training.json (checkpoint/ while training)
  dagger1/ ...         with dagger_rounds: the previous adapter's student plays train games while the expert labels
                       (rollouts.jsonl), then that adapter continues training (adapter/); see dagger.py
  pipeline.json        what each stage produced and how long it took; "adapter": the final one
Each stage resumes: finished episodes are skipped, memories already in the bank are kept, training restarts
from its last checkpoint (or is skipped when done with the same config and data).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from duomem_fast.distill.config import TrainConfig
from duomem_fast.distill.dagger import DaggerConfig
from duomem_fast.distill.trajectories import CollectConfig, collect_trajectories
from duomem_fast.memory.bank import MemoryBank
from duomem_fast.memory.build import memory_from_record, memory_id

log = logging.getLogger("duomem_fast.distill")


@dataclass(slots=True)
class PipelineConfig:
    collect: CollectConfig = field(default_factory=CollectConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    keep_trajectory: bool = True        # store reference trajectories in the bank (parts='trajectory'/'both')
    embedder: str = "auto"
    save_every: int = 25
    skip_train: bool = False
    dagger_rounds: int = 0              # DAgger rounds after the adapter (the shipped one had 2: assets/CARD.md)
    dagger: DaggerConfig = field(default_factory=DaggerConfig)   # per round; round i plays games from
    #                                     (i-1) * dagger.max_games on (all games each round when max_games is None)
    dagger_lr: float = 3e-4             # the rounds continue the previous adapter at this learning rate
    dagger_expert: int = 40             # teacher trajectories of the round's games trained beside its rollouts
    dagger_replay: int = 30             # the previous round's rollouts replayed (DAgger trains on all rounds)

    def __post_init__(self):
        if self.dagger_rounds < 0 or self.dagger_expert < 0 or self.dagger_replay < 0:
            raise ValueError(f"dagger_rounds, dagger_expert and dagger_replay must be >= 0, got "
                             f"{self.dagger_rounds}, {self.dagger_expert}, {self.dagger_replay}")
        if self.dagger_rounds and self.skip_train:
            raise ValueError("dagger_rounds need the trained adapter: drop skip_train")


def run_pipeline(data_root: str | Path | None, out_dir: str | Path, config: PipelineConfig | None = None,
                 policy_factory: Callable[[int], object] | None = None, complete: Callable[[str], str] | None = None,
                 progress: bool = True) -> dict:
    """Run (or resume) the three stages; returns the summary also written to `out_dir/pipeline.json`.

    policy_factory(run) -> teacher Policy (default: the ALFWorld expert); complete(prompt) -> str: a language-model
    script writer (default: the deterministic rule builder).
    """
    cfg = config or PipelineConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary, t0 = {"config": _jsonable(cfg), "stages": {}}, time.perf_counter()
    won = collect_trajectories(data_root, out / "trajectories.jsonl", cfg.collect, policy_factory, progress)
    summary["stages"]["trajectories"] = {"won": len(won), "seconds": round(time.perf_counter() - t0, 1)}
    t1 = time.perf_counter()
    bank = build_bank(won, out / "bank.jsonl", complete, cfg.keep_trajectory, cfg.embedder, cfg.save_every, progress)
    summary["stages"]["bank"] = {"memories": len(bank), "embedder": bank.embedder_name,
                                 "seconds": round(time.perf_counter() - t1, 1)}
    if not cfg.skip_train:
        from duomem_fast.distill.train import train_lora
        t2 = time.perf_counter()
        trained = train_lora(won, out / "adapter", cfg.train, bank=bank, progress=progress)
        summary["stages"]["adapter"] = {k: trained[k] for k in ("done", "stopped", "steps", "planned_steps",
                                                                "seconds", "tokens_per_second", "data")}
        summary["stages"]["adapter"]["wall_seconds"] = round(time.perf_counter() - t2, 1)
        summary["adapter"] = str(out / "adapter")
        if trained["done"]:                      # rounds start from a finished adapter only (a budget may stop it)
            summary["adapter"] = str(_dagger_rounds(data_root, out, cfg, won, bank, summary, progress))
    (out / "pipeline.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _dagger_rounds(data_root, out: Path, cfg: PipelineConfig, won: list[dict], bank, summary: dict,
                   progress: bool) -> Path:
    """Run (or resume) the DAgger rounds; returns the final adapter directory."""
    import random
    from dataclasses import replace

    from duomem_fast.distill.dagger import agreement, run_round
    adapter, replay = out / "adapter", []
    train = replace(cfg.train, lr=cfg.dagger_lr, warmup_steps=min(cfg.train.warmup_steps, 2))
    for i in range(1, cfg.dagger_rounds + 1):
        t = time.perf_counter()
        games = replace(cfg.dagger, first_game=cfg.dagger.first_game + (i - 1) * (cfg.dagger.max_games or 0))
        rollouts, trained = run_round(data_root, out / f"dagger{i}", adapter, bank, games, train, won, replay,
                                      cfg.dagger_expert, progress)
        summary["stages"][f"dagger{i}"] = {"rollouts": len(rollouts), "won": sum(r["won"] for r in rollouts),
                                           "agreement": round(agreement(rollouts), 3), "steps": trained["steps"],
                                           "done": trained["done"], "seconds": round(time.perf_counter() - t, 1)}
        adapter = out / f"dagger{i}" / "adapter"
        if not trained["done"]:
            break
        replay = random.Random(i).sample(rollouts, min(cfg.dagger_replay, len(rollouts)))
    return adapter


def final_adapter(run_dir: str | Path) -> Path:
    """The adapter a pipeline run ends with: its last DAgger round's, else adapter/."""
    run = Path(run_dir)
    rounds = sorted(run.glob("dagger[0-9]*/adapter"), key=lambda p: int(p.parent.name[len("dagger"):]))
    return rounds[-1] if rounds else run / "adapter"


def build_bank(records: list[dict], path: Path, complete: Callable[[str], str] | None = None,
               keep_trajectory: bool = True, embedder: str = "auto", save_every: int = 25,
               progress: bool = True) -> MemoryBank:
    """Load the bank at `path` if present, add a memory for each record not yet in it, save; returns it."""
    from tqdm import tqdm
    bank = MemoryBank.load(path, embedder=embedder) if path.exists() else MemoryBank(embedder=embedder)
    known = {m.id for m in bank}
    todo = [r for r in records if memory_id(r) not in known]
    for i, rec in enumerate(tqdm(todo, desc="memories", unit="mem", disable=not progress or not todo), start=1):
        bank.add(_memory(rec, complete, keep_trajectory))
        if i % save_every == 0:
            bank.save(path)
    if todo or not path.exists():
        bank.meta.update({"builder": "lm" if complete else "rules", "records": len(records)})
        bank.save(path)
    return bank


def _memory(rec: dict, complete, keep_trajectory: bool):
    if complete is None:
        return memory_from_record(rec, keep_trajectory=keep_trajectory)
    try:
        return memory_from_record(rec, complete, keep_trajectory)
    except Exception as exc:                  # a teacher hiccup costs one LM script, not the run
        log.warning("script writer failed on %s (%s); using the rule builder", rec.get("game"), exc)
        mem = memory_from_record(rec, keep_trajectory=keep_trajectory)
        mem.provenance["lm_error"] = str(exc)[:200]
        return mem


def _jsonable(cfg: PipelineConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg), default=str))
