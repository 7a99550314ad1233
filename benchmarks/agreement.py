"""How often a faster engine configuration picks the command the reference configuration picks, on the states the
reference agent reaches: a precision gate for the agent (bf16, merged adapter) before a full evaluation.

    python benchmarks/agreement.py --data DIR [--games 12] [--variants float32,wdtype=bfloat16 bfloat16 ...]
                                   [--json runs/agreement.json]

The reference (the shipped DuoMem student: fp32, adapter unmerged, memories) plays each game; at every step each
variant, holding the same conversation, chooses among the same admissible commands; its choice is compared, then
replaced by the reference's command (the conversation rewinds to it), so every variant is asked about exactly the
reference's states. Per variant: the share of steps where it agrees (one disagreement at a decisive step can lose
a game).
Games: the first --games of the split in the harness's type-interleaved order (every task type early).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def variant_policy(spec: str, bank):
    """'dtype[,merge=0|1][,wdtype=bfloat16][,round=1]' -> an EnginePolicy on the shipped adapter, best-first."""
    from duomem_fast import Engine
    from duomem_fast.alfworld.engine_policy import EnginePolicy
    from duomem_fast.memory import default_adapter_dir

    dtype, *opts = spec.split(",")
    kv = dict(o.split("=", 1) for o in opts)
    bad = set(kv) - {"merge", "round", "wdtype"}
    if bad:
        raise ValueError(f"variant {spec!r}: unknown option(s) {sorted(bad)}; "
                         "expected dtype[,merge=0|1][,wdtype=bfloat16][,round=1]")
    engine = Engine.from_pretrained(None, adapter=default_adapter_dir(), merge_lora=kv.get("merge", "0") == "1",
                                    dtype=dtype, weight_dtype=kv.get("wdtype"))
    if kv.get("round") == "1":  # weights rounded through bf16, computed in fp32: what bf16 storage alone costs
        from duomem_fast.engine.build import _cast_linears

        _cast_linears(engine.decoder.w, torch.bfloat16)
        _cast_linears(engine.decoder.w, torch.float32)
    return EnginePolicy(engine, mode="score", choose="best", name=spec)


def shadow_step(policy, observation: str, admissible: list[str], played: str) -> bool:
    """The variant's choice on the reference's state; its history then holds the reference's command."""
    mine = policy.act(observation, admissible)
    if mine != played:
        policy.conv.messages[-1]["content"] = played  # the next turn's sync rewinds to the reference's text
    return mine == played


def run(args) -> dict:
    from duomem_fast.alfworld.env import AlfEnv
    from duomem_fast.alfworld.games import list_games
    from duomem_fast.harness.evaluate import interleave_by_type
    from duomem_fast.memory import MemoryBank, default_bank_path, format_playbook

    bank = MemoryBank.load(default_bank_path())
    ref = variant_policy("float32", bank)
    variants = [variant_policy(v, bank) for v in args.variants]
    games = interleave_by_type(list_games(args.data, args.split))[:args.games]
    agree = {v.name: 0 for v in variants}
    steps = 0
    t0 = time.perf_counter()
    for i, game in enumerate(games):
        env = AlfEnv(game, max_steps=args.max_steps)
        obs = env.reset()
        playbook = format_playbook(bank.retrieve(obs.task, 2), "script")
        for p in [ref, *variants]:
            p.playbook = playbook
            p.begin(obs.task, game.task_type, obs.text, obs.admissible)
        while not obs.done:
            action = ref.act(obs.text, obs.admissible)
            for v in variants:
                agree[v.name] += shadow_step(v, obs.text, obs.admissible, action)
            steps += 1
            obs = env.step(action)
        env.close()
        print(f"game {i + 1}/{len(games)} won={obs.won} steps={steps} " +
              " ".join(f"{k}: {agree[k]}/{steps}" for k in agree), flush=True)
    return {"games": len(games), "steps": steps, "seconds": time.perf_counter() - t0,
            "agreement": {k: agree[k] / max(steps, 1) for k in agree}, "reference": "float32 unmerged"}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder holding json_2.1.1/")
    p.add_argument("--split", default="valid_unseen")
    p.add_argument("--games", type=int, default=12)
    p.add_argument("--max-steps", type=int, default=50)
    p.add_argument("--variants", nargs="+", default=["float32,wdtype=bfloat16", "float32,merge=1", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)  # read before alfworld rewrites sys.argv
    torch.set_num_threads(args.threads)
    result = run(args)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
