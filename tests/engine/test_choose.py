"""Constrained greedy choice (Session.choose, Conversation.choose) against a full-recompute transformers reference."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from duomem_fast import Engine

COMMANDS = ["go to fridge 1", "go to countertop 1", "go to countertop 2", "take apple 1 from countertop 2",
            "open fridge 1", "look", "inventory", "move apple 1 to fridge 1", "clean apple 1 with sinkbasin 1",
            "go to cabinet 1", "examine fridge 1", "take apple 1 from countertop 1"]
GO = ["go to fridge 1", "go to countertop 1", "go to countertop 2", "go to cabinet 1", "go to drawer 3"]
ARCHS = ("qwen3", "llama")


@pytest.fixture(scope="module", params=ARCHS)
def pair(request, tiny_dirs):
    d = tiny_dirs[request.param]
    return Engine.from_pretrained(d), AutoModelForCausalLM.from_pretrained(d).eval()


def _ids(n, seed):
    return torch.randint(3, 380, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _hf_logp(hf, ids) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0, -1].float(), -1)


def _ref_choose(hf, context, cands, eos):
    """Brute force: full logits from transformers at every step of the constrained greedy search.

    A candidate's option at depth d is its token d, or the end of turn (logsumexp of EOS log-probs) if it has none.
    -> (index, scores, steps): steps = decode steps (model calls) the search needed."""
    seqs = [list(c) for c in cands]
    alive, scores, chosen, steps = list(range(len(seqs))), [0.0] * len(seqs), [], 0
    while len({tuple(seqs[i]) for i in alive}) > 1:
        logp, d, steps = _hf_logp(hf, context + chosen), len(chosen), steps + 1
        opt = {i: (seqs[i][d] if len(seqs[i]) > d else None) for i in alive}
        lp = {i: float(logp[t]) if t is not None else float(torch.logsumexp(logp[eos], 0)) for i, t in opt.items()}
        for i in alive:
            scores[i] += lp[i]
        best = max(alive, key=lambda i: (lp[i], -i))
        alive = [i for i in alive if opt[i] == opt[best]]
        if opt[best] is None:
            break
        chosen.append(opt[best])
    return alive[0], scores, steps


def _check_against_ref(engine, hf, context, cands):
    s = engine.session(engine.prefix(context[:20]))
    s.append(context[20:])
    ids = [engine._ids(c) for c in cands]
    before = s.stats.copy()
    idx, scores = s.choose(cands)
    ref_idx, ref_scores, steps = _ref_choose(hf, context, ids, sorted(engine.eos_ids))
    assert idx == ref_idx
    assert scores == pytest.approx(ref_scores, abs=1e-3)
    assert s.token_ids == context + ids[idx]  # the chosen is one of the candidates, whole
    encoded = (s.stats - before).tokens_encoded
    assert encoded == max(steps - 1, 0) and encoded <= steps  # only the chosen tokens, one per step after the first
    return s, idx, steps


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_greedy_equals_brute_force_reference(pair, seed):
    engine, hf = pair
    context = _ids(30, seed)
    _check_against_ref(engine, hf, context, COMMANDS + [_ids(3, 100 + seed), _ids(5, 200 + seed)])
    _, _, steps = _check_against_ref(engine, hf, context, GO)
    assert steps >= 3  # all share "go to": the search goes past the shared head


def test_next_turn_after_choose_equals_fresh_session(pair):
    engine, hf = pair
    context = _ids(28, 7)
    s, idx, _ = _check_against_ref(engine, hf, context, COMMANDS)
    assert len(s.tokens) - s.kv.length >= 1  # the determined tail (at least the last chosen token) is pending
    more = _ids(6, 8)
    s.append(more)
    fresh = engine.session()
    fresh.append(s.token_ids)
    torch.testing.assert_close(s.logits, fresh.logits, atol=2e-5, rtol=0)
    with torch.no_grad():
        ref = hf(torch.tensor([s.token_ids])).logits[0, -1]
    torch.testing.assert_close(s.logits, ref, atol=2e-5, rtol=0)


def test_duplicates_prefixes_and_merged_tokens(pair):
    engine, hf = pair
    cands = ["open fridge 1", "go to count", "go to countertop 1", "open fridge 1", "go to countertop 1 with"]
    enc = [engine.encode(c) for c in cands]
    assert enc[2] == enc[4][:len(enc[2])]  # a token prefix of another candidate
    assert enc[1][:2] == enc[2][:2] and enc[1][2] != enc[2][2]  # a string prefix, token siblings
    for seed in range(4):
        s, idx, _ = _check_against_ref(engine, hf, _ids(25, 30 + seed), cands)
        assert idx != 3  # a duplicate is never returned: the first copy is
        assert engine.decode(s.token_ids[25:]) == cands[idx]


def test_end_of_turn_decides_prefix_and_empty_candidates(pair):
    engine, hf = pair
    context = _ids(24, 40)
    logp = _hf_logp(hf, context)
    eos = sorted(engine.eos_ids)
    end = float(torch.logsumexp(logp[eos], 0))
    order = [t for t in logp.argsort(descending=True).tolist() if t not in eos]
    top, low = order[0], order[-1]
    for cands in ([[], [low]], [[], [top]], [[top], [top, low]], [[], [top], [top, low], []]):
        s, idx, _ = _check_against_ref(engine, hf, context, cands)
        if cands == [[], [low]]:
            assert end > float(logp[low]) and idx == 0  # the turn ends: the empty candidate wins
        if cands == [[], [top]]:
            assert idx == (1 if float(logp[top]) > end else 0)


def test_single_candidate_decodes_nothing(pair):
    engine, _ = pair
    s = engine.session(_ids(20, 50))
    before = s.stats.copy()
    assert s.choose(["look", "look"]) == (0, [0.0, 0.0])
    assert (s.stats - before).tokens_encoded == 0 and s.tokens == engine.encode("look")


def _conv(engine):
    conv = engine.chat([{"role": "system", "content": "You are an agent. Playbook: take, then move."}])
    conv.add_user("You are in the middle of a room. You see a fridge 1.")
    return conv


@pytest.mark.parametrize("method", ["sum", "mean"])
def test_score_methods_match_session_score(pair, method):
    engine, _ = pair
    conv = _conv(engine)
    ref = engine.session(engine.render_chat(conv.messages, add_generation_prompt=True)).score(COMMANDS)
    if method == "mean":
        ref = [r / len(engine.encode(c)) for r, c in zip(ref, COMMANDS)]
    idx, scores = conv.choose(COMMANDS, method=method)
    assert scores == pytest.approx(ref, abs=1e-4)
    assert idx == max(range(len(ref)), key=ref.__getitem__)
    assert conv.messages[-1] == {"role": "assistant", "content": COMMANDS[idx]}


@pytest.mark.parametrize("method", ["greedy", "sum", "mean"])
def test_conversation_next_turn_is_consistent(pair, method):
    engine, hf = pair
    conv = _conv(engine)
    idx, _ = conv.choose(COMMANDS, method=method)
    conv.add_user("The fridge 1 is closed.")
    full = engine.encode(engine.render_chat(conv.messages))
    assert conv.session.token_ids == full
    with torch.no_grad():
        ref = hf(torch.tensor([full])).logits[0, -1]
    torch.testing.assert_close(conv.session.logits, ref, atol=2e-5, rtol=0)


def test_greedy_is_the_default_method(pair):
    engine, _ = pair
    a, b = _conv(engine), _conv(engine)
    b._sync(add_generation_prompt=True)
    assert a.choose(COMMANDS) == b.session.choose(COMMANDS)


def test_bad_input_is_named(pair):
    engine, _ = pair
    conv = _conv(engine)
    n_messages = len(conv.messages)
    with pytest.raises(ValueError, match="'beam'"):
        conv.choose(COMMANDS, method="beam")
    for method in ("greedy", "sum", "mean"):
        with pytest.raises(ValueError, match="at least one candidate"):
            conv.choose([], method=method)
    assert len(conv.messages) == n_messages
    with pytest.raises(ValueError, match="at least one candidate"):
        conv.session.choose([])
    with pytest.raises(ValueError, match="tokenise to nothing"):
        conv.choose(["", "look"], method="sum")
