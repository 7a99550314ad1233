"""The most likely candidate, exactly: best-first search over the candidates' token trie.

Greedy trie decoding (constrained.py) compares first tokens, so a token shared by many candidates wins on their
pooled mass: an ALFWorld student asked to pick among ~30 `go to X` and one `take apple 3 from sinkbasin 1` goes
with "go" even when the take is its single most likely command (on held-out expert histories greedy matched the
expert's take/use/heat steps well under half the time; whole-sequence scores matched most of them).

The objective here is each candidate's full reply probability, log p(candidate tokens, end of turn | context),
as Session.score would give plus the end-of-turn. Search: a heap of trie nodes keyed by the log-prob of their
path; every extension adds a log-prob <= 0, so the first complete candidate popped is the argmax (uniform-cost
search). A node holding a single candidate is scored in full with one forward over its tokens; a node whose
candidates share their next tokens walks that whole radix edge in one forward. Evaluating a node
runs its path's tokens after the context and then drops their KV: nothing is copied, and unlikely branches are
never expanded. Typical cost on an ALFWorld step: a few forwards of 1-8 tokens, against one forward over all
candidates' tokens (~170) for Session.score.
"""
from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Sequence

import torch

from duomem_fast.engine.constrained import END, branch

if TYPE_CHECKING:
    from duomem_fast.engine.session import Session


def choose_best(session: "Session", candidates: Sequence[str | Sequence[int]]) -> tuple[int, list[float]]:
    """Pick the candidate with the highest log p(tokens + end of turn | context). -> (index, scores).

    scores[i]: candidate i's exact log-prob where the search completed it, else the upper bound it stopped at
    (the log-prob of the trie path it shares with what was expanded). The winner's ids join the context pending
    (computed with the next call). Without end-of-turn ids, a candidate that is a token prefix of another
    never beats it.
    """
    if not candidates:
        raise ValueError("choose needs at least one candidate")
    engine = session.engine
    ids = [tuple(engine._ids(c)) for c in candidates]
    seqs = list(dict.fromkeys(ids))
    engine._check_fits(len(session) + max(map(len, seqs)) + 1)
    session._flush()
    bound = [0.0] * len(seqs)
    won = 0 if len(seqs) == 1 else _search(session, seqs, sorted(engine.eos_ids), bound)
    session.tokens.extend(seqs[won])
    return ids.index(seqs[won]), [bound[seqs.index(s)] for s in ids]


def _search(session: "Session", seqs: list[tuple[int, ...]], eos: list[int], bound: list[float]) -> int:
    root = torch.log_softmax(session._need_logits().float(), dim=-1)
    heap: list[tuple[float, int, tuple[int, ...], tuple[int, ...], bool]] = []
    tick = 0
    heapq.heappush(heap, (0.0, tick, (), tuple(range(len(seqs))), False))
    while heap:
        neg, _, path, alive, done = heapq.heappop(heap)
        if done:
            return alive[0]
        if len(alive) == 1:
            children = [(_full_score(session, root, seqs[alive[0]], eos), alive, True)]
        else:
            score, path, logp = _descend(session, root, path, _shared_run(seqs, alive, len(path)), -neg)
            children = [(score + _option(logp, key, eos), tuple(members), key == END)
                        for key, members in branch(seqs, list(alive), len(path)).items()]
        for score, members, complete in children:
            for m in members:
                bound[m] = score
            tick += 1
            heapq.heappush(heap, (-score, tick, path + (seqs[members[0]][len(path)],) if not complete else path,
                                  members[:1] if complete else members, complete))
    raise AssertionError("the search ended without a complete candidate")


def _shared_run(seqs: list[tuple[int, ...]], alive: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """The tokens every alive seq takes after `depth` before they branch (or one ends): a radix edge."""
    first = seqs[alive[0]]
    n = min(len(seqs[i]) for i in alive)
    k = depth
    while k < n and all(seqs[i][k] == first[k] for i in alive):
        k += 1
    return first[depth:k]


def _descend(session: "Session", root: torch.Tensor, path: tuple[int, ...], run: tuple[int, ...],
             score: float) -> tuple[float, tuple[int, ...], torch.Tensor]:
    """Walk a radix edge with one forward: (score + log p(run | path), path + run, log-probs after it).
    Without the edge ("go" is always followed by " to") each of its tokens costs a forward of its own."""
    if not path and not run:
        return score, path, root
    full = path + run
    rows = _logp_after(session, full)  # rows[j]: after full[j]
    for j, t in enumerate(run):
        at = len(path) + j  # t's position in full; its distribution comes after the token before it
        score += float(root[t] if at == 0 else rows[at - 1, t])
    return score, full, rows[-1]


def _full_score(session: "Session", root: torch.Tensor, seq: tuple[int, ...], eos: list[int]) -> float:
    """A lone candidate: its whole sequence is one radix edge from the root, then the end of turn."""
    score, _, logp = _descend(session, root, (), seq, 0.0)
    return score + _option(logp, END, eos)


def _logp_after(session: "Session", path: tuple[int, ...]) -> torch.Tensor:
    """Log-probs after each token of `path` run after the context; the path's KV is dropped afterwards."""
    kept = session.kv.length
    try:
        logits = session.engine._run_all(session, list(path))
    finally:
        session.kv.length = kept
    session._count(tokens_encoded=len(path))
    return torch.log_softmax(logits.float(), dim=-1)


def _option(logp: torch.Tensor, key: int, eos: list[int]) -> float:
    if key != END:
        return float(logp[key])
    return float(torch.logsumexp(logp[eos], dim=0)) if eos else float("-inf")
