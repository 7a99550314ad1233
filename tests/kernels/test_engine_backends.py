"""End to end: the engine on a tiny random model (unmerged LoRA, attention through ops) gives the same greedy tokens
with the C++ ops as with the pure-torch reference ops, for single sessions and a batch sharing one prefix."""
import pytest
import torch

from duomem_fast import ops

pytestmark = pytest.mark.skipif(not ops.HAS_NATIVE, reason="duomem_fast._C not built: nothing to compare")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from duomem_fast.model.testing import make_random_adapter, make_tiny_model
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for arch in ("llama", "qwen2"):
        model = make_tiny_model(root / arch, arch=arch, seed=1)
        out[arch] = (model, make_random_adapter(model, root / f"{arch}_lora", r=8, std=0.1, seed=2))
    return out


def _greedy(model, adapter, backend: str) -> tuple[list[str], list[str]]:
    from duomem_fast import Engine
    ops.set_backend(backend)
    try:
        engine = Engine.from_pretrained(model, adapter=adapter, merge_lora=False, attn_impl="ops")
        p = engine.prefix("You are in the middle of a room. Your task is to: put a clean apple in the fridge.")
        single = [engine.session(p).generate(12, temperature=0.0) for _ in range(2)]
        sessions = [engine.session(p) for _ in range(3)]
        for s, text in zip(sessions, ["> go to countertop 1.", "> take apple 1", "> open fridge 1. Nothing"]):
            s.append(text)
        batch = engine.generate_batch(sessions, max_new_tokens=10, temperature=0.0)
        return single, list(batch)
    finally:
        ops.set_backend(None)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_native_and_reference_ops_give_same_greedy_tokens(model_dirs, arch):
    model, adapter = model_dirs[arch]
    with torch.inference_mode():
        native = _greedy(model, adapter, "native")
        reference = _greedy(model, adapter, "reference")
    assert native == reference
    assert any(t for t in native[0] + native[1]), "generated nothing: the comparison would be vacuous"
