"""A generated suite of all six task types: official layout, loads through alfworld's own AlfredTWEnv and our
wrapper, the expert wins every game marked solvable, deterministic from the seed, resumable."""
import json
from collections import Counter

import pytest

from alf_helpers import needs_alfworld
from duomem_fast.alfworld.agent import run_episode
from duomem_fast.alfworld.expert import ExpertPolicy
from duomem_fast.alfworld.games import TASK_TYPES, list_games
from duomem_fast.alfworld.generate import EXPERT_STEPS, build_suite, make_slot, slot_types
from duomem_fast.alfworld.proportions import OFFICIAL
from duomem_fast.alfworld.scene import constants

pytestmark = needs_alfworld
ONE_EACH = {t: 1 for t in TASK_TYPES}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    made = build_suite(root, {"valid_unseen": ONE_EACH}, seed=3, workers=2, progress=False)
    return root, made


def test_suite_has_all_types_in_official_layout(suite):
    root, made = suite
    assert sorted(r["task_type"] for r in made) == sorted(TASK_TYPES)
    games = list_games(root, "valid_unseen")
    assert {g.source for g in games} == {"generated"}
    assert len(games) == sum(r["solvable"] for r in made) >= 5
    for g in games:
        assert g.id.startswith("json_2.1.1/valid_unseen/" + g.task_type + "-")
        traj = json.loads(g.traj_path.read_text())
        assert traj["scene"]["scene_num"] in constants().TEST_SCENE_NUMBERS  # held-out scenes only
        assert traj["scene"]["room"] in constants().GOALS_VALID[g.task_type]


def test_expert_wins_every_solvable_game(suite):
    root, _ = suite
    for game in list_games(root, "valid_unseen"):
        rec = run_episode(game, ExpertPolicy(seed=3), max_steps=EXPERT_STEPS)
        assert rec["won"], (game.id, rec["actions"])
        stored = json.loads(game.traj_path.read_text())["generated"]["expert"]
        assert rec["actions"] == stored["actions"] and rec["task"] == stored["task"]


def test_loads_through_alfworld_env(suite):
    from alfworld.agents.environment import get_environment

    root, _ = suite
    split = str(root / "json_2.1.1" / "valid_unseen")
    config = {"env": {"goal_desc_human_anns_prob": 0.0, "task_types": [1, 2, 3, 4, 5, 6],
                      "domain_randomization": False, "expert_type": "handcoded"},
              "dataset": {"data_path": split, "eval_id_data_path": split, "eval_ood_data_path": split,
                          "num_train_games": -1, "num_eval_games": -1},
              "general": {"training_method": "dagger"}, "dagger": {"training": {"max_nb_steps_per_episode": 5}}}
    alf = get_environment("AlfredTWEnv")(config, train_eval="eval_out_of_distribution")
    assert alf.num_games == len(list_games(root, "valid_unseen"))
    env = alf.init_env(batch_size=1)
    try:
        obs, infos = env.reset()
        assert "Your task is to:" in obs[0] and infos["admissible_commands"][0]
        obs, _, dones, _ = env.step([infos["admissible_commands"][0][0]])
        assert obs[0] and dones == (False,)
    finally:
        env.close()


def test_resume_and_determinism(suite, tmp_path):
    root, made = suite
    assert build_suite(root, {"valid_unseen": ONE_EACH}, seed=3, workers=1, progress=False) == []
    again = make_slot(str(tmp_path), "valid_unseen", 0, made[0]["task_type"] if made[0]["k"] == 0 else
                      next(r["task_type"] for r in made if r["k"] == 0), 3)
    first = sorted((root / "json_2.1.1" / "valid_unseen").glob("*/trial_S3_00000/game.tw-pddl"))
    second = sorted((tmp_path / "json_2.1.1" / "valid_unseen").glob("*/trial_S3_00000/game.tw-pddl"))
    assert again["solvable"] and len(first) == len(second) == 1
    assert first[0].read_text() == second[0].read_text()


def test_slot_types_follow_official_proportions():
    assert Counter(slot_types(134, "valid_unseen")) == OFFICIAL["valid_unseen"]
    assert slot_types(500, "train")[:200] == slot_types(200, "train")  # growing a suite keeps its prefix
    counts = Counter(slot_types(200, "train"))
    for t, c in OFFICIAL["train"].items():
        assert abs(counts[t] - 200 * c / sum(OFFICIAL["train"].values())) <= 1
    with pytest.raises(ValueError, match="unknown split 'test'"):
        build_suite("/tmp/x", {"test": 3})
    with pytest.raises(ValueError, match="unknown task type 'juggle'"):
        slot_types({"juggle": 2}, "train")
