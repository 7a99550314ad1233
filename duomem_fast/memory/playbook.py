"""Turn retrieved memories into the playbook text the agent reads (prepended to the system prompt, or placed
after the first observation as Memp does; the agent's prompt builder does the placing).

The text depends only on the memories, in order, so the same retrieval gives byte-identical playbooks and the
engine serves their KV from its prefix cache.
"""
from __future__ import annotations

from duomem_fast.memory.record import Memory

PARTS = ("script", "trajectory", "both")
HEADER = "Procedures that solved similar tasks before (adapt object and receptacle names to your task):"


def format_playbook(memories: list[Memory], parts: str = "script", max_steps: int | None = None) -> str:
    """Playbook text for `memories` (best first); '' when there are none.

    parts: 'script' (the procedure), 'trajectory' (the reference actions and what they returned) or 'both'.
    Memories whose rendered text repeats an earlier one are dropped (deterministic scripts of one task type
    often coincide). max_steps caps each reference trajectory.
    """
    if parts not in PARTS:
        raise ValueError(f"unknown playbook parts {parts!r}: expected one of {PARTS}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
    blocks: list[str] = []
    for m in memories:
        block = _render(m, parts, max_steps)
        if block not in blocks:
            blocks.append(block)
    if not blocks:
        return ""
    numbered = [f"## Memory {i}\n{b}" for i, b in enumerate(blocks, start=1)]
    return HEADER + "\n\n" + "\n\n".join(numbered)


def _render(m: Memory, parts: str, max_steps: int | None) -> str:
    lines = [f"Task: {m.task.strip()}"]
    if parts in ("script", "both"):
        lines.append(m.script.strip())
    if parts in ("trajectory", "both") and m.trajectory:
        lines.append("Reference actions:")
        lines.extend(_trajectory_lines(m.trajectory, max_steps))
    return "\n".join(lines)


def _trajectory_lines(traj: list[list[str]], max_steps: int | None) -> list[str]:
    """'> action' followed by what it returned (the next step's observation); the initial room text is skipped."""
    steps = traj[:max_steps] if max_steps else traj
    out = []
    for i, (_, action) in enumerate(steps):
        out.append(f"> {action}")
        if i + 1 < len(traj):
            out.append(traj[i + 1][0].strip())
    return out
