"""One call from games to a distilled student: teacher trajectories -> memory bank -> LoRA adapter.

Layout of `out_dir`:
  trajectories.jsonl   every teacher episode (won or not), appended as it ends
  bank.jsonl (+ .safetensors)   one memory per won trajectory, saved every `save_every` new memories
  adapter/             PEFT adapter + training.json (checkpoint/ while training)
  pipeline.json        what each stage produced and how long it took
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
    (out / "pipeline.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


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
