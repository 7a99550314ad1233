"""PEFT adapters: logits equal peft's (merged and unmerged, subsets of targets), and every refusal path."""
import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from duomem_fast import Engine
from duomem_fast.model.testing import make_random_adapter, make_tiny_model


@pytest.fixture(scope="module")
def adapter(tiny_dirs, tmp_path_factory):
    return make_random_adapter(tiny_dirs["llama"], tmp_path_factory.mktemp("lora") / "ad", r=4, alpha=8, std=0.2)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _with_config(adapter, dst, **changes):
    """A copy of `adapter` whose adapter_config.json has `changes` applied."""
    out = _copy(adapter, dst)
    cfg = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**cfg, **changes}))
    return out


def _peft_logits(model_dir, adapter, ids):
    from peft import PeftModel

    with torch.no_grad():
        return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter)(ids).logits[0, -1]


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("k_proj", "o_proj", "up_proj"), ("gate_proj", "down_proj")])
@pytest.mark.parametrize("merge", [False, True])
def test_target_subsets_match_peft(tiny_dirs, tmp_path, targets, merge):
    ad = make_random_adapter(tiny_dirs["qwen2"], tmp_path / "ad", r=3, alpha=5, targets=targets, std=0.3)
    ids = torch.randint(3, 380, (1, 21))
    eng = Engine.from_pretrained(tiny_dirs["qwen2"], adapter=ad, merge_lora=merge)
    torch.testing.assert_close(eng.session(ids[0].tolist()).logits, _peft_logits(tiny_dirs["qwen2"], ad, ids),
                               atol=3e-5, rtol=0)


def test_unmerged_fused_lora_is_stacked(tiny_dirs, adapter):
    eng = Engine.from_pretrained(tiny_dirs["llama"], adapter=adapter)
    pair = eng.decoder.w.layers[0].lora["qkv"]
    cfg = eng.config
    assert pair.a.shape == (3 * 4, cfg.hidden_size) and pair.b.shape == (cfg.q_size + 2 * cfg.kv_size, 12)
    assert not pair.b[:cfg.q_size, 4:].any()  # block structure: q rows see only q's rank block


@pytest.mark.parametrize("kw, extended", [({}, True), ({"weight_dtype": "bfloat16"}, True),
                                         ({"dtype": "bfloat16"}, False)])
def test_unmerged_b_continues_w_rows(tiny_dirs, adapter, kw, extended):
    """Under fp32 activations each fused W and its B are the column slices of one (N, K + r) tensor (lora.py
    extend_lora_rows, read by the CPU lora_linear as one matrix); all-bf16 engines keep them apart."""
    eng = Engine.from_pretrained(tiny_dirs["llama"], adapter=adapter, **kw)
    for lw in eng.decoder.w.layers:
        for name, pair in lw.lora.items():
            w = getattr(lw, name)
            adjacent = w.stride(0) == w.shape[1] + pair.b.shape[1] and \
                pair.b.data_ptr() == w.data_ptr() + w.shape[1] * w.element_size()
            assert adjacent == extended, name


def test_missing_files(tiny_dirs, adapter, tmp_path):
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        bad = _copy(adapter, tmp_path / name)
        (bad / name).unlink()
        with pytest.raises(ValueError, match=f"missing file {name}"):
            Engine.from_pretrained(tiny_dirs["llama"], adapter=bad)


def test_shape_that_does_not_fit(tiny_dirs, tmp_path):
    wide = make_tiny_model(tmp_path / "wide", "llama", hidden_size=96, num_attention_heads=6, num_key_value_heads=3)
    ad = make_random_adapter(wide, tmp_path / "ad", r=2)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tiny_dirs["llama"])  # same name, different shapes
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not fit the base weight"):
        Engine.from_pretrained(tiny_dirs["llama"], adapter=ad)


def test_unknown_target_module(tiny_dirs, adapter, tmp_path):
    bad = _with_config(adapter, tmp_path / "bad", target_modules=["q_proj", "embed_tokens"])
    with pytest.raises(ValueError, match=r"unknown target module\(s\) \['embed_tokens'\]"):
        Engine.from_pretrained(tiny_dirs["llama"], adapter=bad)


def test_full_module_path_targets_accepted(tiny_dirs, adapter, tmp_path):
    """peft saves target_modules="all-linear" as full module paths; those name known targets."""
    full = _with_config(adapter, tmp_path / "full",
                        target_modules=["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"])
    Engine.from_pretrained(tiny_dirs["llama"], adapter=full)
    bad = _with_config(adapter, tmp_path / "bad", target_modules=["model.layers.0.self_attn.q_proj", "model.embed_tokens"])
    with pytest.raises(ValueError, match=r"unknown target module\(s\) \['model.embed_tokens'\]"):
        Engine.from_pretrained(tiny_dirs["llama"], adapter=bad)


def test_unknown_target_tensor(tiny_dirs, adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = _copy(adapter, tmp_path / "bad")
    tensors = load_file(str(bad / "adapter_model.safetensors"))
    tensors["base_model.model.lm_head.lora_A.weight"] = torch.zeros(4, 64)
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="unknown target module in tensor 'base_model.model.lm_head"):
        Engine.from_pretrained(tiny_dirs["llama"], adapter=bad)


def test_different_base_model(tiny_dirs, adapter, tmp_path):
    bad = _with_config(adapter, tmp_path / "bad", base_model_name_or_path="Qwen/Qwen2.5-0.5B-Instruct")
    with pytest.raises(ValueError, match="trained on base model 'Qwen/Qwen2.5-0.5B-Instruct'"):
        Engine.from_pretrained(tiny_dirs["llama"], adapter=bad)


def test_unsupported_options(tiny_dirs, adapter, tmp_path):
    bad = _with_config(adapter, tmp_path / "bad", use_dora=True)
    with pytest.raises(ValueError, match="use_dora=True is not supported"):
        Engine.from_pretrained(tiny_dirs["llama"], adapter=bad)
