"""ALFRED scenes from what the alfworld wheel ships: `gen/layouts/FloorPlan<N>-{objects,openable}.json` (object
types present, receptacle ids with their interaction pose) and `-layout.npy` (reachable floor points), with the
tables of `alfworld/gen/constants.py` (which object fits which receptacle, which can be heated, cooled, cleaned).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

GRID = 0.25  # metres per layout grid step, as in ALFRED's `loc|x|z|rotation|horizon` names
LAMPS = ("DeskLamp", "FloorLamp")
LAMP_HOSTS = ("Desk", "SideTable", "Dresser", "Shelf", "CoffeeTable", "TVStand", "DiningTable")
EXTRA_COUNT = {"StoveBurner": 4}  # receptacles the layout lists as present but gives no pose for


def constants():
    import alfworld.gen.constants as c

    return c


def layouts_dir() -> Path:
    import alfworld.gen

    return Path(alfworld.gen.__file__).parent / "layouts"


def room_type(scene: int) -> str:
    for name, numbers in constants().SCENE_TYPE.items():
        if scene in numbers:
            return name
    raise ValueError(f"FloorPlan{scene} is not an ALFRED scene number")


@lru_cache(maxsize=None)
def static_receptacles() -> frozenset[str]:
    c = constants()
    return frozenset(set(c.VAL_RECEPTACLE_OBJECTS) - set(c.MOVABLE_RECEPTACLES))


@lru_cache(maxsize=None)
def pickupable_types() -> frozenset[str]:
    c = constants()
    fits = set().union(*c.VAL_RECEPTACLE_OBJECTS.values())
    return frozenset(t for t in fits if "Sliced" not in t and t not in static_receptacles())


def fits(rtype: str, otype: str) -> bool:
    return otype in constants().VAL_RECEPTACLE_OBJECTS.get(rtype, ())


@dataclass(slots=True)
class Receptacle:
    id: str  # ALFRED id, e.g. "Cabinet|+00.68|+00.50|-02.20" or "Sink|-01.90|+00.97|-01.50|SinkBasin"
    rtype: str
    loc: str  # "loc|x|z|rotation|horizon"


@dataclass(slots=True)
class Scene:
    number: int
    room: str
    object_types: list[str]
    receptacles: list[Receptacle]
    floor: list[tuple[float, float]] = field(repr=False)

    def of_type(self, rtype: str) -> list[Receptacle]:
        return [r for r in self.receptacles if r.rtype == rtype]

    @property
    def rtypes(self) -> list[str]:
        return sorted({r.rtype for r in self.receptacles})


def coord(v: float) -> str:
    return f"{v:+06.2f}"


def loc_name(x: float, z: float, rotation: int, horizon: int) -> str:
    return f"loc|{round(x / GRID)}|{round(z / GRID)}|{int(rotation) // 90 % 4}|{int(horizon)}"


def _rtype(rid: str) -> str:
    parts = rid.split("|")
    return parts[-1] if parts[-1].endswith("Basin") else parts[0]


@lru_cache(maxsize=None)
def _scene_files(number: int) -> tuple[list[str], dict, list[tuple[float, float]]]:
    import numpy as np

    base = layouts_dir() / f"FloorPlan{number}"
    objects = json.loads(Path(f"{base}-objects.json").read_text())
    poses = json.loads(Path(f"{base}-openable.json").read_text())
    floor = [(float(x), float(z)) for x, z in np.load(f"{base}-layout.npy")]
    return objects, poses, floor


def load_scene(number: int, rng: random.Random) -> Scene:
    """FloorPlan<number> with its receptacles; layout-less receptacle types get a pose on a random floor point."""
    objects, poses, floor = _scene_files(number)
    receps = [Receptacle(rid, _rtype(rid), loc_name(*pose)) for rid, pose in sorted(poses.items())
              if _rtype(rid) in static_receptacles()]
    present = {r.rtype for r in receps}
    for rtype in sorted(set(objects) & static_receptacles() - present):
        for _ in range(EXTRA_COUNT.get(rtype, 1)):
            receps.append(_extra_receptacle(rtype, floor, rng))
    return Scene(number, room_type(number), sorted(objects), receps, floor)


def _extra_receptacle(rtype: str, floor: list[tuple[float, float]], rng: random.Random) -> Receptacle:
    x, z = rng.choice(floor)
    ox, oy, oz = x + rng.uniform(-0.5, 0.5), rng.uniform(0.0, 1.0), z + rng.uniform(-0.5, 0.5)
    head = "Sink" if rtype == "SinkBasin" else rtype
    rid = f"{head}|{coord(ox)}|{coord(oy)}|{coord(oz)}" + ("|SinkBasin" if rtype == "SinkBasin" else "")
    return Receptacle(rid, rtype, loc_name(x, z, rng.choice((0, 90, 180, 270)), 30))
