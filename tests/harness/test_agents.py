import threading

import pytest

from duomem_fast.harness.agents import build_agent, for_workers, parse_agent


@pytest.mark.parametrize("text,kind,target,options", [
    ("expert", "expert", None, {}),
    ("random,seed=3", "random", None, {"seed": "3"}),
    ("duomem", "engine", None, {}),
    ("base", "engine", None, {"adapter": "none", "memory": "none"}),
    ("lora,k=3", "engine", None, {"memory": "none", "k": "3"}),
    ("hf:/models/x,adapter=none", "hf", "/models/x", {"adapter": "none"}),
    ("openai:http://127.0.0.1:8000/v1,model=m,rate=2", "openai", "http://127.0.0.1:8000/v1",
     {"model": "m", "rate": "2"}),
])
def test_parse_agent(text, kind, target, options):
    spec = parse_agent(text)
    assert (spec.kind, spec.target, spec.options) == (kind, target, options)


@pytest.mark.parametrize("text,match", [
    ("", "empty"), ("wizard", "unknown agent kind 'wizard'"), ("hf", "needs a target"),
    ("openai:", "needs a target"), ("expert:x", "takes no ':target'"), ("engine,colour=red", "bad option 'colour=red'"),
    ("random,seed", "bad option 'seed'"),
])
def test_bad_specs_name_the_bad_part(text, match):
    with pytest.raises(ValueError, match=match):
        parse_agent(text)


def test_bad_option_value_names_it():
    with pytest.raises(ValueError, match="seed='x'"):
        build_agent("random,seed=x")


def test_guarded_engine_counts_only_its_own_calls(tmp_path):
    from duomem_fast import Engine
    from duomem_fast.harness.guard import GuardedEngine
    from duomem_fast.model.testing import make_tiny_model

    engine = Engine.from_pretrained(str(make_tiny_model(tmp_path / "tiny")))
    lock = threading.Lock()
    views = [GuardedEngine(engine, lock) for _ in range(3)]
    want = []
    for i in range(3):
        s = engine.session(engine.prefix(f"go to shelf {i + 1}."))
        want.append(s.score(["look", "take apple 1 from shelf 1"]))
    engine_before = engine.stats.copy()
    got = [None] * 3

    def play(i):
        conv = views[i].chat([{"role": "system", "content": "You are in a room."}])
        conv.add_user(f"go to shelf {i + 1}." * (i + 1))
        got[i] = views[i].session(views[i].prefix(f"go to shelf {i + 1}.")).score(["look",
                                                                                    "take apple 1 from shelf 1"])

    threads = [threading.Thread(target=play, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want                                         # same answers as unguarded, serial calls
    total = engine.stats - engine_before
    assert sum(v.stats.tokens_encoded for v in views) == total.tokens_encoded
    assert views[0].stats.tokens_encoded < views[2].stats.tokens_encoded   # episode 2 appended more text
    assert all(v.stats.model_seconds > 0 for v in views)


def test_parallel_engine_runs_on_a_cpu_default_to_an_engine_per_worker(monkeypatch):
    import os
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    spec = for_workers(parse_agent("lora,k=3"), 2)
    assert spec.options["share"] == "0" and spec.options["threads"] == "2" and spec.label == "lora"
    assert spec.options["memory"] == "none" and spec.options["k"] == "3"      # preset and options kept
    assert for_workers(parse_agent("duomem"), 2, threads=3).options["threads"] == "3"
    assert for_workers(parse_agent("duomem"), 8).options["threads"] == "1"
    for kept in ("duomem,share=1", "duomem,share=0,threads=2"):               # what the user said stands
        assert for_workers(parse_agent(kept), 2).options == parse_agent(kept).options
    assert for_workers(parse_agent("duomem,share=0"), 2, threads=2).options["threads"] == "2"  # --threads reaches
    assert "threads" not in for_workers(parse_agent("duomem,share=1"), 2, threads=2).options  # a shared engine
    assert "share" not in for_workers(parse_agent("duomem"), 1).options      # one episode at a time: one engine
    assert for_workers(parse_agent("expert"), 2).options == {}


@pytest.mark.parametrize("isa,cuda,merged", [("avx2", False, False), ("avx512+bf16+amx", False, True),
                                              ("avx512", False, True), ("avx2", True, True)])
def test_default_precision_follows_the_cpu(isa, cuda, merged, monkeypatch):
    """Merged with bf16 weights where the CPU has AVX-512 (or on a GPU); the exact fp32 student, unmerged, on AVX2
    builds; bf16 weights by default only when merged; explicit options always win."""
    import torch

    from duomem_fast import ops
    from duomem_fast.harness.engine_agent import precision

    monkeypatch.setattr(ops, "cpu_isa", lambda: isa)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert precision(parse_agent("duomem")) == (merged, None, "bfloat16" if merged else None)
    assert precision(parse_agent("duomem,merge=1")) == (True, None, "bfloat16")
    assert precision(parse_agent("duomem,merge=0")) == (False, None, None)
    assert precision(parse_agent("duomem,merge=0,wdtype=bfloat16")) == (False, None, "bfloat16")
    assert precision(parse_agent("duomem,merge=1,wdtype=float32")) == (True, None, "float32")
    assert precision(parse_agent("duomem,dtype=bfloat16")) == (merged, "bfloat16", None)
