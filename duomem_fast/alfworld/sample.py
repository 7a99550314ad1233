"""Sampling one generated game: a task that the scene can host, then object placements that leave its goal unmet.

Rules (ALFRED's): room types allowed per task (`constants.GOALS_VALID`); an object goes only into a receptacle whose
type accepts it (`VAL_RECEPTACLE_OBJECTS`); heat needs a microwave, cool a fridge, clean a sink basin (the domain's
CleanObject accepts only SinkBasinType), look-at a desk or floor lamp; pick_two needs two instances. No instance of
the target starts inside a receptacle of the goal's type, so no goal holds at the start.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .scene import LAMP_HOSTS, LAMPS, Receptacle, Scene, constants, coord, fits, pickupable_types

TOOL = {"pick_clean_then_place_in_recep": ("SinkBasin", "Cleanable"),
        "pick_heat_then_place_in_recep": ("Microwave", "Heatable"),
        "pick_cool_then_place_in_recep": ("Fridge", "Coolable")}
MAX_INSTANCES = 3


@dataclass(slots=True)
class Placed:
    id: str  # "Apple|+01.59|+00.97|-01.29"
    otype: str
    recep: Receptacle


@dataclass(slots=True)
class Sampled:
    task_type: str
    object_target: str
    parent_target: str  # "" for look_at_obj_in_light
    toggle_target: str  # "" unless look_at_obj_in_light
    objects: list[Placed] = field(default_factory=list)
    agent_loc: str = ""

    def pddl_params(self) -> dict:
        return {"object_target": self.object_target, "parent_target": self.parent_target,
                "toggle_target": self.toggle_target, "mrecep_target": "", "object_sliced": False}


def room_allows(task_type: str, scene: Scene) -> bool:
    return scene.room in constants().GOALS_VALID[task_type]


def sample_task(task_type: str, scene: Scene, rng: random.Random) -> Sampled | None:
    """Target object and parent (or lamp) the scene can host, or None."""
    if not room_allows(task_type, scene):
        return None
    present = [t for t in scene.object_types if t in pickupable_types()]
    rtypes = scene.rtypes
    if task_type == "look_at_obj_in_light":
        lamps = [t for t in LAMPS if t in scene.object_types]
        if not lamps or not any(h in rtypes for h in LAMP_HOSTS) or not present:
            return None
        target = rng.choice(present)
        return Sampled(task_type, target, "", rng.choice(lamps)) if _homes(scene, target, "") else None
    if task_type in TOOL:
        tool, ability = TOOL[task_type]
        if tool not in rtypes:
            return None
        present = [t for t in present if t in constants().VAL_ACTION_OBJECTS[ability]]
    pairs = [(t, p) for t in present for p in rtypes
             if fits(p, t) and (task_type not in TOOL or p != TOOL[task_type][0]) and _homes(scene, t, p)]
    if not pairs:
        return None
    target, parent = rng.choice(pairs)
    return Sampled(task_type, target, parent, "")


def _homes(scene: Scene, otype: str, parent: str) -> list[Receptacle]:
    """Receptacles an instance of otype may start in: accepting it, not of the goal's receptacle type."""
    return [r for r in scene.receptacles if fits(r.rtype, otype) and r.rtype != parent]


def place_objects(task: Sampled, scene: Scene, rng: random.Random) -> Sampled:
    """Instances of every pickupable type in the scene (1-3, at least 2 of a pick_two target), lamps on hosts."""
    taken: set[str] = set()
    for otype in (t for t in scene.object_types if t in pickupable_types()):
        is_target = otype == task.object_target
        homes = _homes(scene, otype, task.parent_target) if is_target else _homes(scene, otype, "")
        if not homes:
            continue
        low = 2 if is_target and task.task_type == "pick_two_obj_and_place" else 1
        for _ in range(rng.randint(low, max(low, MAX_INSTANCES))):
            task.objects.append(_place(otype, rng.choice(homes), rng, taken))
    hosts = [r for r in scene.receptacles if r.rtype in LAMP_HOSTS]
    for lamp in (t for t in LAMPS if t in scene.object_types and hosts):
        task.objects.append(_place(lamp, rng.choice(hosts), rng, taken))
    task.agent_loc = _agent_loc(scene, rng)
    return task


def _place(otype: str, recep: Receptacle, rng: random.Random, taken: set[str]) -> Placed:
    _, x, y, z = recep.id.split("|")[:4]
    while True:
        pos = [float(v) + rng.uniform(-0.4, 0.4) for v in (x, y, z)]
        oid = f"{otype}|" + "|".join(coord(v) for v in pos)
        if oid not in taken:
            taken.add(oid)
            return Placed(oid, otype, recep)


def _agent_loc(scene: Scene, rng: random.Random) -> str:
    from .scene import loc_name

    used = {r.loc for r in scene.receptacles}
    while True:
        x, z = rng.choice(scene.floor)
        loc = loc_name(x, z, rng.choice((0, 90, 180, 270)), 30)
        if loc not in used:
            return loc
