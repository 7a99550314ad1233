"""A conversation on a shared prefix: only the tokens new since the last call go through the model."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from duomem_fast.engine.constrained import choose_greedy
from duomem_fast.engine.kv import KVBuffer, Prefix
from duomem_fast.engine.lookahead import greedy_lookahead
from duomem_fast.engine.sampling import check_sampling, make_generator, sample
from duomem_fast.engine.stats import Stats

if TYPE_CHECKING:
    from duomem_fast.engine.engine import Engine


class Session:
    """Context = prefix tokens (shared KV, never copied) + own tokens (own KV buffer).

    Generated tokens join the context; the last one stays pending (its KV is computed with the next call).
    """

    def __init__(self, engine: "Engine", prefix: Prefix) -> None:
        self.engine, self.prefix = engine, prefix
        cfg = engine.config
        self.kv = KVBuffer(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, engine.dtype)
        self.tokens: list[int] = []  # own tokens; tokens[kv.length:] are pending
        self.logits = prefix.logits  # (vocab,) fp32 after the last computed token, None if stale/empty
        self.stats = Stats()

    def __len__(self) -> int:
        """Context length in tokens (prefix + own, pending included)."""
        return len(self.prefix) + len(self.tokens)

    @property
    def token_ids(self) -> list[int]:
        return list(self.prefix.tokens) + self.tokens

    def append(self, text_or_ids: str | Sequence[int]) -> int:
        """Add text (tokenised without special tokens) or token ids; returns how many tokens were encoded."""
        ids = self.engine._ids(text_or_ids)
        self._count(tokens_reused=len(self) - len(self.tokens) + self.kv.length)
        self.tokens.extend(ids)
        self._flush()
        self._count(tokens_encoded=len(ids))
        return len(ids)

    def generate(self, max_new_tokens: int = 64, stop: Sequence[str] | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, lookahead: int | None = None) -> str:
        """Decode up to max_new_tokens (stops at EOS or after any `stop` string); the text joins the context.

        Returns the new text without the EOS token and cut before the first stop string. lookahead (greedy only;
        None = the engine's setting): draft up to that many tokens by prompt lookup and verify them in one pass.
        """
        check_sampling(temperature, top_p, max_new_tokens)
        self.engine._check_fits(len(self) + max_new_tokens)
        gen, generator, stop = [], make_generator(seed), list(stop or [])
        k = self.engine.lookahead if lookahead is None else lookahead
        if temperature <= 0.0 and k > 0:
            gen = greedy_lookahead(self, max_new_tokens, stop, k, lambda g: self._done(g, stop))
            self._count(tokens_generated=len(gen))
            return self.engine.finish_text(gen, stop)
        for _ in range(max_new_tokens):
            self._flush()
            logits = self._need_logits()
            tok = int(sample(logits[None], temperature, top_p, generator)[0])
            gen.append(tok)
            self.tokens.append(tok)
            if self._done(gen, stop):
                break
        self._count(tokens_generated=len(gen))
        return self.engine.finish_text(gen, stop)

    def score(self, candidates: Sequence[str | Sequence[int]]) -> list[float]:
        """Log-likelihood (natural log, summed over tokens) of each candidate continuing the context.

        All candidates run as one batch over the shared KV (prefix, then this session's own tokens).
        """
        return self.engine._score(self, candidates)

    def choose(self, candidates: Sequence[str | Sequence[int]]) -> tuple[int, list[float]]:
        """Pick a candidate by greedy decoding constrained to the candidates' token trie. -> (index, scores).

        One decode step per trie level until one candidate is left; the winner's ids join the context (the
        determined tail pending). Scores and edge cases: engine/constrained.py.
        """
        return choose_greedy(self, candidates)

    def fork(self) -> "Session":
        """A new session with the same context: shares the prefix, copies only this session's own KV."""
        other = Session(self.engine, self.prefix)
        other.kv, other.tokens, other.logits = self.kv.copy(), list(self.tokens), self.logits
        return other

    def truncate(self, n_own: int) -> None:
        """Keep only the first n_own own tokens (the prefix is immutable)."""
        if not 0 <= n_own <= len(self.tokens):
            raise ValueError(f"cannot truncate to {n_own} own tokens: session has {len(self.tokens)}")
        if n_own == len(self.tokens):
            return
        self.tokens = self.tokens[:n_own]
        if n_own <= self.kv.length:
            self.kv.length = max(n_own - 1, 0)  # recompute the last token to get its logits back
            self.logits = self.prefix.logits if n_own == 0 else None

    def _done(self, gen: list[int], stop: list[str]) -> bool:
        return gen[-1] in self.engine.eos_ids or bool(stop and _hit(self.engine.decode(gen), stop))

    def _flush(self) -> None:
        """Run the pending own tokens through the model."""
        pending = self.tokens[self.kv.length:]
        if pending:
            self.engine._check_fits(len(self))
            self.logits = self.engine._run(self, pending)

    def _need_logits(self) -> torch.Tensor:
        if self.logits is None:
            raise ValueError("the session's context is empty: append text before generate/score")
        return self.logits

    def _count(self, **deltas) -> None:
        for target in (self.stats, self.engine.stats):
            for key, value in deltas.items():
                setattr(target, key, getattr(target, key) + value)


def _hit(text: str, stop: list[str]) -> bool:
    return any(s in text for s in stop)
