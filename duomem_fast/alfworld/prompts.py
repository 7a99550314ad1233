"""The agent's prompts. One command syntax everywhere: alfworld 0.4's `move X to Y` (never `put X in/on Y`)."""
from __future__ import annotations

COMMANDS = (
    "go to {receptacle}",
    "open {receptacle}",
    "close {receptacle}",
    "take {object} from {receptacle}",
    "move {object} to {receptacle}",
    "examine {receptacle or object}",
    "use {lamp}",
    "heat {object} with {microwave}",
    "cool {object} with {fridge}",
    "clean {object} with {sinkbasin}",
    "inventory",
    "look",
)

SYSTEM_PROMPT = (
    "You are a household agent in a text game. You see what happens after each of your commands. "
    "Reach the goal stated after 'Your task is to:' in as few commands as possible.\n"
    "Commands (use the exact object names you have seen, with their numbers):\n"
    + "\n".join(f"- {c}" for c in COMMANDS)
    + "\nTo put something in or on a receptacle, go there while holding it and use 'move X to Y'. "
    "Openable receptacles (fridge, cabinet, drawer, microwave, safe) must be opened to see inside.\n"
    "Answer with one command per turn, on one line: Action: <command>"
)

PLAYBOOK_HEADER = "Useful experience from similar tasks:"
ACTION_PREFIX = "Action:"


def system_message(playbook: str | None = None, placement: str = "system") -> str:
    """The system message; the playbook goes here when placement is "system" (so its KV is a shared prefix)."""
    check_placement(placement)
    if playbook and placement == "system":
        return f"{SYSTEM_PROMPT}\n\n{PLAYBOOK_HEADER}\n{playbook.strip()}"
    return SYSTEM_PROMPT


def first_user_message(observation: str, playbook: str | None = None, placement: str = "system") -> str:
    """The first user turn: the initial observation (with the task), then the playbook if placed after it."""
    check_placement(placement)
    if playbook and placement == "after_obs":
        return f"{observation.strip()}\n\n{PLAYBOOK_HEADER}\n{playbook.strip()}"
    return observation.strip()


def check_placement(placement: str) -> str:
    if placement not in ("system", "after_obs"):
        raise ValueError(f"unknown playbook placement {placement!r}; expected 'system' or 'after_obs'")
    return placement
