"""Batched model calls: candidate scoring over a shared context, and sessions on one prefix decoding together."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from duomem_fast.engine.sampling import check_sampling, make_generator, sample
from duomem_fast.model.decoder import Step

if TYPE_CHECKING:
    from duomem_fast.engine.engine import Engine
    from duomem_fast.engine.session import Session


def score_candidates(engine: "Engine", session: "Session", candidates: Sequence) -> list[float]:
    """Sum of log p(candidate tokens | context) per candidate, one forward for all of them.

    Candidate rows attend to the prefix KV and the session's own KV (both shared, read once for all rows) and to
    their own tokens (causal); nothing of the context is copied.
    """
    if not candidates:
        raise ValueError("score needs at least one candidate")
    ids = [engine._ids(c) for c in candidates]
    empty = [i for i, c in enumerate(ids) if not c]
    if empty:
        raise ValueError(f"candidate(s) {empty} tokenise to nothing")
    session._flush()
    first = torch.log_softmax(session._need_logits(), dim=-1)
    width = max(map(len, ids))
    engine._check_fits(len(session) + width)
    batch = torch.tensor([c + [0] * (width - len(c)) for c in ids])
    positions = (len(session) + torch.arange(width))[None].expand(len(ids), -1)
    step = Step(positions=positions, shared=[(session.prefix.k, session.prefix.v), session.kv.view()])
    logp = torch.log_softmax(engine._forward(batch, step, logits="all"), dim=-1)  # (C, W, vocab)
    session._count(tokens_encoded=sum(map(len, ids)))
    scores = []
    for row, c in enumerate(ids):
        rest = logp[row, torch.arange(len(c) - 1), torch.tensor(c[1:], dtype=torch.long)].sum()
        scores.append(float(first[c[0]] + rest))
    return scores


def generate_batch(engine: "Engine", sessions: list["Session"], max_new_tokens: int, stop: list[str],
                   temperature: float, top_p: float, seed: int | None) -> list[str]:
    """Decode all sessions together: their own KV is gathered once into a (B, S) batch buffer, each decode step
    is one forward for all rows over the shared prefix, and the new KV is copied back at the end."""
    if not sessions:
        return []
    prefix = sessions[0].prefix
    if any(s.prefix is not prefix for s in sessions):
        raise ValueError("generate_batch needs sessions on the same prefix handle")
    if len({id(s) for s in sessions}) != len(sessions):
        raise ValueError("generate_batch got the same session twice")
    check_sampling(temperature, top_p, max_new_tokens)
    for s in sessions:
        engine._check_fits(len(s) + max_new_tokens)
        s._flush()
        s._need_logits()
    own_k, own_v, starts = _gather(sessions, max_new_tokens)
    gen = _decode_loop(engine, sessions, prefix, own_k, own_v, starts, max_new_tokens, stop,
                       (temperature, top_p, make_generator(seed)))
    return [_scatter(engine, s, own_k, own_v, b, starts[b], g, stop) for b, (s, g) in enumerate(zip(sessions, gen))]


def _gather(sessions: list["Session"], extra: int):
    lens = [s.kv.length for s in sessions]
    k0 = sessions[0].kv.k
    shape = (k0.shape[0], len(sessions), max(lens) + extra, *k0.shape[3:])
    own_k, own_v = k0.new_zeros(shape), k0.new_zeros(shape)  # padding must be finite: masked p=0 times NaN is NaN
    for b, s in enumerate(sessions):
        k, v = s.kv.view()
        own_k[:, b, :lens[b]], own_v[:, b, :lens[b]] = k, v
    return own_k, own_v, lens


def _decode_loop(engine, sessions, prefix, own_k, own_v, starts, max_new, stop, sampling) -> list[list[int]]:
    temperature, top_p, generator = sampling
    logits = torch.stack([s.logits for s in sessions])
    gen: list[list[int]] = [[] for _ in sessions]
    done = [False] * len(sessions)
    pos = list(starts)
    for i in range(max_new):
        toks = sample(logits, temperature, top_p, generator).tolist()
        for b, tok in enumerate(toks):
            if not done[b]:
                gen[b].append(tok)
                done[b] = tok in engine.eos_ids or bool(stop and any(x in engine.decode(gen[b]) for x in stop))
        if all(done) or i == max_new - 1:
            break
        base = len(prefix) + torch.tensor([len(sessions[b].tokens) + len(gen[b]) - 1 for b in range(len(toks))])
        step = Step(positions=base[:, None], shared=[(prefix.k, prefix.v)], own_k=own_k, own_v=own_v,
                    own_start=list(pos))
        logits = engine._forward(torch.tensor(toks)[:, None], step)
        pos = [p + (0 if d else 1) for p, d in zip(pos, done)]
    return gen


def _scatter(engine, s: "Session", own_k, own_v, b: int, start: int, gen: list[int], stop: list[str]) -> str:
    """Copy row b's new KV (all generated tokens but the last, which stays pending) back into its session."""
    computed = len(gen) - 1
    s.kv.reserve(computed)
    s.kv.k[:, 0, start:start + computed] = own_k[:, b, start:start + computed]
    s.kv.v[:, 0, start:start + computed] = own_v[:, b, start:start + computed]
    s.kv.length = start + computed
    s.tokens.extend(gen)
    s.logits = None
    s._count(tokens_generated=len(gen))
    return engine.finish_text(gen, stop)
