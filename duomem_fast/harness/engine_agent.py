"""Engine agents (our model, with or without the LoRA adapter and the memory bank) as harness Plans.

The engine lives in this process and is shared by the parallel episodes (its prefix cache too: the system prompt
and playbooks are encoded once); each episode's game runs in an env worker process.
"""
from __future__ import annotations

import sys
import threading

from .agents import Agent, AgentSpec, _int, _remote_env_plan
from .guard import GuardedEngine

_ENGINES: dict[tuple, object] = {}     # (model, adapter, merge, dtype) -> Engine, shared by ablation arms


def _engine(model, adapter, merge: bool, dtype):
    from ..engine import Engine

    key = (model, adapter, merge, dtype)
    if key not in _ENGINES:
        _ENGINES[key] = Engine.from_pretrained(model=model, adapter=adapter, merge_lora=merge, dtype=dtype)
    return _ENGINES[key]


def _option_path(spec: AgentSpec, key: str, default_fn, what: str) -> str | None:
    value = spec.options.get(key)
    if value == "none":
        return None
    if value:
        return value
    default = default_fn()
    if default is None:
        print(f"[{spec.label}] no shipped {what}: running without it", file=sys.stderr)
        return None
    return str(default)


class MemoryPolicy:
    """Retrieves the k memories closest to each episode's task and hands their playbook to the inner policy."""

    def __init__(self, inner, bank, k: int, parts: str):
        self.inner, self.bank, self.k, self.parts = inner, bank, k, parts
        self.name = inner.name

    def begin(self, task, task_type, observation, admissible):
        from ..memory import format_playbook

        self.inner.playbook = format_playbook(self.bank.retrieve(task, self.k), self.parts) if self.bank else None
        self.inner.begin(task, task_type, observation, admissible)

    def act(self, observation, admissible):
        return self.inner.act(observation, admissible)

    def usage(self):
        return self.inner.usage()


def _prompt_sha(placement: str) -> str:
    """The agent's prompt text is part of a run's identity: a prompt change starts a new run."""
    import hashlib

    from ..alfworld.prompts import first_user_message, system_message

    text = system_message("<playbook>", placement) + first_user_message("<observation>", "<playbook>", placement)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def build_engine_agent(spec: AgentSpec) -> Agent:
    from ..alfworld.agent import EnginePolicy
    from ..memory import MemoryBank, default_adapter_dir, default_bank_path

    model = spec.target if spec.kind == "hf" else spec.options.get("model")
    adapter = _option_path(spec, "adapter", default_adapter_dir, "LoRA adapter")
    memory = _option_path(spec, "memory", default_bank_path, "memory bank")
    merge, dtype = spec.options.get("merge", "0") in ("1", "true"), spec.options.get("dtype")
    mode, parts, k = spec.options.get("mode", "score"), spec.options.get("parts", "script"), _int(spec, "k", 2)
    placement, choose = spec.options.get("placement", "system"), spec.options.get("choose", "best")
    engine = _engine(model, adapter, merge, dtype)
    bank = MemoryBank.load(memory) if memory else None
    lock, name = threading.Lock(), spec.label

    def make_policy(env):
        inner = EnginePolicy(GuardedEngine(engine, lock), mode=mode, placement=placement, name=name,
                             choose=choose)
        return MemoryPolicy(inner, bank, k, parts)

    config = {"kind": "engine", "engine": engine.fingerprint, "prompt": _prompt_sha(placement), "model": str(engine.model_dir), "adapter": adapter,
              "bank": bank.content_sha() if bank else None, "k": k, "mode": mode, "choose": choose, "parts": parts,
              "placement": placement}
    return Agent(name, spec, config, _remote_env_plan(make_policy))
