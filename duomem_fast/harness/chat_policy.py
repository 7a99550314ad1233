"""An ALFWorld policy for any chat model (an OpenAI-compatible endpoint, or any `chat(messages)` callable).

The model sees the task, the observations and the admissible commands and answers with one command; the answer is
matched to an admissible command (the older `put X in/on Y` form is mapped to ALFWorld 0.4's `move X to Y`).
"""
from __future__ import annotations

import difflib
import re
from typing import Callable

SYSTEM = (
    "You are an agent in a text household (ALFWorld). Each turn you get an observation and the list of admissible "
    "commands. Reply with exactly one command from that list and nothing else. To place an object use "
    "'move OBJ to RECEPTACLE'."
)
ChatFn = Callable[[list[dict]], tuple[str, dict, float]]   # messages -> (text, usage, seconds)


def match_action(text: str, admissible: list[str]) -> str:
    """The admissible command closest to a model's answer (first line, prefixes like 'Action:' removed)."""
    if not admissible:
        raise ValueError("admissible command list is empty")
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^\s*(>|action\s*:|command\s*:)\s*", "", line, flags=re.I).strip().strip(".'\"`").lower()
    line = re.sub(r"^put (.+?) (?:in|on|in/on) (.+)$", r"move \1 to \2", line)
    lowered = [a.lower() for a in admissible]
    if line in lowered:
        return admissible[lowered.index(line)]
    best = difflib.get_close_matches(line, lowered, n=1, cutoff=0.0)
    return admissible[lowered.index(best[0])] if best else admissible[0]


class ChatPolicy:
    """Policy protocol (begin/act/usage) over a chat function; keeps the last `history` turns in the prompt."""

    def __init__(self, chat: ChatFn, name: str, history: int = 8, max_tokens: int = 24, system: str = SYSTEM):
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history!r}")
        self.chat, self.name, self.history, self.max_tokens, self.system = chat, name, history, max_tokens, system
        self._turns: list[dict] = []
        self._head = ""
        self._usage = {}

    def begin(self, task: str, task_type: str, observation: str, admissible: list[str]) -> None:
        self._head = f"{observation}\nYour task: {task}" if task not in observation else observation
        self._turns = []
        self._first = observation
        self._usage = {"tokens_in": 0, "tokens_reused": 0, "tokens_out": 0, "model_seconds": 0.0}

    def act(self, observation: str, admissible: list[str]) -> str:
        obs = "" if observation == self._first else f"{observation}\n"
        self._first = None
        self._turns.append({"role": "user", "content": f"{obs}Admissible commands: {', '.join(admissible)}"})
        recent = self._turns[-(2 * self.history - 1):]   # odd count: starts and ends on a user turn
        head = {"role": "user", "content": self._head + "\n" + recent[0]["content"]}
        messages = [{"role": "system", "content": self.system}, head, *recent[1:]]
        text, usage, seconds = self.chat(messages, max_tokens=self.max_tokens, temperature=0.0)
        self._count(usage, seconds)
        action = match_action(text, admissible)
        self._turns.append({"role": "assistant", "content": action})
        return action

    def _count(self, usage: dict, seconds: float) -> None:
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        self._usage["tokens_in"] += int(usage.get("prompt_tokens") or 0) - cached
        self._usage["tokens_reused"] += cached
        self._usage["tokens_out"] += int(usage.get("completion_tokens") or 0)
        self._usage["model_seconds"] += seconds

    def usage(self) -> dict:
        return dict(self._usage)
