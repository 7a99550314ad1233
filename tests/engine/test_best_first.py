"""Best-first choice (Conversation.choose(method="best")) against a brute-force transformers reference:
the candidate with the highest log p(tokens + end of turn | context), each scored by full recomputation."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from duomem_fast import Engine
from duomem_fast.engine.best_first import choose_best

COMMANDS = ["go to fridge 1", "go to countertop 1", "go to countertop 2", "take apple 1 from countertop 2",
            "open fridge 1", "look", "inventory", "move apple 1 to fridge 1", "clean apple 1 with sinkbasin 1",
            "go to cabinet 1", "examine fridge 1", "take apple 1 from countertop 1", "go to cabinet 10"]


@pytest.fixture(scope="module", params=("qwen3", "llama"))
def pair(request, tiny_dirs):
    d = tiny_dirs[request.param]
    return Engine.from_pretrained(d), AutoModelForCausalLM.from_pretrained(d).eval()


def _ref_scores(hf, context, cands, eos) -> list[float]:
    """log p(c + end of turn | context) per candidate, one full forward each."""
    out = []
    for c in cands:
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([context + c])).logits[0].float(), -1)
        n = len(context)
        tokens = sum(float(logp[n - 1 + j, t]) for j, t in enumerate(c))
        end = float(torch.logsumexp(logp[-1, eos], 0)) if eos else float("-inf")
        out.append(tokens + end)
    return out


def _session(engine, context):
    s = engine.session(engine.prefix(context[:20]))
    s.append(context[20:])
    return s


@pytest.mark.parametrize("seed", range(6))
def test_best_matches_brute_force(pair, seed):
    engine, hf = pair
    g = torch.Generator().manual_seed(seed)
    context = torch.randint(3, 380, (37 + seed,), generator=g).tolist()
    pick = torch.randperm(len(COMMANDS), generator=g)[:3 + 2 * seed].tolist()
    cands = [COMMANDS[i] for i in pick]
    s = _session(engine, context)
    idx, scores = choose_best(s, cands)
    ids = [engine._ids(c) for c in cands]
    ref = _ref_scores(hf, context, ids, sorted(engine.eos_ids))
    assert idx == max(range(len(ref)), key=ref.__getitem__)
    assert scores[idx] == pytest.approx(ref[idx], abs=1e-3)      # the winner's score is exact
    assert all(b >= r - 1e-3 for b, r in zip(scores, ref))       # the others' are upper bounds
    assert s.token_ids == context + ids[idx]


def test_best_leaves_session_usable(pair):
    """After a choice the session continues exactly as if the winner had been appended as text."""
    engine, _ = pair
    context = list(range(5, 45))
    a = _session(engine, context)
    idx, _ = choose_best(a, COMMANDS)
    b = _session(engine, context)
    b.append(engine._ids(COMMANDS[idx]))
    assert a.generate(6) == b.generate(6)


def test_best_single_and_duplicates(pair):
    engine, _ = pair
    s = _session(engine, list(range(5, 30)))
    assert choose_best(s, ["look"])[0] == 0
    s = _session(engine, list(range(5, 30)))
    idx, scores = choose_best(s, ["look", "look", "inventory"])
    assert idx in (0, 2) and scores[0] == scores[1]


def test_conversation_choose_best(pair):
    engine, _ = pair
    conv = engine.chat([{"role": "system", "content": "You are a household agent."}])
    conv.add_user("You are in a kitchen. Your task is to: put an apple in the fridge.")
    idx, _ = conv.choose(COMMANDS, method="best")
    assert conv.messages[-1] == {"role": "assistant", "content": COMMANDS[idx]}
    with pytest.raises(ValueError, match="at least one candidate"):
        conv.choose([], method="best")


def test_shared_run_costs_one_forward(pair, monkeypatch):
    """Candidates that share their first six tokens: the radix edge is one forward, not one per token."""
    engine, hf = pair
    context = list(range(5, 45))
    cands = ["take apple 1 from countertop 1", "take apple 1 from countertop 2"]
    calls = []
    run_all = type(engine)._run_all
    monkeypatch.setattr(type(engine), "_run_all", lambda self, s, ids: calls.append(len(ids)) or run_all(self, s, ids))
    idx, scores = choose_best(_session(engine, context), cands)
    ids = [engine._ids(c) for c in cands]
    assert ids[0][:-1] == ids[1][:-1] and len(ids[0]) >= 5
    assert len(calls) <= 3, calls  # the edge, then at most both leaves
    ref = _ref_scores(hf, context, ids, sorted(engine.eos_ids))
    assert idx == max(range(2), key=ref.__getitem__) and scores[idx] == pytest.approx(ref[idx], abs=1e-3)
