"""Generated text -> one command in the `move X to Y` syntax, matched to the admissible commands."""
import pytest

from duomem_fast.alfworld.parse import parse_action
from duomem_fast.alfworld.prompts import SYSTEM_PROMPT, first_user_message, system_message

ADMISSIBLE = ["go to cabinet 1", "go to cabinet 7", "take apple 1 from countertop 1",
              "move apple 1 to countertop 1", "heat apple 1 with microwave 1", "look"]


@pytest.mark.parametrize("text, expected", [
    ("Action: go to cabinet 1", "go to cabinet 1"),
    ("> Go to the Cabinet 1.", "go to cabinet 1"),
    ("Think: I need the apple.\nAction: take the apple 1 from the countertop 1", "take apple 1 from countertop 1"),
    ("put apple 1 in/on countertop 1", "move apple 1 to countertop 1"),
    ("Action: put the apple 1 on countertop 1.\nObservation: ...", "move apple 1 to countertop 1"),
    ("  ACTION:  \n  look  ", "look"),
    ("heat aple 1 with microwave 1", "heat apple 1 with microwave 1"),
    ("go to cabinet 12", "go to cabinet 12"),  # never swapped for another instance; the game rejects it
    ("I will dance now", "i will dance now"),
    ("", ""),
])
def test_parse_action(text, expected):
    assert parse_action(text, ADMISSIBLE) == expected


def test_prompts_use_one_syntax():
    assert "move {object} to {receptacle}" in SYSTEM_PROMPT and "put " not in SYSTEM_PROMPT.replace("To put", "")
    assert system_message("PB", "system").endswith("PB") and "PB" not in system_message("PB", "after_obs")
    assert first_user_message("obs", "PB", "after_obs").endswith("PB") and first_user_message("obs", "PB") == "obs"
    with pytest.raises(ValueError, match="'middle'"):
        system_message("PB", "middle")
