"""An engine on a model that a GGUF de-quantised keeps its matrices in exact blocks and decodes the same tokens as
transformers, as itself on fp32 matrices, and as the reference ops."""
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from duomem_fast import Engine, ops
from duomem_fast.model.testing import make_random_adapter, snap_model_to_blocks
from test_greedy import _hf_greedy, _ours_greedy, _prompt_ids


@pytest.fixture(scope="module")
def gguf_dirs(tiny_dirs, tmp_path_factory):
    """llama (untied lm_head) and qwen3 (tied, q/k-norm) tiny models with Q4_1 projections and a Q8_0 embedding."""
    root = tmp_path_factory.mktemp("gguf_like")
    return {arch: snap_model_to_blocks(shutil.copytree(tiny_dirs[arch], root / arch)) for arch in ("llama", "qwen3")}


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_blocks_decode_like_transformers(gguf_dirs, arch):
    ids = _prompt_ids(gguf_dirs[arch])
    engine = Engine.from_pretrained(gguf_dirs[arch])
    w = engine.decoder.w
    assert all(getattr(lw, n).dtype == torch.uint8 for lw in w.layers for n in ("qkv", "o", "gate_up", "down"))
    assert w.lm_head.dtype == torch.uint8 and w.embed.dtype == torch.float32  # the lookup table stays fp32
    ref = _hf_greedy(AutoModelForCausalLM.from_pretrained(gguf_dirs[arch]), ids, 20)
    assert _ours_greedy(engine, ids, 20) == ref
    assert _ours_greedy(Engine.from_pretrained(gguf_dirs[arch], block_weights=False), ids, 20) == ref


def test_blocks_with_unmerged_adapter(gguf_dirs, tmp_path):
    """Unmerged: the base stays in blocks and B beside it; merged weights are no longer blocks and stay fp32."""
    from peft import PeftModel

    model_dir = gguf_dirs["llama"]
    adapter = make_random_adapter(model_dir, tmp_path / "adapter", r=8, std=0.1)
    ids = _prompt_ids(model_dir)
    hf = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter).merge_and_unload()
    ref = _hf_greedy(hf, ids, 16)
    unmerged = Engine.from_pretrained(model_dir, adapter=adapter)
    assert unmerged.decoder.w.layers[0].qkv.dtype == torch.uint8 and unmerged.decoder.w.layers[0].lora
    assert _ours_greedy(unmerged, ids, 16) == ref
    merged = Engine.from_pretrained(model_dir, adapter=adapter, merge_lora=True)
    assert merged.decoder.w.layers[0].qkv.dtype == torch.float32
    assert _ours_greedy(merged, ids, 16) == ref


def test_blocks_same_tokens_on_reference_ops(gguf_dirs):
    ids = _prompt_ids(gguf_dirs["qwen3"])
    native = _ours_greedy(Engine.from_pretrained(gguf_dirs["qwen3"]), ids, 12)
    ops.set_backend("reference")
    try:
        assert _ours_greedy(Engine.from_pretrained(gguf_dirs["qwen3"]), ids, 12) == native
    finally:
        ops.set_backend(None)


@pytest.fixture(scope="module")
def amx_shaped_dir(tmp_path_factory):
    """A tiny llama with the default model's head geometry (head dim 64, 3 query heads per KV head), in blocks: a
    prompt of 90 tokens puts the appends on AMX's paths (more than 32 rows; 48+ query rows per KV head)."""
    from duomem_fast.model.testing import make_tiny_model

    d = make_tiny_model(tmp_path_factory.mktemp("amx_shaped") / "llama", "llama", hidden_size=192,
                        intermediate_size=256, num_attention_heads=3, num_key_value_heads=1, head_dim=64)
    return snap_model_to_blocks(d)


def test_amx_paths_decode_like_transformers(amx_shaped_dir, tmp_path):
    """Appends over AMX tiles (GEMM over the blocks with the unmerged adapter; attention, opt-in) give transformers'
    tokens, and the same tokens as the fp32 paths (blocks widened for oneDNN, fp32 register tiles)."""
    from peft import PeftModel

    adapter = make_random_adapter(amx_shaped_dir, tmp_path / "adapter", r=8, std=0.1)
    ids = torch.randint(3, 300, (90,), generator=torch.Generator().manual_seed(0)).tolist()
    hf = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(amx_shaped_dir), adapter).merge_and_unload()
    ref = _hf_greedy(hf, ids, 16)
    engine = Engine.from_pretrained(amx_shaped_dir, adapter=adapter)
    assert _ours_greedy(engine, ids, 16, split=40) == ref  # the defaults: AMX GEMM, fp32 attention tiles
    if ops.backend("cpu") != "native":
        return
    try:
        ops._C.set_attention_amx(True)  # opt-in
        assert _ours_greedy(engine, ids, 16, split=40) == ref
        ops._C.set_block_gemm("widen")
        ops._C.set_attention_amx(False)
        assert _ours_greedy(engine, ids, 16, split=40) == ref
    finally:
        ops._C.set_block_gemm("auto")
        ops._C.set_attention_amx(False)
