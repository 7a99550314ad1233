"""Greedy decoding constrained to a set of candidates: the model picks among them token by token.

Scoring every candidate in full (Session.score) costs all their tokens per call (an ALFWorld step: ~30 commands of
~5 tokens = ~170 tokens of prefill) and, summed, favours the shortest one. Here the candidates form a token trie
walked greedily: at each depth one decode step (one new token, KV reused) gives the next-token log-probs, the
argmax is taken over the tokens the surviving candidates allow, and the walk stops as soon as one candidate is left
(its remaining tokens are determined; they join the context pending, computed with the next call).

Edge cases:
- duplicates (same token ids) are one trie path; they get equal scores and the first of them is returned;
- a candidate that ends where others go on (a prefix of them, or an empty candidate at the root) competes with
  their next tokens through the end of turn: its option scores logsumexp of the EOS log-probs, as greedy
  generation would stop there; with no EOS ids known it never wins while a longer candidate survives;
- candidates are tokenised alone (as Session.score does), so a string prefix that is not a token prefix
  ("fridge 1" vs "fridge 10" when "10" is one token) is a sibling branch, and the context's tokens never merge
  with a candidate's first token: the session holds context ids + candidate ids;
- ties between options go to the earlier candidate.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from duomem_fast.engine.session import Session

END = -1  # option key: the candidate ends here


def choose_greedy(session: "Session", candidates: Sequence[str | Sequence[int]]) -> tuple[int, list[float]]:
    """Pick one of `candidates` (text or token ids) by greedy decoding constrained to them. -> (index, scores).

    scores[i]: summed log-prob (log-softmax over the full vocabulary) of candidate i's options along the steps
    actually decoded, up to and including the step where it diverged or won; undecoded tail tokens add nothing.
    The winner's ids join the context (the ones decoded computed but the last, the rest pending). Each decode
    step after the first runs one token through the model and counts in stats.tokens_encoded.
    """
    if not candidates:
        raise ValueError("choose needs at least one candidate")
    engine = session.engine
    ids = [tuple(engine._ids(c)) for c in candidates]
    seqs = list(dict.fromkeys(ids))  # unique token sequences, first-occurrence order
    slot = {s: i for i, s in enumerate(seqs)}
    engine._check_fits(len(session) + max(map(len, seqs)))
    won, seq_scores, depth = walk_trie(session, seqs, sorted(engine.eos_ids))
    session.tokens.extend(seqs[won][depth:])  # determined tail: pending, computed with the next call
    return ids.index(seqs[won]), [seq_scores[slot[s]] for s in ids]


def walk_trie(session: "Session", seqs: list[tuple[int, ...]], eos: list[int]) -> tuple[int, list[float], int]:
    """Greedy walk down the trie of unique `seqs`; chosen tokens are appended to the session.

    Returns (winner index into seqs, per-seq scores, depth = number of tokens appended).
    """
    alive, scores, depth = list(range(len(seqs))), [0.0] * len(seqs), 0
    session._flush()
    while len(alive) > 1:
        if depth:
            session._flush()  # the token chosen last step: one decode step over the cached context
            session._count(tokens_encoded=1)
        logp = torch.log_softmax(session._need_logits().float(), dim=-1)  # (vocab,)
        options = branch(seqs, alive, depth)
        option_logp = {key: _option_logp(logp, key, eos) for key in options}
        for key, members in options.items():
            for m in members:
                scores[m] += option_logp[key]
        key = max(options, key=option_logp.__getitem__)  # first maximum: ties go to the earlier candidate
        alive = options[key]
        if key == END:
            break
        session.tokens.append(key)
        depth += 1
    return alive[0], scores, depth


def branch(seqs: list[tuple[int, ...]], alive: list[int], depth: int) -> dict[int, list[int]]:
    """The trie node after `depth` shared tokens: next token (or END) -> the alive seqs taking it, in order."""
    options: dict[int, list[int]] = {}
    for i in alive:
        key = seqs[i][depth] if len(seqs[i]) > depth else END
        options.setdefault(key, []).append(i)
    return options


def _option_logp(logp: torch.Tensor, key: int, eos: list[int]) -> float:
    if key != END:
        return float(logp[key])
    return float(torch.logsumexp(logp[eos], dim=0)) if eos else float("-inf")
