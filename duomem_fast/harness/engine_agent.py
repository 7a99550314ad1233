"""Engine agents (our model, with or without the LoRA adapter and the memory bank) as harness Plans.

share=1 (the spec's default): the engine lives in this process and is shared by the parallel episodes (its prefix cache too:
the system prompt and playbooks are encoded once); each episode's game runs in an env worker process, and the
model calls are serialised under a lock. share=0: each worker process loads its own engine and plays whole
episodes, so model calls run in parallel (on a 2-core CPU the serialised model calls were the wall clock: 41.5 min
for 134 games of which the model took 40); it costs a model copy and a prefix cache per worker. `eval` and
`compare` choose share=0 on a CPU with several workers unless the spec says otherwise (agents.for_workers).
"""
from __future__ import annotations

import functools
import sys
import threading

from .agents import Agent, AgentSpec, _int, _local_plan, _remote_env_plan
from .guard import GuardedEngine

_ENGINES: dict[tuple, object] = {}     # (model, adapter, merge, dtype, wdtype) -> Engine, shared by ablation arms


def _engine(model, adapter, merge: bool, dtype, wdtype=None):
    from ..engine import Engine

    key = (model, adapter, merge, dtype, wdtype)
    if key not in _ENGINES:
        _ENGINES[key] = Engine.from_pretrained(model=model, adapter=adapter, merge_lora=merge, dtype=dtype,
                                               weight_dtype=wdtype)
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
    engine, bank, opts = _engine_parts(spec)
    share = _flag(spec, "share", True)
    config = {"kind": "engine", "engine": engine.fingerprint, "prompt": _prompt_sha(opts["placement"]),
              "model": str(engine.model_dir), "adapter": opts["adapter"], "bank": bank.content_sha() if bank else None,
              **{k: opts[k] for k in ("k", "mode", "choose", "parts", "placement")},
              **({"norepeat": True} if opts["norepeat"] else {})}      # absent when off: old runs keep their identity
    if not share:                        # the parent's engine only identified the run; workers load their own
        threads = _int(spec, "threads", 1)
        if threads < 1:
            raise ValueError(f"option threads={threads} of {spec.text!r} must be >= 1")
        make = functools.partial(_worker_policy, spec_text=spec.text, threads=threads)
        return Agent(spec.label, spec, config, _local_plan(make))
    lock = threading.Lock()

    def make_policy(env):
        return _policy(GuardedEngine(engine, lock), bank, opts, spec.label)

    return Agent(spec.label, spec, config, _remote_env_plan(make_policy))


def _engine_parts(spec: AgentSpec) -> tuple:
    """(engine, bank or None, options) that a spec names; engines are cached per process."""
    from ..memory import MemoryBank, default_adapter_dir, default_bank_path

    model = spec.target if spec.kind == "hf" else spec.options.get("model")
    adapter = _option_path(spec, "adapter", default_adapter_dir, "LoRA adapter")
    memory = _option_path(spec, "memory", default_bank_path, "memory bank")
    merge, dtype, wdtype = precision(spec)
    opts = {"adapter": adapter, "mode": spec.options.get("mode", "score"), "parts": spec.options.get("parts", "script"),
            "k": _int(spec, "k", 2), "placement": spec.options.get("placement", "system"),
            "choose": spec.options.get("choose", "best"), "norepeat": _flag(spec, "norepeat", False)}
    engine = _engine(model, adapter, merge, dtype, wdtype)
    return engine, MemoryBank.load(memory) if memory else None, opts


def _policy(engine, bank, opts: dict, name: str) -> MemoryPolicy:
    from ..alfworld.agent import EnginePolicy

    inner = EnginePolicy(engine, mode=opts["mode"], placement=opts["placement"], name=name, choose=opts["choose"],
                         norepeat=opts["norepeat"])
    return MemoryPolicy(inner, bank, opts["k"], opts["parts"])


def _worker_policy(env, spec_text: str, threads: int) -> MemoryPolicy:
    """In an episode worker process (share=0): its own engine, `threads` torch threads, the env in-process."""
    import torch

    from .agents import parse_agent
    torch.set_num_threads(threads)
    spec = parse_agent(spec_text)
    engine, bank, opts = _engine_parts(spec)
    return _policy(engine, bank, opts, spec.label)


def default_merge() -> bool:
    """Whether engine agents merge the adapter (and then store projection weights in bf16) unless told: yes on a GPU
    and on CPUs with AVX-512 (the bf16 GEMMs of AVX512-BF16 / AMX, where it was chosen: 2.3x less model time than all
    fp32, stop 13); no on AVX2 builds (CPUs without AVX-512), where the exact fp32 student, unmerged on the GGUF
    blocks, is the faster one: stop 25, Zen 3, the default 6-game eval alternated twice, model 13.8 / 13.7 s a task
    against 16.0 / 16.5 merged with bf16 weights, the same games won and steps."""
    import torch

    from .. import ops

    return torch.cuda.is_available() or ops.cpu_isa() not in ("avx2", "portable")


def precision(spec: AgentSpec) -> tuple[bool, str | None, str | None]:
    """(merge, dtype, wdtype) of an engine spec, defaults filled in: bf16 projection weights only when merged."""
    merge, dtype = _flag(spec, "merge", default_merge()), spec.options.get("dtype")
    wdtype = spec.options.get("wdtype", "bfloat16" if merge and dtype in (None, "float32", "fp32") else None)
    return merge, dtype, wdtype


def _flag(spec: AgentSpec, key: str, default: bool) -> bool:
    value = spec.options.get(key)
    if value is None:
        return default
    if value not in ("0", "1", "true", "false"):
        raise ValueError(f"option {key}={value!r} of {spec.text!r} must be 0 or 1")
    return value in ("1", "true")
