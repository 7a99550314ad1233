"""LoRA training of the student on teacher trajectories, with peft, on the CPU (or a GPU when there is one).

One example = one whole episode in the agent's exact chat context (dataset.py), loss on the command tokens only.
The LM head runs only at the labelled positions (SmolLM2's 49k-vocab head over every token was ~20% of a step).
Batch 1 with gradient accumulation (episodes differ in length; no padding), AdamW, warm-up then cosine decay,
bf16 autocast where the CPU has native bf16. A checkpoint (adapter + optimizer + scheduler + RNG + position)
is written every few steps; a rerun with the same config and data resumes from it and gives the same weights
as an uninterrupted run. Output: a standard PEFT adapter directory plus `training.json`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from duomem_fast.distill.config import TrainConfig
from duomem_fast.distill.dataset import IGNORE, Example, encode_record
from duomem_fast.memory.playbook import format_playbook

DEFAULT_BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
CKPT, SUMMARY = "checkpoint", "training.json"


@dataclass(slots=True)
class TrainState:
    step: int = 0                 # optimizer steps taken
    seen: int = 0                 # positions of the schedule consumed
    seconds: float = 0.0
    tokens: int = 0
    losses: list[float] = field(default_factory=list)   # mean loss per optimizer step


def train_lora(records: list[dict], out_dir: str | Path, config: TrainConfig | None = None, bank=None,
               progress: bool = True, stop_after: int | None = None) -> dict:
    """Train a LoRA adapter on won episode records; write it to `out_dir`. Returns the training summary.

    bank: a MemoryBank; with config.memory_fraction > 0 that share of episodes gets a retrieved playbook (other
    games' memories only) in its prompt, so the student learns to read one. stop_after: optimizer steps to take in
    this call before stopping with a checkpoint (tests, manual budgets). A finished run with the same config and
    data is not redone.
    """
    cfg = config or TrainConfig()
    out = Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(pick_threads(cfg))
    try:
        tokenizer, model, base_name = load_student(cfg)
        examples = build_examples(records, tokenizer, cfg, bank)
        data_sha = _data_sha(examples)
        previous = _read_summary(out)
        if previous.get("done") and previous.get("fingerprint") == cfg.fingerprint() and previous.get("data_sha") == data_sha:
            return previous
        order = schedule(len(examples), cfg)
        return _run(model, tokenizer, examples, order, cfg, out, base_name, data_sha, progress, stop_after)
    finally:
        torch.set_num_threads(threads)


def pick_threads(cfg: TrainConfig) -> int:
    """cfg.threads, else 1 when the 1-minute load already fills all cores but one, else all cores.

    On the shared 2-core box (load 8-9) one fwd+bwd of 800 tokens on SmolLM2-135M took 15.5 s with 1 thread and
    90-105 s with 2 (bf16 autocast; fp32 18.5 s vs 73-76 s): spinning OpenMP workers lose their core."""
    if cfg.threads:
        return cfg.threads
    cores = os.cpu_count() or 1
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] > cores - 1
    return 1 if busy else cores


def load_student(cfg: TrainConfig):
    """(tokenizer, peft model, base model name) for cfg.model (None = the default student)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from duomem_fast.model.loader import resolve_model_dir
    path = resolve_model_dir(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(cfg.seed)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
                      target_modules=linear_targets(base) if cfg.targets == "all-linear" else cfg.targets,
                      task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    if cfg.init_adapter:
        load_init_adapter(model, cfg.init_adapter, cfg.rank, lora.target_modules)
    return tokenizer, model, DEFAULT_BASE_NAME if cfg.model is None else str(cfg.model)


def load_init_adapter(model, path: str, rank: int, targets) -> None:
    """Continue from a trained adapter (DAgger rounds): its rank and target modules must be the config's."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    conf_path, weights = Path(path) / "adapter_config.json", Path(path) / "adapter_model.safetensors"
    if not conf_path.is_file() or not weights.is_file():
        raise ValueError(f"init_adapter {path!r}: no adapter_config.json + adapter_model.safetensors there")
    conf = json.loads(conf_path.read_text())
    if conf.get("r") != rank or set(conf.get("target_modules") or ()) != set(targets):
        raise ValueError(f"init_adapter {path!r} has r={conf.get('r')}, targets {sorted(conf.get('target_modules') or ())}; "
                         f"the config trains r={rank} on {sorted(targets)}")
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    result = set_peft_model_state_dict(model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise ValueError(f"init_adapter {path!r} lacks {len(missing)} LoRA tensors, e.g. {missing[0]}")


def linear_targets(model) -> list[str]:
    """Short names of every linear layer but the LM head (peft 0.21 would save "all-linear" as ~200 full
    module paths, which adapter loaders that expect q_proj..down_proj reject)."""
    head = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.Linear) and mod is not head}
    return sorted(names)


def build_examples(records: list[dict], tokenizer, cfg: TrainConfig, bank=None) -> list[Example]:
    """Won records -> examples (deterministic); a hash-chosen share carries a leave-one-game-out playbook."""
    won = [r for r in records if r.get("won") or r.get("labels")]      # DAgger records teach even when lost
    if not won:
        raise ValueError("no won episode records (or DAgger records) to train on")
    rng = random.Random(cfg.seed)
    won = sorted(won, key=lambda r: (str(r.get("game")), r.get("actions")))
    rng.shuffle(won)
    if cfg.max_examples:
        won = won[:cfg.max_examples]
    out = []
    for rec in won:
        if "playbook" in rec:                                   # DAgger: the playbook the student played with
            playbook = rec["playbook"]
        else:
            playbook = _playbook_for(rec, cfg, bank) if _with_memory(rec, cfg) else None
        out.append(encode_record(tokenizer, rec, cfg.max_len, playbook, cfg.placement))
    kept = [ex for ex in out if ex.n_targets > 0]
    if not kept:
        raise ValueError(f"none of {len(out)} episodes has a command within max_len={cfg.max_len} tokens")
    return kept


def _with_memory(rec: dict, cfg: TrainConfig) -> bool:
    h = int(hashlib.sha256(f"{cfg.seed}:{rec.get('game')}:{rec.get('actions')}".encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < cfg.memory_fraction


def _playbook_for(rec: dict, cfg: TrainConfig, bank) -> str | None:
    if bank is None or len(bank) == 0:
        return None
    hits = bank.retrieve(rec["task"], cfg.memory_k + 8, task_type=rec.get("task_type"))
    others = [m for m in hits if m.provenance.get("game") != rec.get("game")][:cfg.memory_k]
    return format_playbook(others, cfg.memory_parts) or None


def schedule(n: int, cfg: TrainConfig) -> list[int]:
    """Example indices in training order: one seeded shuffle per epoch, fractional epochs cut."""
    total = max(1, round(n * cfg.epochs))
    order, epoch = [], 0
    while len(order) < total:
        perm = list(range(n))
        random.Random(cfg.seed * 1000 + epoch).shuffle(perm)
        order += perm
        epoch += 1
    return order[:total]


def use_bf16(cfg: TrainConfig) -> bool:
    if cfg.bf16 is not None:
        return cfg.bf16
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def example_loss(model, ex: Example, bf16: bool) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens of one episode."""
    core = model.get_base_model()
    ids = torch.tensor([ex.input_ids])
    labels = torch.tensor(ex.labels[1:])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = core.get_decoder()(input_ids=ids).last_hidden_state[0, :-1]      # (T-1, H)
        mask = labels != IGNORE
        logits = core.get_output_embeddings()(hidden[mask])                       # (M, V)
    return F.cross_entropy(logits.float(), labels[mask])


def _run(model, tokenizer, examples, order, cfg, out: Path, base_name, data_sha, progress, stop_after) -> dict:
    from tqdm import tqdm
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    planned = math.ceil(len(order) / cfg.grad_accum)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg.warmup_steps, planned))
    state = _resume(model, opt, sched, out / CKPT, cfg, data_sha) or TrainState()
    bf16, taken, stopped = use_bf16(cfg), 0, "finished"
    model.train()
    bar = tqdm(total=len(order), initial=state.seen, desc="lora", unit="ep", disable=not progress)
    t0, acc = time.perf_counter() - state.seconds, []
    while state.seen < len(order):
        ex = examples[order[state.seen]]
        loss = example_loss(model, ex, bf16)
        (loss / cfg.grad_accum).backward()
        acc.append(loss.item())
        state.seen += 1
        state.tokens += len(ex.input_ids)
        bar.update(1)
        if state.seen % cfg.grad_accum and state.seen < len(order):
            continue
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        state.step, taken = state.step + 1, taken + 1
        state.losses.append(sum(acc) / len(acc))
        acc = []
        state.seconds = time.perf_counter() - t0
        bar.set_postfix(loss=f"{state.losses[-1]:.3f}", step=f"{state.step}/{planned}")
        over = cfg.max_minutes is not None and state.seconds > 60 * cfg.max_minutes
        if state.step % cfg.checkpoint_every == 0 or over or taken == stop_after:
            _save_checkpoint(model, opt, sched, state, out / CKPT, cfg, data_sha)
        if over or taken == stop_after:
            stopped = "time budget" if over else "stop_after"
            break
    bar.close()
    done = stopped == "finished" or stopped == "time budget"
    return _finish(model, out, cfg, base_name, data_sha, examples, order, state, planned, stopped, done)


