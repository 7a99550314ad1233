"""Chat turns rendered with the model's own template; each turn appends only the text that changed."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from duomem_fast.engine.best_first import choose_best

if TYPE_CHECKING:
    from duomem_fast.engine.engine import Engine

CHOOSE_METHODS = ("best", "greedy", "mean", "sum")


class Conversation:
    """engine.chat(messages): the leading messages become a cached prefix; later turns render the whole message
    list with the chat template and append the difference to the session (rewinding own tokens if the template
    rewrote earlier text, e.g. dropped reasoning)."""

    def __init__(self, engine: "Engine", messages: list[dict]) -> None:
        self.engine, self.messages = engine, messages
        self._prefix_text = engine.render_chat(messages, add_generation_prompt=False)
        self.session = engine.session(engine.prefix(self._prefix_text))
        self._text = self._prefix_text  # the text the session's context holds

    @property
    def stats(self):
        return self.session.stats

    def add_user(self, text: str) -> int:
        """Add a user message; returns the number of tokens encoded (only the new ones)."""
        self.messages.append({"role": "user", "content": text})
        return self._sync(add_generation_prompt=False)

    def add_message(self, role: str, text: str) -> int:
        self.messages.append({"role": role, "content": text})
        return self._sync(add_generation_prompt=False)

    def reply(self, max_new_tokens: int = 64, stop: Sequence[str] | None = None, temperature: float = 0.0,
              seed: int | None = None, top_p: float = 1.0) -> str:
        """Generate the assistant's reply (added to the history) and return it."""
        self._sync(add_generation_prompt=True)
        before = len(self.session.tokens)
        text = self.session.generate(max_new_tokens, stop, temperature, top_p, seed)
        self._text += self.engine.decode(self.session.tokens[before:])
        self.messages.append({"role": "assistant", "content": text})
        return text

    def choose(self, candidates: Sequence[str], method: str = "greedy") -> tuple[int, list[float]]:
        """Pick the assistant's reply among `candidates`; it joins the history. -> (index, scores).

        method: "best" (the most likely whole reply, exact best-first search over the token trie,
        engine/best_first.py), "greedy" (decoding constrained to the trie, Session.choose), "mean" (mean
        log-prob per token, Session.score) or "sum" (summed log-prob: favours short candidates).
        """
        if method not in CHOOSE_METHODS:
            raise ValueError(f"unknown choose method {method!r}: expected one of {CHOOSE_METHODS}")
        if not candidates:
            raise ValueError("choose needs at least one candidate")
        self._sync(add_generation_prompt=True)
        if method == "best":
            best, scores = choose_best(self.session, candidates)  # appends the winner's ids itself
        elif method == "greedy":
            best, scores = self.session.choose(candidates)  # appends the winner's ids itself
        else:
            best, scores = self._choose_by_score(candidates, method)
        self._text += self.engine.decode(self.engine.encode(candidates[best]))
        self.messages.append({"role": "assistant", "content": candidates[best]})
        return best, scores

    def _choose_by_score(self, candidates: Sequence[str], method: str) -> tuple[int, list[float]]:
        scores = self.session.score(candidates)
        if method == "mean":
            scores = [s / len(self.engine.encode(c)) for s, c in zip(scores, candidates)]
        best = max(range(len(scores)), key=scores.__getitem__)
        self.session.tokens.extend(self.engine.encode(candidates[best]))  # pending: computed with the next turn
        return best, scores

    def _sync(self, add_generation_prompt: bool) -> int:
        target = self.engine.render_chat(self.messages, add_generation_prompt)
        if not target.startswith(self._prefix_text):
            raise ValueError("the chat template rewrote the cached leading messages; start a new chat")
        if not target.startswith(self._text):
            self._rewind(target)
        diff = target[len(self._text):]
        self._text = target
        return self.session.append(diff) if diff else 0

    def _rewind(self, target: str) -> None:
        """Drop own tokens until the session's text is a prefix of `target`."""
        rest = target[len(self._prefix_text):]
        own = self.session.tokens
        n = len(own)
        while n > 0 and not rest.startswith(self.engine.decode(own[:n])):
            n -= 1
        self.session.truncate(n)
        self._text = self._prefix_text + self.engine.decode(own[:n])
