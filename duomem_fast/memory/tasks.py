"""ALFWorld task sentences: the six task types and a parser for the goal templates alfworld's goal library uses.

`parse_task("put a hot apple in fridge.")` -> TaskParts("pick_heat_then_place_in_recep", "apple", "fridge").
Retrieval uses the parsed type to rank same-type memories first; the script builder uses the object and target
names to generalise a trajectory.
"""
from __future__ import annotations

import re
from typing import NamedTuple

TASK_TYPES = ("pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
              "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place")

_O, _R = r"(?P<obj>[a-z][a-z ]*?)", r"(?P<recep>[a-z][a-z ]*?)"
# Most specific first: "put a hot X in Y" must not be read as a plain "put a X in Y".
_PATTERNS = [
    ("pick_clean_then_place_in_recep", [rf"put a clean {_O} (?:in|on) {_R}", rf"clean (?:a|an|some) {_O} and put it (?:in|on) {_R}"]),
    ("pick_heat_then_place_in_recep", [rf"put a hot {_O} (?:in|on) {_R}", rf"heat (?:a|an|some) {_O} and put it (?:in|on) {_R}"]),
    ("pick_cool_then_place_in_recep", [rf"put a cool {_O} (?:in|on) {_R}", rf"cool (?:a|an|some) {_O} and put it (?:in|on) {_R}"]),
    ("pick_two_obj_and_place", [rf"put two {_O} (?:in|on) {_R}", rf"find two {_O} and put them (?:in|on) {_R}"]),
    ("look_at_obj_in_light", [rf"look at (?:the |a |an )?{_O} under the {_R}", rf"examine the {_O} with the {_R}"]),
    ("pick_and_place_simple", [rf"put (?:a|an|some) {_O} (?:in|on) {_R}"]),
]
_COMPILED = [(t, [re.compile(rf"^{p}$") for p in ps]) for t, ps in _PATTERNS]
_PREFIX = re.compile(r"^.*your task is to:\s*", re.S)


class TaskParts(NamedTuple):
    task_type: str
    obj: str
    recep: str     # the target receptacle, or the light source for look_at_obj_in_light


def normalize_task(task: str) -> str:
    """Lower-case goal sentence without 'Your task is to:' or the final period."""
    text = _PREFIX.sub("", task.strip().lower())
    return text.strip().rstrip(".").strip()


def parse_task(task: str) -> TaskParts | None:
    """The task type and names of an ALFWorld goal sentence, or None when it matches no known template."""
    text = normalize_task(task)
    for task_type, patterns in _COMPILED:
        for pattern in patterns:
            m = pattern.match(text)
            if m:
                return TaskParts(task_type, m["obj"].strip(), m["recep"].strip())
    return None


def infer_task_type(task: str) -> str | None:
    parts = parse_task(task)
    return parts.task_type if parts else None
