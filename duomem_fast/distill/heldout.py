"""Held-out check of both DuoMem channels without playing: the student's mean NLL per command token of the
expert's actions on games it never trained on (teacher forcing, the agent's exact context), for the base model
and the adapter, each without and with a retrieved playbook.

    python -m duomem_fast.distill.heldout --data /work/data/alfworld --games 5 [--adapter DIR] [--bank BANK]
plays the expert on the first `games` of valid_seen and of valid_unseen (records appended to --records, resumable)
and prints {"base", "base+memories", "lora", "lora+memories"} NLLs (lower is better).
"""
from __future__ import annotations

import argparse
import json

import torch

from duomem_fast.distill.dataset import encode_record
from duomem_fast.distill.train import example_loss


class _Plain:
    """example_loss wants `get_base_model()`; a plain transformers model is its own base."""

    def __init__(self, model):
        self.model = model

    def get_base_model(self):
        return self.model


def command_nll(model, tokenizer, records: list[dict], playbooks: dict | None = None) -> float:
    """Mean NLL per labelled command token over `records` (playbooks: game -> text, or None)."""
    total = count = 0
    for rec in records:
        ex = encode_record(tokenizer, rec, 1 << 16, (playbooks or {}).get(rec["game"]))
        with torch.no_grad():
            total += example_loss(model, ex, bf16=True).item() * ex.n_targets
        count += ex.n_targets
    if not count:
        raise ValueError("no command tokens in the held-out records")
    return total / count


def ablate(records: list[dict], adapter: str, bank, k: int = 2, parts: str = "script") -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from duomem_fast.memory import format_playbook
    from duomem_fast.model.loader import resolve_model_dir
    path = resolve_model_dir(None)
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    pbs = {r["game"]: format_playbook(bank.retrieve(r["task"], k), parts) for r in records}
    rows = {"base": command_nll(_Plain(base), tok, records), "base+memories": command_nll(_Plain(base), tok, records, pbs)}
    lora = PeftModel.from_pretrained(base, adapter).eval()
    rows["lora"] = command_nll(lora, tok, records)
    rows["lora+memories"] = command_nll(lora, tok, records, pbs)
    return rows


def main(argv: list[str] | None = None) -> None:
    from duomem_fast.alfworld.agent import run_games
    from duomem_fast.alfworld.expert import ExpertPolicy
    from duomem_fast.alfworld.games import list_games
    from duomem_fast.distill.trajectories import successful
    from duomem_fast.memory import MemoryBank, default_adapter_dir, default_bank_path
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--games", type=int, default=5, help="games per split (valid_seen, valid_unseen)")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--bank", default=None)
    ap.add_argument("--records", default="heldout_expert.jsonl")
    args = ap.parse_args(argv)
    games = []
    for split in ("valid_seen", "valid_unseen"):
        found = list_games(args.data, split)
        games += found[::max(1, len(found) // args.games)][:args.games]
    recs = successful(run_games(games, ExpertPolicy(seed=0), args.records, {"teacher": "expert"}))
    bank = MemoryBank.load(args.bank or default_bank_path())
    rows = ablate(recs, str(args.adapter or default_adapter_dir()), bank)
    print(json.dumps({"episodes": len(recs), "nll_per_command_token": rows}, indent=1))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
