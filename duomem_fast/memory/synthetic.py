"""Synthetic ALFWorld-like task sentences and won episode records, for tests and retrieval measurements.

Sentences follow alfworld's goal-library templates (two per task type) with object/receptacle vocabularies close
to ALFRED's; `synthetic_record` plays a plausible expert action list. Nothing here touches a real game.
"""
from __future__ import annotations

import random

from duomem_fast.memory.tasks import TASK_TYPES

TEMPLATES = {
    "pick_and_place_simple": ["put a {obj} in {recep}.", "put some {obj} on {recep}."],
    "look_at_obj_in_light": ["look at {obj} under the {recep}.", "examine the {obj} with the {recep}."],
    "pick_clean_then_place_in_recep": ["put a clean {obj} in {recep}.", "clean some {obj} and put it in {recep}."],
    "pick_heat_then_place_in_recep": ["put a hot {obj} in {recep}.", "heat some {obj} and put it in {recep}."],
    "pick_cool_then_place_in_recep": ["put a cool {obj} in {recep}.", "cool some {obj} and put it in {recep}."],
    "pick_two_obj_and_place": ["put two {obj} in {recep}.", "find two {obj} and put them in {recep}."],
}
OBJECTS = {
    "pick_and_place_simple": ["soapbottle", "spraybottle", "pencil", "cd", "book", "keychain", "creditcard", "vase",
                              "pillow", "cellphone", "tissuebox", "candle", "remotecontrol", "watch", "newspaper"],
    "look_at_obj_in_light": ["bowl", "cd", "book", "pencil", "keychain", "mug", "alarmclock", "pillow", "statue",
                             "creditcard", "laptop", "cellphone", "watch", "box", "vase"],
    "pick_clean_then_place_in_recep": ["mug", "cloth", "plate", "fork", "spoon", "knife", "apple", "lettuce", "cup",
                                       "egg", "ladle", "pan", "potato", "soapbar", "spatula"],
    "pick_heat_then_place_in_recep": ["apple", "bread", "cup", "egg", "mug", "plate", "potato", "tomato"],
    "pick_cool_then_place_in_recep": ["apple", "bowl", "bread", "cup", "egg", "lettuce", "mug", "pan", "plate", "pot",
                                      "potato", "tomato", "winebottle"],
    "pick_two_obj_and_place": ["pillow", "soapbar", "cd", "book", "pencil", "keychain", "creditcard", "spraybottle",
                               "toiletpaper", "candle", "cellphone", "remotecontrol", "vase", "saltshaker"],
}
TARGETS = ["countertop", "diningtable", "sidetable", "shelf", "cabinet", "drawer", "fridge", "microwave", "sinkbasin",
           "garbagecan", "coffeemachine", "desk", "dresser", "sofa", "armchair", "bed", "toilet", "cart", "bathtubbasin",
           "safe", "coffeetable", "countertop", "shelf", "drawer"]
LIGHTS = ["desklamp", "floorlamp"]
APPLIANCE = {"pick_clean_then_place_in_recep": ("clean", "sinkbasin"), "pick_heat_then_place_in_recep": ("heat", "microwave"),
             "pick_cool_then_place_in_recep": ("cool", "fridge")}


def synthetic_task(task_type: str, rng: random.Random) -> str:
    """One goal sentence of `task_type` with random names."""
    if task_type not in TEMPLATES:
        raise ValueError(f"unknown task type {task_type!r}: expected one of {TASK_TYPES}")
    recep = rng.choice(LIGHTS if task_type == "look_at_obj_in_light" else TARGETS)
    return rng.choice(TEMPLATES[task_type]).format(obj=rng.choice(OBJECTS[task_type]), recep=recep)


def synthetic_tasks(n_per_type: int, seed: int = 0) -> list[tuple[str, str]]:
    """[(task_type, sentence)] with n_per_type of each of the six types, deterministic in seed."""
    rng = random.Random(seed)
    return [(t, synthetic_task(t, rng)) for t in TASK_TYPES for _ in range(n_per_type)]


def synthetic_record(task_type: str, rng: random.Random, game: str = "") -> dict:
    """A won episode record (docs/design.md shape) with a plausible expert action list."""
    from duomem_fast.memory.tasks import parse_task
    task = synthetic_task(task_type, rng)
    parts = parse_task(task)
    obj, recep = parts.obj, parts.recep
    places = rng.sample(["cabinet 1", "countertop 1", "drawer 2", "shelf 1", "diningtable 1", "sidetable 1"], 3)
    actions = [f"go to {p}" for p in places[:-1]] + [f"go to {places[-1]}", f"take {obj} 1 from {places[-1]}"]
    if task_type in APPLIANCE:
        verb, tool = APPLIANCE[task_type]
        actions += [f"go to {tool} 1", f"{verb} {obj} 1 with {tool} 1"]
    if task_type == "look_at_obj_in_light":
        actions += [f"go to sidetable 2", f"use {recep} 1"]
    else:
        actions += [f"go to {recep} 1", f"move {obj} 1 to {recep} 1"]
    if task_type == "pick_two_obj_and_place":
        actions += [f"go to {places[0]}", f"take {obj} 2 from {places[0]}", f"go to {recep} 1", f"move {obj} 2 to {recep} 1"]
    observations = [f"You are in the middle of a room. Looking quickly around you, you see {', '.join(places)}.\n\n"
                    f"Your task is to: {task}"] + [f"Observation after {a}." for a in actions]
    return {"game": game or f"synthetic/{task_type}/{rng.randrange(10**6)}", "source": "generated", "split": "train",
            "task_type": task_type, "task": task, "agent": "synthetic", "config": "synthetic", "won": True,
            "steps": len(actions), "actions": actions, "observations": observations}
