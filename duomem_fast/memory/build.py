"""Build memories from successful episode records: one memory per trajectory, with a procedural script.

Scripts come from a language-model teacher when one is given (`complete(prompt) -> str`, e.g. the harness's
OpenAI-compatible client; the prompt is `SCRIPT_PROMPT` below), else from `rule_script`, a deterministic builder
that abstracts the trajectory: searches collapse to "go to the likely receptacles one by one (...)", instance
numbers are dropped, and the task's object and target become <object> and <target> (<light> for look tasks).
"""
from __future__ import annotations

import hashlib
import re
from typing import Callable

from duomem_fast.memory.record import Memory
from duomem_fast.memory.tasks import parse_task

RULES, LM = "rules-v1", "lm-v1"
SCRIPT_PROMPT = """You write procedures for a text household game (ALFWorld). Below is a task and a successful \
sequence of actions, each followed by what the game answered. Write a short general procedure, at most 6 numbered \
steps, that would solve similar tasks: which kinds of receptacles to search, which appliance to use (microwave to \
heat, fridge to cool, sinkbasin to clean, a lamp to look under light) and the exact command forms (go to X, open X, \
take X from Y, heat/cool/clean X with Y, use X, move X to Y). No object numbers. Output only the numbered steps.

Task: {task}
Actions:
{actions}
Procedure:
"""
_NUM = re.compile(r"\s+\d+\b")
_HANDLED = re.compile(r"^(?:take|move|put) (.+?) (?:from|to|in/on|in|on) ")
_STEP = re.compile(r"^\s*(\d+)[.)]\s+\S")


def strip_numbers(text: str) -> str:
    """'take mug 2 from cabinet 13' -> 'take mug from cabinet'."""
    return _NUM.sub("", text).strip()


NOISE = ("look", "inventory", "help", "examine")


def useful_steps(task: str, actions: list[str]) -> list[bool]:
    """False for the teacher's detours: look/inventory/help/examine, and taking or placing an object that is not
    the task's (alfworld's expert explores that way when it has not seen its target yet)."""
    parts = parse_task(task)
    out = []
    for action in actions:
        a = strip_numbers(action.strip().lower())
        verb = a.split(" ", 1)[0] if a else ""
        if verb in NOISE:
            out.append(False)
        elif verb in ("take", "move", "put") and parts is not None:
            m = _HANDLED.match(a)
            out.append(m is not None and m.group(1) == parts.obj)
        else:
            out.append(True)
    return out


def rule_script(task: str, actions: list[str]) -> str:
    """Deterministic procedure from a successful action list (see module doc); detours are left out."""
    steps, searched, takes = [], [], 0
    for action, useful in zip(actions, useful_steps(task, actions)):
        if not useful:
            continue
        a = strip_numbers(action.strip().lower())
        verb = a.split(" ", 1)[0] if a else ""
        if a.startswith("go to "):
            searched.append(a[6:])
        elif verb == "take":
            takes += 1
            steps += _take_steps(a, searched, second=takes > 1)
            searched = []
        elif verb in ("heat", "cool", "clean", "use", "move", "put", "slice", "toggle"):
            steps.append(_key_step(a, verb, searched))
            searched = []
    text = "Procedure:\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, start=1))
    return _generalise(text, task)


def _take_steps(a: str, searched: list[str], second: bool) -> list[str]:
    obj, _, where = a[5:].partition(" from ")
    which = "another " if second else "the "
    places = list(dict.fromkeys(searched))
    if len(places) > 1:
        find = (f"find {which}{obj}: go to the likely receptacles one by one ({', '.join(places)}), open closed "
                f"ones and look, until you see it (here it was in the {where}).")
    else:
        find = f"go to {where} to find {which}{obj}."
    return [find, f"take {obj} from {where}."]


def _key_step(a: str, verb: str, searched: list[str]) -> str:
    place = searched[-1] if searched else ""
    if verb == "use" and len(set(searched)) > 1:
        tool = a[4:]
        return (f"find the {tool}: go to the likely receptacles one by one ({', '.join(dict.fromkeys(searched))}) "
                f"until you see it, then use {tool}.")
    if verb == "put":
        a = re.sub(r"^put (.+?) (?:in|on|in/on) (.+)$", r"move \1 to \2", a)
    return f"go to {place}, then {a}." if place else f"{a}."


def _generalise(text: str, task: str) -> str:
    parts = parse_task(task)
    if parts is None:
        return text
    target = "<light>" if parts.task_type == "look_at_obj_in_light" else "<target>"
    for name, slot in ((parts.obj, "<object>"), (parts.recep, target)):
        text = re.sub(rf"\b{re.escape(name)}\b", slot, text)
    return text


def lm_script(task: str, actions: list[str], complete: Callable[[str], str], max_chars: int = 1200) -> str:
    """A teacher-written procedure: `complete(SCRIPT_PROMPT filled in)`, kept to its numbered steps."""
    prompt = SCRIPT_PROMPT.format(task=task.strip(), actions="\n".join(f"> {a}" for a in actions))
    reply = complete(prompt) or ""
    lines = [ln.strip() for ln in reply.strip().splitlines() if _STEP.match(ln)]
    if not lines:
        raise ValueError(f"script writer returned no numbered steps for task {task!r}: {reply[:200]!r}")
    return ("Procedure:\n" + "\n".join(lines))[:max_chars]


def memory_from_record(rec: dict, complete: Callable[[str], str] | None = None, keep_trajectory: bool = True) -> Memory:
    """One memory from a won episode record (docs/design.md: task, task_type, actions, observations, ...)."""
    for key in ("task", "task_type", "actions", "observations"):
        if key not in rec:
            raise ValueError(f"episode record for game {rec.get('game')!r} lacks {key!r}")
    if not rec.get("won", False):
        raise ValueError(f"episode record for game {rec.get('game')!r} was not won; memories come from successes")
    actions, obs = list(rec["actions"]), list(rec["observations"])
    script = lm_script(rec["task"], actions, complete) if complete else rule_script(rec["task"], actions)
    traj = [[obs[i] if i < len(obs) else "", a] for i, a in enumerate(actions)] if keep_trajectory else []
    prov = {k: rec[k] for k in ("game", "split", "source", "agent", "config", "steps") if k in rec}
    prov["builder"] = LM if complete else RULES
    return Memory(memory_id(rec), rec["task"], rec["task_type"], script, traj, prov)


def memory_id(rec: dict) -> str:
    key = "\x1f".join([str(rec.get("game", "")), rec["task"], *rec["actions"]])
    return hashlib.sha256(key.encode()).hexdigest()[:16]
