"""The engine behind the server: one lock in front of it, prefix KV reused across requests, usage from its stats.

Every prompt becomes a cached prefix (`Engine.prefix` is extension-aware), so a request whose prompt extends an
earlier one (the next turn of a chat, the same system prompt) encodes only its new tokens; `cached_tokens` in the
usage says how many were reused.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterator

from .protocol import APIError, GenParams


@dataclass(slots=True)
class Result:
    text: str
    finish: str            # "stop" | "length"
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    seconds: float


class EngineBackend:
    """Serialises engine use (one request at a time; the tokenizer and KV store are not thread-safe)."""

    def __init__(self, engine, model_id: str):
        self.engine, self.model_id = engine, model_id
        self.lock = threading.Lock()
        self.max_context = int(engine.config.max_context)

    def render(self, messages: list[dict]) -> str:
        with self.lock:
            return self.engine.render_chat(messages, add_generation_prompt=True)

    def _open(self, prompt: str, params: GenParams):
        """(session, prompt_tokens, cached_tokens) for a prompt; call with the lock held."""
        before = self.engine.stats.copy()
        try:
            prefix = self.engine.prefix(prompt)
        except ValueError as e:       # e.g. the context limit
            raise APIError(400, str(e), "messages") from None
        n = len(prefix.tokens)
        if n + params.max_tokens > self.max_context:
            raise APIError(400, f"prompt ({n} tokens) + max_tokens ({params.max_tokens}) exceeds the context "
                                f"length {self.max_context}", "max_tokens", code="context_length_exceeded")
        new = self.engine.stats.tokens_encoded - before.tokens_encoded
        return self.engine.session(prefix), n, n - new

    def complete(self, prompt: str, params: GenParams) -> Result:
        t0 = time.perf_counter()
        with self.lock:
            session, n, cached = self._open(prompt, params)
            n0 = len(session.tokens)
            text = session.generate(params.max_tokens, stop=params.stop, temperature=params.temperature,
                                    top_p=params.top_p, seed=params.seed)
            gen = session.tokens[n0:]
        finish = "stop" if (gen and gen[-1] in self.engine.eos_ids) or len(gen) < params.max_tokens \
            or any(s in self.engine.decode(gen) for s in params.stop) else "length"
        return Result(text, finish, n, cached, len(gen), time.perf_counter() - t0)

    def stream(self, prompt: str, params: GenParams) -> Iterator[str | Result]:
        """Yields text pieces as tokens are decoded, then the Result. Holds the engine for the whole stream."""
        t0 = time.perf_counter()
        with self.lock:
            session, n, cached = self._open(prompt, params)
            n0, sent, finish = len(session.tokens), 0, "length"
            hold = max((len(s) for s in params.stop), default=1) - 1
            for i in range(params.max_tokens):
                seed = None if params.seed is None else params.seed * 1_000_003 + i
                session.generate(1, temperature=params.temperature, top_p=params.top_p, seed=seed)
                gen = session.tokens[n0:]
                text = self.engine.finish_text(gen, params.stop)
                done = gen[-1] in self.engine.eos_ids or len(text) < len(self.engine.finish_text(gen, []))
                if done:
                    finish = "stop"
                safe = len(text) if done else max(sent, len(text) - hold)
                if text.endswith("\ufffd") and not done:       # half of a multi-byte character
                    safe = min(safe, len(text) - 1)
                if safe > sent:
                    yield text[sent:safe]
                    sent = safe
                if done:
                    break
            if sent < len(text):
                yield text[sent:]
        yield Result(text, finish, n, cached, len(gen), time.perf_counter() - t0)
