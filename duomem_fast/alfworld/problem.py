"""A sampled game as the files alfworld reads: `game.tw-pddl` (domain, grammar with the goal sentence, PDDL
problem) and `traj_data.json` (task type and pddl_params), in the shape of the official json_2.1.1 games."""
from __future__ import annotations

import random
from pathlib import Path

from .sample import LAMPS, Sampled
from .scene import Scene, constants, static_receptacles


def mangle(name: str) -> str:
    """ALFRED id -> PDDL name, the inverse of alfworld's Demangler ('|' -> _bar_, '+' -> _plus_, ...)."""
    for old, new in (("|", "_bar_"), ("+", "_plus_"), ("-", "_minus_"), (".", "_dot_"), (",", "_comma_")):
        name = name.replace(old, new)
    return name


def _data_file(name: str) -> str:
    import alfworld

    return (Path(alfworld.__file__).parent / "data" / name).read_text()


def goal_sentence(task: Sampled, rng: random.Random) -> str:
    """One of the goal library's templates for this task type, filled as alfworld fills it (lower case)."""
    import alfworld.gen.goal_library as glib

    template = rng.choice(glib.gdict[task.task_type]["templates"])
    return template.format(obj=task.object_target.lower(), recep=task.parent_target.lower(),
                           toggle=task.toggle_target.lower(), mrecep="")


def goal_pddl(task: Sampled) -> str:
    import alfworld.gen.goal_library as glib

    text = glib.gdict[task.task_type]["pddl"].format(obj=task.object_target, recep=task.parent_target,
                                                     toggle=task.toggle_target, mrecep="")
    return text.replace("#", "-")


def _declarations(task: Sampled, scene: Scene) -> list[str]:
    c = constants()
    lines = ["agent1 - agent"]
    lines += [f"{t}Type - otype" for t in sorted((set(c.OBJECTS) | set(c.MOVABLE_RECEPTACLES)) - static_receptacles())]
    lines += [f"{t}Type - rtype" for t in sorted(static_receptacles())]
    lines += [f"{mangle(o.id)} - object" for o in task.objects]
    lines += [f"{mangle(r.id)} - receptacle" for r in scene.receptacles]
    locs = sorted({r.loc for r in scene.receptacles} | {task.agent_loc})
    return lines + [f"{mangle(loc)} - location" for loc in locs]


def _object_facts(task: Sampled) -> list[str]:
    c = constants()
    abilities = {"cleanable": "Cleanable", "heatable": "Heatable", "coolable": "Coolable", "sliceable": "Sliceable"}
    facts = []
    for o in task.objects:
        name = mangle(o.id)
        facts += [f"(objectType {name} {o.otype}Type)", f"(inReceptacle {name} {mangle(o.recep.id)})",
                  f"(objectAtLocation {name} {mangle(o.recep.loc)})"]
        if o.otype in LAMPS:
            facts.append(f"(toggleable {name})")
            continue
        facts.append(f"(pickupable {name})")
        if o.otype in c.MOVABLE_RECEPTACLES:
            facts.append(f"(isReceptacleObject {name})")
        facts += [f"({pred} {name})" for pred, key in abilities.items() if o.otype in c.VAL_ACTION_OBJECTS[key]]
    return facts


def _receptacle_facts(scene: Scene) -> list[str]:
    c = constants()
    facts = []
    for r in scene.receptacles:
        name = mangle(r.id)
        facts += [f"(receptacleType {name} {r.rtype}Type)", f"(receptacleAtLocation {name} {mangle(r.loc)})"]
        if r.rtype in c.OPENABLE_CLASS_SET:
            facts.append(f"(openable {name})")
    for rtype in scene.rtypes:
        objs = sorted(t for t in c.VAL_RECEPTACLE_OBJECTS[rtype] if "Sliced" not in t)
        facts += [f"(canContain {rtype}Type {t}Type)" for t in objs]
    return facts


def problem_text(name: str, task: Sampled, scene: Scene) -> str:
    """The PDDL problem: objects, initial facts, the goal library's goal for this task."""
    decl = "\n        ".join(_declarations(task, scene))
    init = _receptacle_facts(scene) + _object_facts(task) + [f"(atLocation agent1 {mangle(task.agent_loc)})"]
    facts = "\n        ".join(init)
    return (f"\n(define (problem {name})\n(:domain alfred)\n(:objects\n        {decl}\n        )\n\n"
            f"(:init\n        {facts}\n        )\n\n{goal_pddl(task)}\n")


def game_files(name: str, task: Sampled, scene: Scene, rng: random.Random) -> tuple[dict, dict]:
    """(game.tw-pddl content, traj_data.json content); the game is not yet marked solvable."""
    sentence = goal_sentence(task, rng)
    game = {"pddl_domain": _data_file("alfred.pddl"),
            "grammar": _data_file("alfred.twl2").replace("UNKNOWN GOAL", sentence),
            "pddl_problem": problem_text(name, task, scene), "solvable": False, "walkthrough": None}
    traj = {"task_type": task.task_type, "pddl_params": task.pddl_params(), "task_id": name,
            "scene": {"floor_plan": f"FloorPlan{scene.number}", "scene_num": scene.number, "room": scene.room},
            "turk_annotations": {"anns": [{"task_desc": sentence}]}}
    return game, traj
