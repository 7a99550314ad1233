import json

import pytest

from duomem_fast.memory import TASK_TYPES, MemoryBank, default_adapter_dir, default_bank_path


@pytest.mark.skipif(default_bank_path() is None, reason="no memory bank shipped in duomem_fast/assets yet")
def test_shipped_bank_loads_with_cached_embeddings_and_covers_every_type():
    bank = MemoryBank.load(default_bank_path())
    assert len(bank) > 0 and {m.task_type for m in bank} == set(TASK_TYPES)
    if bank.embedder_name != "bm25":
        assert bank._emb is not None                       # the shipped embeddings match the shipped records
    got = bank.retrieve("put a hot apple in fridge.", 2)
    assert all(m.task_type == "pick_heat_then_place_in_recep" for m in got)


@pytest.mark.skipif(default_adapter_dir() is None, reason="no LoRA adapter shipped in duomem_fast/assets yet")
def test_shipped_adapter_fits_the_default_student():
    from duomem_fast.lora import load_adapter
    from duomem_fast.model.config import load_config
    from duomem_fast.model.loader import resolve_model_dir
    conf = json.loads((default_adapter_dir() / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"].endswith("SmolLM2-135M-Instruct")
    adapter = load_adapter(default_adapter_dir(), load_config(resolve_model_dir(None)), "SmolLM2-135M-Instruct")
    assert adapter.targets == ["q", "k", "v", "o", "gate", "up", "down"]
    assert json.loads((default_adapter_dir() / "training.json").read_text())["done"]
