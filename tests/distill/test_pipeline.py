import importlib.util
import json

import pytest

from duomem_fast.distill.config import TrainConfig
from duomem_fast.distill.dagger import DaggerConfig
from duomem_fast.distill.pipeline import PipelineConfig, final_adapter, run_pipeline
from duomem_fast.distill.ship import ship
from duomem_fast.distill.trajectories import CollectConfig
from duomem_fast.memory import MemoryBank

from helpers import SAMPLE, sample_suite

HAVE_ALFWORLD = all(importlib.util.find_spec(m) for m in ("alfworld", "textworld", "fast_downward"))
pytestmark = [pytest.mark.skipif(not HAVE_ALFWORLD, reason="alfworld/textworld/fast_downward not installed"),
              pytest.mark.skipif(not (SAMPLE / "game.tw-pddl").is_file(), reason=f"no real ALFWorld sample at {SAMPLE}")]


def test_pipeline_on_a_real_game_resumes_and_skips_done_work(tiny_model, tmp_path):
    root, out = sample_suite(tmp_path / "data"), tmp_path / "out"
    out.mkdir()
    (out / "trajectories.jsonl").write_text('{"game": "torn by a kill", "won": tr')       # interrupted stage 1
    cfg = PipelineConfig(collect=CollectConfig(runs=2, max_steps=30), embedder="bm25",
                         train=TrainConfig(model=str(tiny_model), grad_accum=1, max_len=2048, bf16=False))
    first = run_pipeline(root, out, cfg, progress=False)
    lines = (out / "trajectories.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines[1:]]
    assert len(recs) == 2 and all(r["won"] for r in recs)                    # expert seeds 0 and 1
    assert first["stages"]["trajectories"]["won"] in (1, 2)                  # identical runs count once
    bank = MemoryBank.load(out / "bank.jsonl", embedder="bm25")
    assert len(bank) == first["stages"]["trajectories"]["won"]
    mem = bank.memories[0]
    assert mem.task_type == "pick_heat_then_place_in_recep" and "heat <object> with microwave" in mem.script
    assert first["stages"]["adapter"]["done"] and (out / "adapter" / "adapter_model.safetensors").exists()
    stamp = (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    second = run_pipeline(root, out, cfg, progress=False)                     # everything done: nothing redone
    assert (out / "trajectories.jsonl").read_text().splitlines() == lines
    assert MemoryBank.load(out / "bank.jsonl", embedder="bm25").content_sha() == bank.content_sha()
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert second["stages"]["adapter"]["seconds"] == first["stages"]["adapter"]["seconds"]


def test_dagger_rounds_continue_the_adapter_resume_and_ship(tiny_model, tmp_path):
    root, out = sample_suite(tmp_path / "data"), tmp_path / "out"
    cfg = PipelineConfig(collect=CollectConfig(max_steps=30), embedder="bm25", dagger_rounds=1,
                         dagger=DaggerConfig(max_steps=8), dagger_expert=1,
                         train=TrainConfig(model=str(tiny_model), grad_accum=1, max_len=2048, bf16=False))
    first = run_pipeline(root, out, cfg, progress=False)
    stage = first["stages"]["dagger1"]
    rollouts = [json.loads(x) for x in (out / "dagger1" / "rollouts.jsonl").read_text().splitlines()]
    assert stage["rollouts"] == len(rollouts) == 1 and len(rollouts[0]["labels"]) == rollouts[0]["steps"]
    assert stage["done"] and first["adapter"] == str(out / "dagger1" / "adapter") == str(final_adapter(out))
    training = json.loads((out / "dagger1" / "adapter" / "training.json").read_text())
    assert training["config"]["init_adapter"] == str(out / "adapter") and training["config"]["lr"] == cfg.dagger_lr
    assert training["data"]["episodes"] == 2                                  # 1 rollout + 1 expert trajectory
    stamp = (out / "dagger1" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    again = run_pipeline(root, out, cfg, progress=False)                      # resumed: nothing replayed or retrained
    assert (out / "dagger1" / "rollouts.jsonl").read_text().count("\n") == 1
    assert (out / "dagger1" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert again["stages"]["dagger1"]["rollouts"] == 1
    shipped = ship(out, tmp_path / "assets")
    assert json.loads((tmp_path / "assets" / "adapter" / "training.json").read_text())["config"]["init_adapter"] \
        == str(out / "adapter") and "bank.jsonl" in shipped


def test_bad_dagger_pipeline_config():
    with pytest.raises(ValueError, match="dagger_rounds need the trained adapter"):
        PipelineConfig(dagger_rounds=1, skip_train=True)
    with pytest.raises(ValueError, match="dagger_rounds, dagger_expert and dagger_replay must be >= 0"):
        PipelineConfig(dagger_rounds=-1)
    with pytest.raises(ValueError, match="first_game >= 0"):
        DaggerConfig(first_game=-2)
