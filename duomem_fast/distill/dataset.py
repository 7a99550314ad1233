"""Episode records -> training sequences in exactly the context the agent sees at run time.

The messages are the ones `alfworld.engine_policy.EnginePolicy` builds (its system prompt and first-turn helpers
are imported, not copied): system (+ playbook), first observation with the task, then per step the assistant's
command and the next observation. Tokens are produced piece by piece as the engine's conversation appends them
(each rendered-template difference encoded on its own, each command encoded alone), so training and inference see
the same ids. Labels: the command tokens and the end-of-turn token after them; everything else is -100, and so are
the teacher's detours (`memory.build.useful_steps`: look/inventory/help, handling objects the task does not
name), which stay in the context as the agent would have seen them. In DAgger records (dagger.py) the student's
own commands that differ from the expert's label also stay in the context without loss.
"""
from __future__ import annotations

from dataclasses import dataclass

from duomem_fast.alfworld.prompts import first_user_message, system_message
from duomem_fast.memory.build import useful_steps

IGNORE = -100


@dataclass(slots=True)
class Example:
    input_ids: list[int]
    labels: list[int]          # IGNORE where no loss
    game: str = ""
    truncated: bool = False

    @property
    def n_targets(self) -> int:
        return sum(lab != IGNORE for lab in self.labels)


def episode_messages(rec: dict, playbook: str | None = None, placement: str = "system") -> list[dict]:
    """The chat an EnginePolicy holds after playing `rec`'s actions (the final observation is never shown)."""
    obs, actions = rec.get("observations") or [], rec.get("actions") or []
    if not actions or len(obs) < len(actions):
        raise ValueError(f"record for game {rec.get('game')!r}: {len(actions)} actions and {len(obs)} observations")
    msgs = [{"role": "system", "content": system_message(playbook, placement)}]
    for i, action in enumerate(actions):
        text = first_user_message(obs[0], playbook, placement) if i == 0 else obs[i]
        msgs += [{"role": "user", "content": text}, {"role": "assistant", "content": action}]
    return msgs


def encode_messages(tokenizer, messages: list[dict], max_len: int, train: list[bool] | None = None) -> Example:
    """Token ids and labels for `messages`, cut to `max_len` tokens (the start is kept: it is what repeats).

    train[i] False: the i-th assistant message stays in the context but gets no loss (a teacher's detour)."""
    if max_len < 8:
        raise ValueError(f"max_len must be >= 8, got {max_len}")
    eos = _end_of_turn_id(tokenizer)
    ids, labels, done, learn, turn = [], [], "", False, 0
    for j, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        context = tokenizer.apply_chat_template(messages[:j], tokenize=False, add_generation_prompt=True)
        piece = _encode(tokenizer, context[len(done):])
        first_is_eot = learn and piece[:1] == [eos]              # closes the previous command: learn to stop
        ids += piece
        labels += ([eos] if first_is_eot else []) + [IGNORE] * (len(piece) - first_is_eot)
        learn = train is None or train[turn]
        command = _encode(tokenizer, msg["content"])
        ids += command
        labels += command if learn else [IGNORE] * len(command)
        done, turn = context + msg["content"], turn + 1
    tail = tokenizer.apply_chat_template(messages, tokenize=False)[len(done):]
    piece = _encode(tokenizer, tail)[:1]                          # the end-of-turn after the last command
    ids += piece
    labels += [eos if piece == [eos] and learn else IGNORE]
    truncated = len(ids) > max_len
    return Example(ids[:max_len], labels[:max_len], truncated=truncated)


def learned_steps(rec: dict) -> list[bool]:
    """Which commands get a loss: the teacher's useful steps; in a DAgger record (with `labels`, dagger.py) only
    those where the played command is the expert's label for that state."""
    useful = useful_steps(rec["task"], rec["actions"])
    labels = rec.get("labels")
    if labels is None:
        return useful
    if len(labels) != len(rec["actions"]):
        raise ValueError(f"record for game {rec.get('game')!r}: {len(labels)} labels for {len(rec['actions'])} actions")
    return [u and lab is not None and lab == a for u, lab, a in zip(useful, labels, rec["actions"])]


def encode_record(tokenizer, rec: dict, max_len: int, playbook: str | None = None,
                  placement: str = "system", skip_detours: bool = True) -> Example:
    train = learned_steps(rec) if skip_detours else None
    ex = encode_messages(tokenizer, episode_messages(rec, playbook, placement), max_len, train)
    ex.game = str(rec.get("game", ""))
    return ex


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _end_of_turn_id(tokenizer) -> int:
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            return tid
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no end-of-turn or eos token")
    return tokenizer.eos_token_id
