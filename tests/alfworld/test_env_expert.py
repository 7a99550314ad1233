"""The real ALFWorld sample through our wrapper: the expert wins it; step limit, invalid actions, records."""
import pytest

from alf_helpers import SAMPLE, make_official, needs_alfworld, needs_sample
from duomem_fast.alfworld.agent import run_episode, run_games
from duomem_fast.alfworld.env import NOTHING, AlfEnv
from duomem_fast.alfworld.expert import ExpertPolicy
from duomem_fast.alfworld.games import Game, list_games
from duomem_fast.alfworld.records import read_records

pytestmark = [needs_alfworld, needs_sample]
RECORD_KEYS = {"game", "source", "split", "task_type", "task", "agent", "config", "won", "steps", "actions",
               "observations", "tokens_in", "tokens_reused", "tokens_out", "model_seconds", "env_seconds",
               "wall_seconds"}


def test_expert_wins_real_sample():
    rec = run_episode(SAMPLE / "game.tw-pddl", ExpertPolicy(), max_steps=50)
    assert set(rec) == RECORD_KEYS
    assert rec["won"] and rec["task"] == "put a hot potato in sinkbasin"
    assert rec["task_type"] == "pick_heat_then_place_in_recep"
    assert rec["steps"] == len(rec["actions"]) == len(rec["observations"]) - 1 <= 20
    assert any(a.startswith("heat potato") for a in rec["actions"])
    assert rec["actions"][-1].startswith("move potato") and rec["actions"][-1].endswith("to sinkbasin 1")
    assert rec["env_seconds"] > 0 and rec["model_seconds"] == 0.0


def test_step_limit_and_invalid_actions():
    with AlfEnv(SAMPLE, max_steps=3) as env:
        obs = env.reset()
        assert obs.task == "put a hot potato in sinkbasin" and "go to microwave 1" in obs.admissible
        assert not obs.text.startswith("-=")
        obs = env.step("dance with the fridge")
        assert obs.text == NOTHING and env.steps == 1 and not obs.done
        obs = env.step("")
        assert obs.text == NOTHING and env.steps == 2
        obs = env.step("go to microwave 1")
        assert obs.text.startswith("You arrive at microwave 1") and obs.done and not obs.won
        with pytest.raises(ValueError, match="episode is over"):
            env.step("look")


def test_bad_game_path(tmp_path):
    with pytest.raises(ValueError, match="game file not found"):
        AlfEnv(tmp_path / "nope" / "game.tw-pddl")
    with pytest.raises(ValueError, match="max_steps"):
        AlfEnv(SAMPLE, max_steps=0)
    ghost = Game(tmp_path / "gone" / "game.tw-pddl", "train", "official", "pick_and_place_simple")
    with pytest.raises(ValueError, match="gone"):
        AlfEnv(ghost)


def test_run_games_appends_and_skips_done(tmp_path):
    make_official(tmp_path)
    games = list_games(tmp_path, "valid_unseen")
    out = tmp_path / "runs.jsonl"
    first = run_games(games, ExpertPolicy(), out, {"teacher": "handcoded"}, max_steps=30)
    assert len(first) == 1 and first[0]["won"] and first[0]["source"] == "official"
    again = run_games(games, ExpertPolicy(), out, {"teacher": "handcoded"}, max_steps=30)
    assert again == first and len(read_records(out)) == 1
    short = run_games(games, ExpertPolicy(), out, {"teacher": "handcoded"}, max_steps=2)
    assert not short[0]["won"] and short[0]["steps"] == 2 and short[0]["config"] != first[0]["config"]
    assert len(read_records(out)) == 2


def test_planner_teacher_under_caps():
    from duomem_fast.alfworld.planner import PlannerPolicy, plan

    rec = run_episode(SAMPLE / "game.tw-pddl", PlannerPolicy(timeout=120), max_steps=20)
    assert rec["won"] and rec["agent"] == "planner" and rec["steps"] <= 8
    assert plan(SAMPLE / "game.tw-pddl", timeout=120, memory_mb=64) is None  # over the memory cap: no plan
    with pytest.raises(ValueError, match="timeout"):
        plan(SAMPLE / "game.tw-pddl", timeout=0)
