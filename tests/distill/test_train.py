import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from duomem_fast.distill.config import TrainConfig
from duomem_fast.distill.train import build_examples, load_student, train_lora
from duomem_fast.memory import MemoryBank, memory_from_record

from helpers import records


def _cfg(tiny_model, **kw):
    # threads pinned: left to pick_threads, the count follows the box's load, and a run resumed on another count
    # sums its gradients in another order (not bit-equal; the resume test failed that way under load)
    base = dict(model=str(tiny_model), grad_accum=2, max_len=2048, checkpoint_every=1, lr=1e-2, bf16=False, threads=1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def recs():
    return records()[:4]


@pytest.fixture(scope="module")
def trained(tiny_model, recs, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter")
    bank = MemoryBank([memory_from_record(r) for r in records(seed=5)], embedder="bm25")
    return out, train_lora(recs, out, _cfg(tiny_model), bank=bank, progress=False), bank


def test_training_lowers_loss_and_writes_a_peft_dir(trained):
    out, summary, _ = trained
    assert summary["done"] and summary["steps"] == 2 and summary["losses"][-1] < summary["losses"][0]
    conf = json.loads((out / "adapter_config.json").read_text())
    assert conf["r"] == 16 and conf["lora_alpha"] == 32 and conf["peft_type"] == "LORA"
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(conf["target_modules"])
    w = load_file(str(out / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in w.items())
    assert not (out / "checkpoint").exists()


def test_interrupted_then_resumed_equals_uninterrupted(tiny_model, recs, trained, tmp_path):
    out, summary, bank = trained
    cfg = _cfg(tiny_model)
    first = train_lora(recs, tmp_path, cfg, bank=bank, progress=False, stop_after=1)
    assert not first["done"] and (tmp_path / "checkpoint" / "state.pt").exists()
    assert not (tmp_path / "adapter_model.safetensors").exists()
    second = train_lora(recs, tmp_path, cfg, bank=bank, progress=False)
    assert second["done"] and second["losses"] == summary["losses"]
    a, b = load_file(str(out / "adapter_model.safetensors")), load_file(str(tmp_path / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert train_lora(recs, tmp_path, cfg, bank=bank, progress=False)["seconds"] == second["seconds"]   # not redone


def test_playbook_share_and_leave_one_game_out(tiny_model, recs, trained):
    _, _, bank = trained
    tok, _, _ = load_student(_cfg(tiny_model))
    with_pb = build_examples(recs, tok, _cfg(tiny_model, memory_fraction=1.0), bank)
    without = build_examples(recs, tok, _cfg(tiny_model, memory_fraction=0.0), bank)
    assert all(len(a.input_ids) > len(b.input_ids) for a, b in zip(with_pb, without))
    own = MemoryBank([memory_from_record(r) for r in recs], embedder="bm25")
    only_own = build_examples(recs[:1], tok, _cfg(tiny_model, memory_fraction=1.0), MemoryBank([own.memories[0]], embedder="bm25"))
    assert len(only_own[0].input_ids) == len(without[[e.game for e in without].index(recs[0]["game"])].input_ids)


def test_engine_runs_the_adapter_like_transformers_peft(tiny_model, trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from duomem_fast import Engine
    out, _, _ = trained
    engine = Engine.from_pretrained(str(tiny_model), adapter=str(out))
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), str(out)).eval()
    prompt = engine.render_chat([{"role": "user", "content": "Your task is to: put a clean apple in the fridge."}], True)
    ids = engine.encode(prompt)
    s = engine.session(engine.prefix(ids))
    n0 = len(s.tokens)
    s.generate(8, temperature=0.0)
    got = list(s.tokens[n0:])
    with torch.no_grad():
        want = ref.generate(torch.tensor([ids]), max_new_tokens=len(got), do_sample=False)[0, len(ids):].tolist()
    assert got == want[:len(got)]
    cands = ["take apple 1 from countertop 2", "go to fridge 1", "clean apple 1 with sinkbasin 1"]
    scores = engine.session(engine.prefix(ids)).score(cands)
    with torch.no_grad():
        want_s = [_logprob(ref, ids, engine.encode(c)) for c in cands]
    assert scores == pytest.approx(want_s, abs=2e-3)


def _logprob(model, ctx, cont):
    logits = model(torch.tensor([ctx + cont])).logits[0, len(ctx) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(cont)[:, None]).sum().item()


def test_bad_config_errors():
    with pytest.raises(ValueError, match="rank"):
        TrainConfig(rank=0)
    with pytest.raises(ValueError, match="memory_fraction"):
        TrainConfig(memory_fraction=2)
    with pytest.raises(ValueError, match="placement"):
        TrainConfig(placement="middle")
    with pytest.raises(ValueError, match="no won episode"):
        build_examples([{**records()[0], "won": False}], None, TrainConfig())


def test_ship_installs_fp16_adapter_and_bank(trained, tmp_path):
    from duomem_fast.distill.ship import ship
    out, _, bank = trained
    run = tmp_path / "run"
    shutil.copytree(out, run / "adapter")
    bank.save(run / "bank.jsonl")
    sizes = ship(run, tmp_path / "assets")
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "bank.jsonl"} <= set(sizes)
    w = load_file(str(tmp_path / "assets" / "adapter" / "adapter_model.safetensors"))
    ref = load_file(str(out / "adapter_model.safetensors"))
    assert all(w[k].dtype == torch.float16 and torch.allclose(w[k].float(), ref[k], atol=1e-3) for k in ref)
    with pytest.raises(ValueError, match="missing"):
        ship(tmp_path / "nothing", tmp_path / "assets2")
