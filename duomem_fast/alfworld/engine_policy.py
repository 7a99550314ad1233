"""A Policy that plays with a duomem_fast engine conversation.

Context layout: system prompt (+ playbook when placement="system": what repeats across episodes comes first, so
its KV is served from the engine's prefix cache), then the first observation with the task (+ playbook when
placement="after_obs"), then per step only the new observation. The action is either the admissible command the
model finds most likely (mode="score", `conv.choose` with method `choose`: "best" = the whole command with the
highest probability, exact; "greedy" = constrained greedy decoding, cheaper but biased to the first token most
commands share, "go"; "help" is not offered) or parsed from a short generation
(mode="generate", `conv.reply`). Token counts and model seconds come from the engine's own counters.
norepeat=True (score mode): a command already played after the same observation is not offered again while other
commands are (a greedy policy that meets a state twice would otherwise cycle until the step limit).
"""
from __future__ import annotations

from typing import Any

from duomem_fast.engine.chat import CHOOSE_METHODS

from .parse import parse_action
from .prompts import check_placement, first_user_message, system_message

MODES = ("score", "generate")
SKIP = ("help",)  # admissible but never useful: its answer is a 700-token command list that bloats the context


class EnginePolicy:
    """engine: a duomem_fast Engine; playbook: text placed per `placement`; mode: "score" | "generate"."""

    def __init__(self, engine, playbook: str | None = None, mode: str = "score", placement: str = "system",
                 max_new_tokens: int = 24, name: str | None = None, choose: str = "best", norepeat: bool = False):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if choose not in CHOOSE_METHODS:
            raise ValueError(f"unknown choose method {choose!r}; expected one of {CHOOSE_METHODS}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.engine, self.playbook, self.mode = engine, playbook, mode
        self.placement = check_placement(placement)
        self.max_new_tokens = max_new_tokens
        self.choose, self.norepeat = choose, norepeat
        self._played: set[tuple[str, str]] = set()   # (observation, command) pairs of this episode
        self.name = name or f"engine-{mode}"
        self.conv = None
        self.step_tokens: list[int] = []  # tokens encoded per act() (new turn text, + the candidates when scoring)
        self.context_lengths: list[int] = []  # context length in tokens after each act()
        self._start = None
        self._first = ""

    def begin(self, task: str, task_type: str, observation: str, admissible: list[str]) -> None:
        self._start = self.engine.stats.copy()
        self.step_tokens, self.context_lengths, self._played = [], [], set()
        self.conv = self.engine.chat([{"role": "system", "content": system_message(self.playbook, self.placement)}])
        self._first = first_user_message(observation, self.playbook, self.placement)

    def act(self, observation: str, admissible: list[str]) -> str:
        if self.conv is None:
            raise ValueError("act() before begin()")
        before = self.engine.stats.tokens_encoded
        text, self._first = (self._first or observation), ""
        self.conv.add_user(text)
        if self.mode == "score":
            fresh = [a for a in admissible if (observation, a) not in self._played] if self.norepeat else admissible
            action = self._choose(fresh or admissible)
        else:
            action = self._generate(admissible)
        self._played.add((observation, action))
        self.step_tokens.append(self.engine.stats.tokens_encoded - before)
        self.context_lengths.append(len(self.conv.session))
        return action

    def _choose(self, admissible: list[str]) -> str:
        candidates = [a for a in admissible if a not in SKIP] or ["look"]
        return _as_choice(self.conv.choose(candidates, method=self.choose), candidates)

    def _generate(self, admissible: list[str]) -> str:
        reply = self.conv.reply(max_new_tokens=self.max_new_tokens, stop=["\n\n"])
        return parse_action(reply if isinstance(reply, str) else str(reply[0]), admissible)

    def usage(self) -> dict:
        if self._start is None:
            return {"tokens_in": 0, "tokens_reused": 0, "tokens_out": 0, "model_seconds": 0.0}
        d = self.engine.stats - self._start
        return {"tokens_in": d.tokens_encoded, "tokens_reused": d.tokens_reused, "tokens_out": d.tokens_generated,
                "model_seconds": d.model_seconds}


def _as_choice(result: Any, admissible: list[str]) -> str:
    """conv.choose may give the command, its index, (command or index, scores), or the scores."""
    if isinstance(result, tuple):
        result = result[0]
    if isinstance(result, str):
        return result
    if isinstance(result, int):
        return admissible[result]
    scores = list(result)
    return admissible[max(range(len(scores)), key=scores.__getitem__)]
