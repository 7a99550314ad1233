"""The decoder's logits against transformers' on every architecture, and through both attention paths."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from duomem_fast.model.config import load_config
from duomem_fast.model.decoder import Decoder, Step
from duomem_fast.model.testing import ARCHS, make_tiny_model
from duomem_fast.model.weights import build_weights, read_tensors

TOL = 2e-5  # fp32, tiny model: observed max |Δlogit| ~2e-6


def _decoder(path, impl="torch"):
    cfg = load_config(path)
    return Decoder(cfg, build_weights(cfg, read_tensors(path), torch.float32), torch.float32, impl)


def _hf_logits(path, ids):
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(path).eval()(ids).logits[0]


@pytest.mark.parametrize("impl", ["auto", "flash", "torch", "ops"])
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(tiny_dirs, arch, impl):
    dec = _decoder(tiny_dirs[arch], impl)
    ids = torch.randint(0, dec.cfg.vocab_size, (1, 19))
    ref = _hf_logits(tiny_dirs[arch], ids)
    out = dec.forward(ids, Step(positions=torch.arange(19)[None], shared=[]), logits="all")[0]
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("impl", ["auto", "flash", "torch", "ops"])
def test_shared_prefix_plus_own_kv_equals_one_pass(tiny_dirs, impl):
    dec = _decoder(tiny_dirs["qwen3"], impl)
    cfg = dec.cfg
    ids = torch.randint(0, cfg.vocab_size, (1, 23))
    full = dec.forward(ids, Step(positions=torch.arange(23)[None], shared=[]), logits="all")[0]
    shape = (cfg.num_layers, 1, 32, cfg.num_kv_heads, cfg.head_dim)
    k, v = torch.zeros(shape), torch.zeros(shape)
    dec.forward(ids[:, :11], Step(torch.arange(11)[None], [], k, v, [0]))
    pk, pv = k[:, 0, :11].clone(), v[:, 0, :11].clone()
    k2, v2 = torch.zeros(shape), torch.zeros(shape)
    dec.forward(ids[:, 11:17], Step(torch.arange(11, 17)[None], [(pk, pv)], k2, v2, [0]))
    out = dec.forward(ids[:, 17:], Step(torch.arange(17, 23)[None], [(pk, pv)], k2, v2, [6]), logits="all")[0]
    torch.testing.assert_close(out, full[17:], atol=TOL, rtol=0)


ROPES = {
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 128},
}


@pytest.mark.parametrize("name", sorted(ROPES))
def test_rope_scalings_match_transformers(tmp_path, name):
    path = make_tiny_model(tmp_path / name, "llama", rope_parameters=ROPES[name])
    dec = _decoder(path)
    ids = torch.randint(0, dec.cfg.vocab_size, (1, 150))
    out = dec.forward(ids, Step(positions=torch.arange(150)[None], shared=[]), logits="all")[0]
    torch.testing.assert_close(out, _hf_logits(path, ids), atol=TOL, rtol=0)


def test_unsupported_architecture_is_refused_by_name(tiny_dirs, tmp_path):
    import json

    from duomem_fast import Engine

    for f in tiny_dirs["llama"].iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    conf = json.loads((tmp_path / "config.json").read_text())
    conf["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        Engine.from_pretrained(tmp_path)
