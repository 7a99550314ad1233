"""One procedural memory: what a successful episode teaches, in the shape Memp stores it.

`task` is the key retrieval matches on; `script` the abstract procedure; `trajectory` the reference
(observation, action) pairs; `provenance` where it came from (game, teacher, builder, run).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

_KEYS = ("id", "task", "task_type", "script", "trajectory", "provenance")


@dataclass(slots=True)
class Memory:
    id: str
    task: str
    task_type: str
    script: str
    trajectory: list[list[str]] = field(default_factory=list)   # [[observation, action], ...]
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.id or not isinstance(self.id, str):
            raise ValueError(f"memory id must be a non-empty string, got {self.id!r}")
        if not self.task.strip():
            raise ValueError(f"memory {self.id!r}: empty task sentence")
        for i, step in enumerate(self.trajectory):
            if len(step) != 2 or not all(isinstance(s, str) for s in step):
                raise ValueError(f"memory {self.id!r}: trajectory step {i} must be [observation, action], got {step!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> "Memory":
        """Build from a JSON dict; `where` names the source (file:line) in errors."""
        missing = [k for k in _KEYS[:4] if k not in d]
        if missing:
            raise ValueError(f"memory record {where or repr(d)} lacks keys {missing}")
        traj = [list(s) for s in d.get("trajectory", [])]
        return cls(d["id"], d["task"], d["task_type"], d["script"], traj, dict(d.get("provenance", {})))
