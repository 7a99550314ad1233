"""Agent specs shared by --student and --teacher, and how each kind is built into a runnable Plan.

    expert[,seed=0]                          ALFWorld's handcoded expert (reads the game state)
    random[,seed=0]                          a uniformly random admissible command (a floor to compare against)
    engine[,model=M,adapter=A|none,memory=B|none,k=2,mode=score|generate,choose=best|greedy|sum|mean,merge=1|0,
           dtype=float32|bfloat16,wdtype=bfloat16|float32,parts=script|trajectory|both,placement=system|after_obs,
           share=1|0,threads=1,norepeat=0|1]
                                             our engine; defaults: the shipped DuoMem student
                                             (default model + shipped adapter + memory bank, where present),
                                             adapter merged, projection weights stored in bf16 (wdtype) under
                                             fp32 activations and KV: the same choices as fp32 unmerged on 133
                                             of 133 reference steps, 95 vs 94 of 134 unseen games won, 2.3x less
                                             model time (docs/log.md); merge=0,wdtype=float32: all fp32, the
                                             default on CPUs without AVX-512 (AVX2 builds), where it is faster
                                             (engine_agent.default_merge); wdtype defaults to bf16 only merged;
                                             share=1: one engine for all parallel episodes (calls serialised,
                                             envs in workers); share=0: an engine per worker process with
                                             `threads` torch threads (model calls in parallel; a model copy each);
                                             eval/compare default to share=0 on a CPU with --workers > 1
                                             norepeat=1: no command twice after the same observation
    duomem / base / memories / lora          presets of `engine` for the ablation
    hf:PATH[,adapter=..,memory=..]           a local HF model directory (or .gguf) run by our engine
    openai:URL[,model=..,timeout=60,retries=4,rate=0,history=8,max_tokens=24]
                                             any OpenAI-compatible chat endpoint (key from $OPENAI_API_KEY)
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

from .chat_policy import SYSTEM, ChatPolicy
from .openai_client import ClientConfig, OpenAIClient
from .runner import Plan

KINDS = ("expert", "random", "engine", "hf", "openai")
PRESETS = {"duomem": {}, "base": {"adapter": "none", "memory": "none"}, "memories": {"adapter": "none"},
           "lora": {"memory": "none"}}
OPTIONS = {"expert": {"seed"}, "random": {"seed"},
           "engine": {"model", "adapter", "memory", "k", "mode", "choose", "merge", "dtype", "wdtype", "parts",
                      "placement", "share", "threads", "norepeat"},
           "openai": {"model", "timeout", "retries", "rate", "history", "max_tokens"}}
OPTIONS["hf"] = OPTIONS["engine"]


@dataclass(slots=True)
class AgentSpec:
    """A parsed agent spec: kind, target (hf path / openai URL) and key=value options."""
    kind: str
    target: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    text: str = ""

    @property
    def label(self) -> str:
        return self.text.split(",")[0].replace("openai:", "openai-").replace("hf:", "hf-")


def parse_agent(text: str) -> AgentSpec:
    """'kind[:target][,key=value...]' -> AgentSpec; ValueError naming the bad part."""
    if not text or not text.strip():
        raise ValueError("empty agent spec")
    head, *pairs = text.strip().split(",")
    kind, _, target = head.partition(":")
    options = dict(PRESETS.get(kind, {}))
    if kind in PRESETS:
        kind = "engine"
    if kind not in KINDS:
        raise ValueError(f"unknown agent kind {kind!r} in {text!r}; expected one of {KINDS + tuple(PRESETS)}")
    if kind in ("hf", "openai") and not target:
        raise ValueError(f"agent spec {text!r} needs a target: {kind}:<{'path' if kind == 'hf' else 'base-url'}>")
    if kind not in ("hf", "openai") and target:
        raise ValueError(f"agent kind {kind!r} takes no ':target' (got {text!r}); use key=value options")
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or key not in OPTIONS[kind]:
            raise ValueError(f"bad option {pair!r} in agent spec {text!r}; {kind} takes {sorted(OPTIONS[kind])}")
        options[key] = value
    return AgentSpec(kind, target or None, options, text.strip())


def for_workers(spec: AgentSpec, workers: int, threads: int | None = None) -> AgentSpec:
    """An engine spec as run with `workers` parallel episodes. Unless the spec says `share`, a CPU run of several
    episodes gets an engine per worker (share=0) with the cores split between them (threads): one shared engine
    serialises the episodes' model calls, which on a CPU are the wall clock (10 games: 208 s shared, 123 s
    share=0, 2026-12-01). On a GPU the shared engine stays the default. threads: per engine (None: cores / workers)."""
    import os

    import torch

    if spec.kind not in ("engine", "hf"):
        return spec
    if "share" in spec.options:  # the spec decides; an explicit --threads still reaches its per-worker engines
        own = spec.options["share"] == "0" and "threads" not in spec.options and threads is not None
        return parse_agent(spec.text + f",threads={threads}") if own else spec
    if workers < 2 or torch.cuda.is_available():
        return spec
    extra = ",share=0"
    if "threads" not in spec.options:
        extra += f",threads={threads or max(1, len(os.sched_getaffinity(0)) // workers)}"
    return parse_agent(spec.text + extra)


class RandomPolicy:
    """A random admissible command, reproducible from (seed, task)."""

    def __init__(self, seed: int = 0):
        self.seed, self.name = seed, f"random-{seed}"

    def begin(self, task, task_type, observation, admissible):
        self.rng = random.Random(f"{self.seed}:{task}")

    def act(self, observation, admissible):
        return self.rng.choice(admissible)

    def usage(self):
        return {"tokens_in": 0, "tokens_reused": 0, "tokens_out": 0, "model_seconds": 0.0}


def _make_expert(env, seed: int):
    from ..alfworld.expert import ExpertPolicy
    return ExpertPolicy(seed=seed)


def _make_random(env, seed: int):
    return RandomPolicy(seed)


def _make_chat(env, client: OpenAIClient, name: str, history: int, max_tokens: int):
    return ChatPolicy(client.chat, name, history=history, max_tokens=max_tokens)


@dataclass(slots=True)
class Agent:
    """A runnable agent: its display name, the config that identifies its runs, and its Plan."""
    name: str
    spec: AgentSpec
    config: dict
    plan: Plan


def _int(spec: AgentSpec, key: str, default: int) -> int:
    try:
        return int(spec.options.get(key, default))
    except ValueError:
        raise ValueError(f"option {key}={spec.options[key]!r} of {spec.text!r} must be an integer") from None


def _float(spec: AgentSpec, key: str, default: float) -> float:
    try:
        return float(spec.options.get(key, default))
    except ValueError:
        raise ValueError(f"option {key}={spec.options[key]!r} of {spec.text!r} must be a number") from None


def _local_plan(make_policy) -> Plan:
    from .episodes import game_id, no_env, play_local
    return Plan(make_env=no_env, make_policy=make_policy, play=play_local, game_id=game_id, in_worker=True)


def _remote_env_plan(make_policy) -> Plan:
    """Policies in this process (threads share one client), games in env worker processes."""
    from .episodes import GameHost, game_id, play_remote
    return Plan(make_env=GameHost, make_policy=make_policy, play=play_remote, game_id=game_id, in_worker=False)


def build_agent(spec: AgentSpec | str) -> Agent:
    """Build the agent a spec names. Engine agents load their model here (once, shared by parallel episodes)."""
    spec = parse_agent(spec) if isinstance(spec, str) else spec
    if spec.kind in ("expert", "random"):
        seed = _int(spec, "seed", 0)
        make = functools.partial(_make_expert if spec.kind == "expert" else _make_random, seed=seed)
        return Agent(spec.label, spec, {"kind": spec.kind, "seed": seed}, _local_plan(make))
    if spec.kind == "openai":
        cfg = ClientConfig(spec.target, model=spec.options.get("model"), timeout=_float(spec, "timeout", 60.0),
                           max_retries=_int(spec, "retries", 4), rate=_float(spec, "rate", 0.0))
        client = OpenAIClient(cfg)              # one client for all episodes: its rate limit is global
        hist, mt = _int(spec, "history", 8), _int(spec, "max_tokens", 24)
        make = functools.partial(_make_chat, client=client, name=spec.label, history=hist, max_tokens=mt)
        config = {"kind": "openai", "url": cfg.base_url, "model": cfg.model, "history": hist, "max_tokens": mt,
                  "prompt": SYSTEM}
        return Agent(spec.label, spec, config, _remote_env_plan(make))
    from .engine_agent import build_engine_agent
    return build_engine_agent(spec)
