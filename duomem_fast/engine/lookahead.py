"""Greedy decoding with prompt-lookup drafts: exact greedy output, fewer passes over the weights.

Agents copy: commands repeat names from the observation and the playbook. The last n tokens are looked up earlier
in the context; the tokens that followed there are proposed as a draft and checked in one forward of 1 + k tokens
(bandwidth-bound: about the cost of one decode step). Accepted draft tokens are exactly what greedy decoding would
have produced; the KV of rejected ones is dropped by shortening the buffer.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from duomem_fast.engine.session import Session


def propose(context: list[int], k: int, max_ngram: int = 3) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the context's last n tokens (n = 3, 2, 1)."""
    size = len(context)
    rev = context[::-1]
    for n in range(min(max_ngram, size - 1), 0, -1):
        tail = context[-n:]
        at = 0  # rev index of a match of the last token; rev[0] is the last token itself
        while True:
            try:
                at = rev.index(tail[-1], at + 1)
            except ValueError:
                break
            end = size - at  # context[end - n:end] is the candidate n-gram
            if end >= n and context[end - n:end] == tail and end < size:
                return context[end:end + k]
    return []


def greedy_lookahead(session: "Session", max_new_tokens: int, stop: list[str], k: int, done) -> list[int]:
    """Greedy decoding of up to max_new_tokens with drafts of up to k tokens; returns the new token ids.

    Leaves the session as plain greedy decoding would: every token but the last computed, the last one pending.
    """
    engine, gen = session.engine, []
    while len(gen) < max_new_tokens:
        session._flush()
        tok = int(session._need_logits().argmax())
        gen.append(tok)
        session.tokens.append(tok)
        if done(gen) or len(gen) == max_new_tokens:
            break
        draft = propose(session.token_ids, min(k, max_new_tokens - len(gen)))
        if draft and _verify(session, engine, tok, draft, gen, done):
            break
    return gen


def _verify(session: "Session", engine, tok: int, draft: list[int], gen: list[int], done) -> bool:
    """Run [tok] + draft, keep the draft's agreeing head; True if decoding finished inside it."""
    logits = engine._run_all(session, [tok] + draft)  # (1 + k, vocab); KV written for every row
    accepted, finished = 0, False
    while accepted < len(draft) and int(logits[accepted].argmax()) == draft[accepted]:
        gen.append(draft[accepted])
        session.tokens.append(draft[accepted])
        accepted += 1
        if done(gen):
            finished = True
            break
    session.kv.length = len(session.tokens)  # drop the rejected rows' KV
    session.logits = logits[accepted]
    return finished
