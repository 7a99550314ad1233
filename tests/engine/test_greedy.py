"""Greedy tokens equal transformers' (and peft's) on tiny random models of every architecture and the default."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from duomem_fast import Engine
from duomem_fast.model.testing import ARCHS, make_random_adapter

MESSAGES = [{"role": "system", "content": "You play a text game. Answer with one command."},
            {"role": "user", "content": "You are in the middle of a room. You see a cabinet 1, a fridge 1. "
                                        "Your task is to: put a cool apple in the fridge. What do you do?"}]


def _prompt_ids(model_dir) -> list[int]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(ids):].tolist()


def _ours_greedy(engine: Engine, ids: list[int], n: int, split: int = 17) -> list[int]:
    """Prefix of `split` tokens, the rest appended, then decoding: exercises shared + own KV."""
    s = engine.session(engine.prefix(ids[:split]))
    s.append(ids[split:])
    before = len(s.tokens)
    engine.eos_ids = set()  # compare full length (min_new_tokens on the transformers side)
    s.generate(n)
    return s.tokens[before:]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_transformers_tiny(tiny_dirs, arch):
    ids = _prompt_ids(tiny_dirs[arch])
    ref = _hf_greedy(AutoModelForCausalLM.from_pretrained(tiny_dirs[arch]), ids, 20)
    assert _ours_greedy(Engine.from_pretrained(tiny_dirs[arch]), ids, 20) == ref


@pytest.mark.parametrize("arch,merge,rslora", [("llama", False, False), ("llama", True, True),
                                              ("qwen2", False, True), ("qwen3", True, False)])
def test_greedy_equals_peft_tiny(tiny_dirs, tmp_path, arch, merge, rslora):
    from peft import PeftModel

    adapter = make_random_adapter(tiny_dirs[arch], tmp_path / "ad", r=4, alpha=8, use_rslora=rslora, std=0.3)
    ids = _prompt_ids(tiny_dirs[arch])
    hf = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dirs[arch]), adapter)
    base_ref = _hf_greedy(AutoModelForCausalLM.from_pretrained(tiny_dirs[arch]), ids, 20)
    ref = _hf_greedy(hf, ids, 20)
    assert ref != base_ref, "the adapter must change the output for this test to mean anything"
    assert _ours_greedy(Engine.from_pretrained(tiny_dirs[arch], adapter=adapter, merge_lora=merge), ids, 20) == ref


@pytest.mark.slow
def test_greedy_equals_transformers_default_model(tmp_path):
    """Base, unmerged and merged adapter (r=16 on all linears, nonzero B) against transformers + peft."""
    from peft import LoraConfig, get_peft_model

    from duomem_fast import resolve_model_dir

    path = resolve_model_dir(None)
    ids = _prompt_ids(path)
    hf = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LoraConfig(
        r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"], lora_dropout=0.0))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    hf.save_pretrained(tmp_path / "ad")
    with hf.disable_adapter():
        base_ref = _hf_greedy(hf, ids, 16)
    ref = _hf_greedy(hf, ids, 16)
    assert ref != base_ref
    del hf
    assert _ours_greedy(Engine.from_pretrained(None), ids, 16, split=40) == base_ref
    for merge in (False, True):
        engine = Engine.from_pretrained(None, adapter=tmp_path / "ad", merge_lora=merge)
        assert _ours_greedy(engine, ids, 16, split=40) == ref, f"merge_lora={merge}"
    engine.lookahead = 4
    assert _ours_greedy(engine, ids, 16, split=40) == ref, "prompt-lookup drafts"
