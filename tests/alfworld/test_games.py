"""Game sources: the official layout selected as alfworld does, and clear errors for bad input."""
import json

import pytest

from alf_helpers import SAMPLE, make_official, needs_sample, write_trial
from duomem_fast.alfworld.games import GENERATED_MARKER, SPLITS, TASK_TYPES, Game, list_games

GAME = {"pddl_domain": "d", "grammar": "g", "pddl_problem": "p", "solvable": True}


def test_names():
    assert len(TASK_TYPES) == 6 and SPLITS == ("train", "valid_seen", "valid_unseen")


@needs_sample
def test_official_layout_and_id(tmp_path):
    trial = make_official(tmp_path)
    games = list_games(tmp_path, "valid_unseen")
    assert [g.path for g in games] == [trial / "game.tw-pddl"]
    game = games[0]
    assert game.source == "official" and game.split == "valid_unseen"
    assert game.task_type == "pick_heat_then_place_in_recep"
    assert game.id == "json_2.1.1/valid_unseen/pick_heat_then_place_in_recep-Potato-None-SinkBasin-1/" \
                      "trial_T20190908_231731_054988/game.tw-pddl"


def test_selection_like_alfworld(tmp_path, monkeypatch):
    write_trial(tmp_path, "train", "pick_and_place_simple-Apple-None-Fridge-7", "pick_and_place_simple", GAME)
    write_trial(tmp_path, "train", "look_at_obj_in_light-Book-None-DeskLamp-301", "look_at_obj_in_light",
                {**GAME, "solvable": False})
    write_trial(tmp_path, "train", "pick_cool_then_place_in_recep-AppleSliced-None-Fridge-7",
                "pick_cool_then_place_in_recep", GAME)
    write_trial(tmp_path, "train", "pick_and_place_with_movable_recep-Apple-Bowl-Fridge-7",
                "pick_and_place_with_movable_recep", GAME)
    write_trial(tmp_path, "train", "pick_two_obj_and_place-Apple-None-Fridge-8", "pick_two_obj_and_place", None)
    nokey = dict(GAME)
    del nokey["solvable"]
    write_trial(tmp_path, "train", "pick_two_obj_and_place-Egg-None-Fridge-9", "pick_two_obj_and_place", nokey)
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    games = list_games(None, "train")
    assert [g.task_type for g in games] == ["pick_and_place_simple"]
    (tmp_path / "json_2.1.1" / GENERATED_MARKER).write_text("{}")
    assert list_games(tmp_path, "train")[0].source == "generated"


def test_missing_folders(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="json_2.1.1"):
        list_games(tmp_path, "train")
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    with pytest.raises(ValueError, match="ALFWORLD_DATA"):
        list_games(None, "train")
    (tmp_path / "json_2.1.1").mkdir()
    with pytest.raises(ValueError, match="valid_seen"):
        list_games(tmp_path, "valid_seen")
    with pytest.raises(ValueError, match="'test'"):
        list_games(tmp_path, "test")


def test_empty_split(tmp_path):
    (tmp_path / "json_2.1.1" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="'train' is empty"):
        list_games(tmp_path, "train")


def test_game_not_json_or_lacking_keys(tmp_path):
    trial = write_trial(tmp_path, "train", "pick_and_place_simple-Apple-None-Fridge-7", "pick_and_place_simple",
                        "{not json")
    with pytest.raises(ValueError, match=str(trial / "game.tw-pddl")):
        list_games(tmp_path, "train")
    (trial / "game.tw-pddl").write_text(json.dumps({"pddl_domain": "d", "solvable": True}))
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['grammar', 'pddl_problem'\]"):
        list_games(tmp_path, "train")
    (trial / "traj_data.json").write_text("[]")
    with pytest.raises(ValueError, match="traj_data.json must hold a JSON object"):
        list_games(tmp_path, "train")


def test_unknown_task_type(tmp_path):
    write_trial(tmp_path, "train", "fly_to_moon-Apple-None-Fridge-7", "fly_to_moon", GAME)
    with pytest.raises(ValueError, match="unknown task type 'fly_to_moon'"):
        list_games(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown task type 'dance'"):
        Game(SAMPLE / "game.tw-pddl", "train", "official", "dance")
    with pytest.raises(ValueError, match="unknown game source 'mine'"):
        Game(SAMPLE / "game.tw-pddl", "train", "mine", "pick_and_place_simple")
