"""pack_weights: every tensor moves into one arena in decode read order, values and view relations kept."""
import pytest
import torch

from duomem_fast.lora import attach_adapter, extend_lora_rows, load_adapter
from duomem_fast.model.arena import HUGE_PAGE, _decode_order, pack_weights
from duomem_fast.model.config import load_config
from duomem_fast.model.testing import make_random_adapter
from duomem_fast.model.weights import build_weights, read_tensors


def _weights(model_dir, adapter=None):
    cfg = load_config(model_dir)
    w = build_weights(cfg, read_tensors(model_dir), torch.float32)
    if adapter is not None:
        attach_adapter(w, cfg, load_adapter(adapter, cfg))
        extend_lora_rows(w)
    return w


def _snapshot(w):
    return [(type(obj).__name__, name, t.clone()) for obj, name, t in _decode_order(w)]


@pytest.mark.parametrize("arch, lora", [("llama", True), ("qwen2", False), ("qwen3", True)])
def test_pack_keeps_values_views_and_order(tiny_dirs, tmp_path, arch, lora):
    ad = make_random_adapter(tiny_dirs[arch], tmp_path / "ad", r=4) if lora else None
    w = _weights(tiny_dirs[arch], ad)
    tied = w.lm_head is w.embed
    before = _snapshot(w)
    size = pack_weights(w)
    after = list(_decode_order(w))
    assert [(type(o).__name__, n) for o, n, _ in after] == [(k, n) for k, n, _ in before]
    for (_, name, old), (_, _, new) in zip(before, after):
        assert torch.equal(old, new), name
    lo = min(t.data_ptr() for _, _, t in after)
    assert lo % HUGE_PAGE == 0
    assert max(t.data_ptr() + t.numel() * t.element_size() for _, _, t in after) - lo <= size
    arena = after[0][2].untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == arena for _, _, t in after), "tensors left outside the arena"
    assert (w.lm_head is w.embed) == tied
    if lora:
        for lw in w.layers:
            for name, pair in lw.lora.items():
                wt = getattr(lw, name)
                assert pair.b.data_ptr() == wt.data_ptr() + wt.shape[1] * wt.element_size(), name
                assert wt.stride(0) == wt.shape[1] + pair.b.shape[1]
    layer0 = w.layers[0]
    assert layer0.ln_attn.data_ptr() < layer0.qkv.data_ptr() < layer0.o.data_ptr() < layer0.gate_up.data_ptr() \
        < layer0.down.data_ptr() < w.layers[1].ln_attn.data_ptr() < w.lm_head.data_ptr()