def _lr_factor(step: int, warmup: int, planned: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, planned - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _save_checkpoint(model, opt, sched, state: TrainState, path: Path, cfg, data_sha) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(weights, str(tmp / "adapter_model.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "state": _state_dict(state),
                "rng": torch.get_rng_state(), "fingerprint": cfg.fingerprint(), "data_sha": data_sha}, tmp / "state.pt")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _state_dict(state: TrainState) -> dict:
    return {k: getattr(state, k) for k in TrainState.__dataclass_fields__}


def _resume(model, opt, sched, path: Path, cfg, data_sha) -> TrainState | None:
    if not (path / "state.pt").exists():
        return None
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    ck = torch.load(path / "state.pt", weights_only=False)
    if ck.get("fingerprint") != cfg.fingerprint() or ck.get("data_sha") != data_sha:
        return None                                           # another config or data: start over
    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    torch.set_rng_state(ck["rng"])
    return TrainState(**ck["state"])


def _finish(model, out, cfg, base_name, data_sha, examples, order, state, planned, stopped, done) -> dict:
    summary = {
        "done": done, "stopped": stopped, "fingerprint": cfg.fingerprint(), "data_sha": data_sha,
        "config": cfg.to_dict(), "base_model": base_name, "bf16": use_bf16(cfg),
        "data": {"episodes": len(examples), "schedule": len(order),
                 "tokens_per_episode": sum(len(e.input_ids) for e in examples) / max(1, len(examples)),
                 "targets_per_episode": sum(e.n_targets for e in examples) / max(1, len(examples)),
                 "truncated": sum(e.truncated for e in examples)},
        "steps": state.step, "planned_steps": planned, "episodes_seen": state.seen, "tokens_seen": state.tokens,
        "seconds": round(state.seconds, 1), "tokens_per_second": round(state.tokens / max(state.seconds, 1e-9), 1),
        "losses": [round(x, 4) for x in state.losses], "threads": torch.get_num_threads(),
    }
    if done:
        _save_adapter(model, out, base_name)
        shutil.rmtree(out / CKPT, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary


def _save_adapter(model, out: Path, base_name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    conf_path = out / "adapter_config.json"
    conf = json.loads(conf_path.read_text())
    conf["base_model_name_or_path"] = base_name               # no machine-specific cache path in shipped files
    if isinstance(conf.get("target_modules"), list):
        conf["target_modules"] = sorted(conf["target_modules"])  # peft writes its set in hash order: stable diffs
    conf_path.write_text(json.dumps(conf, indent=2, sort_keys=True))


def _read_summary(out: Path) -> dict:
    try:
        return json.loads((out / SUMMARY).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _data_sha(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.input_ids, ex.labels]).encode())
    return h.hexdigest()[:16]
