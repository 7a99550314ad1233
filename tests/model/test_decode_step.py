"""The fused native layer stack (ops.decode_step, ops.append_step, ops.decode_attention) against the eager
reference paths."""
import json

import pytest
import torch

from duomem_fast import Engine, ops
from duomem_fast.kernels.reference import prefix_attention_ref
from duomem_fast.model.testing import ARCHS, make_random_adapter, make_tiny_model

native = pytest.mark.skipif(not ops.has_decode_step("cpu"),
                            reason="duomem_fast._C built without the decode ops (or DUOMEM_NO_NATIVE=1)")
TOL = dict(atol=2e-5, rtol=1e-4)  # fp32; the eager path itself differs from transformers by ~1e-6


@native
@pytest.mark.parametrize("B,Hq,Hkv,D,P,S,lens", [
    (1, 9, 3, 64, 2000, 100, [57]),        # the default model's decode shape
    (3, 6, 2, 20, 0, 13, [5, 13, 1]),      # no prefix, D not a multiple of 16, a row seeing one key
    (2, 4, 4, 16, 7, 9, [9, 3]),           # MHA
    (1, 16, 2, 128, 33, 40, [1]),          # G=8: two row blocks per KV head
    (19, 3, 1, 8, 65, 66, list(range(1, 20))),
    (1, 6, 2, 128, 150, 70, [70]),         # G=3, D=128: the next block's rows prefetched along two 64-dim slices
    (1, 8, 2, 64, 150, 5, [5]),            # G=4: the register-block score path with its block prefetch
])
def test_decode_attention_matches_reference(B, Hq, Hkv, D, P, S, lens):
    g = torch.Generator().manual_seed(B * 100 + D)
    q = torch.randn(B, Hq, D, generator=g)
    kp, vp = (torch.randn(P, Hkv, D, generator=g) for _ in range(2))
    ko, vo = (torch.randn(B, S, Hkv, D, generator=g) for _ in range(2))
    out = ops.decode_attention(q, kp if P else None, vp if P else None, ko, vo, lens)
    ref = prefix_attention_ref(q[:, None], kp if P else None, vp if P else None, ko, vo, torch.tensor(lens))[:, 0]
    torch.testing.assert_close(out, ref, **TOL)


def _threads(n, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


@native
@pytest.mark.parametrize("Hq,Hkv,D,P,S", [
    (9, 3, 64, 2000, 100),   # the default model: 4 prefix chunks and the own one
    (8, 2, 64, 1100, 5),     # G=4 (the whole-row prefetch), a short last chunk
    (16, 2, 128, 200, 60),   # G=8, D=128: one prefix chunk, one own
])
def test_decode_attention_same_bits_on_two_threads(Hq, Hkv, D, P, S):
    """Keys are attended in fixed chunks that threads share out, merged in order: two threads give one's bits."""
    g = torch.Generator().manual_seed(P + D)
    q = torch.randn(1, Hq, D, generator=g)
    kp, vp = (torch.randn(P, Hkv, D, generator=g) for _ in range(2))
    ko, vo = (torch.randn(1, S, Hkv, D, generator=g) for _ in range(2))
    run = lambda: ops.decode_attention(q, kp, vp, ko, vo, [S])  # noqa: E731
    one, two = _threads(1, run), _threads(2, run)
    assert torch.equal(one, two)
    ref = prefix_attention_ref(q[:, None], kp, vp, ko, vo, torch.tensor([S]))[:, 0]
    torch.testing.assert_close(two, ref, **TOL)


@native
def test_decode_attention_refuses_bad_lengths():
    q, k = torch.randn(1, 4, 16), torch.randn(1, 5, 2, 16)
    with pytest.raises(ValueError, match=r"own_lens\[0\]=6"):
        ops.decode_attention(q, None, None, k, k, [6])


def _stack_inputs(tmp_path, cap: int):
    """A tiny model's hidden size, head dim, per-layer tensor lists and a zero own-KV buffer of `cap` rows."""
    from duomem_fast.model.decoder import decode_plan

    engine = Engine.from_pretrained(make_tiny_model(tmp_path / "llama", "llama"))
    cfg = engine.config
    own = torch.zeros(cfg.num_layers, 1, cap, cfg.num_kv_heads, cfg.head_dim)
    return cfg, cfg.head_dim, own, *decode_plan(engine.decoder.w)


@native
def test_decode_step_refuses_a_position_outside_the_buffer(tmp_path):
    cfg, d, own, weights, extras = _stack_inputs(tmp_path, 4)
    with pytest.raises(ValueError, match=r"own_start\[0\]=4"):
        ops.decode_step(torch.randn(1, cfg.hidden_size), weights, extras, torch.ones(1, d), torch.zeros(1, d), None,
                        None, own, own.clone(), [4], 1e-6)


def _run(model_dir, adapter, fused: bool, merge: bool = False):
    """Prefix + a long append (fused: append_step, over the prefix and itself) + a short one (the eager rows path)
    + 12 decoded tokens, then 3 sessions decoding as a batch: tokens and last logits."""
    engine = Engine.from_pretrained(model_dir, adapter=adapter, merge_lora=merge, fused_decode=fused)
    engine.eos_ids = set()
    s = engine.session(engine.prefix(list(range(5, 40))))
    s.append(list(range(50, 80)))
    s.append(list(range(80, 85)))
    s.generate(12)
    logits = engine._run(s, s.tokens[s.kv.length:])
    batch = [engine.session(s.prefix) for _ in range(3)]
    for j, b in enumerate(batch):
        b.append(list(range(60, 63 + 2 * j)))
    engine.generate_batch(batch, 6)
    return s.tokens, logits, [b.tokens for b in batch]


def _tiny(tmp_path, arch, odd: bool):
    overrides = dict(hidden_size=114, intermediate_size=77, num_attention_heads=6, num_key_value_heads=2,
                     head_dim=20, num_hidden_layers=3) if odd else {}
    return make_tiny_model(tmp_path / arch, arch, seed=3, **overrides)


@native
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("odd", [False, True])
def test_fused_decode_equals_eager(tmp_path, arch, odd):
    model_dir = _tiny(tmp_path, arch, odd)
    adapter = make_random_adapter(model_dir, tmp_path / "ad", r=4, alpha=8, std=0.3)
    for ad in (None, adapter):
        eager, fused = _run(model_dir, ad, False), _run(model_dir, ad, True)
        assert fused[0] == eager[0] and fused[2] == eager[2]
        torch.testing.assert_close(fused[1], eager[1], **TOL)


@native
def test_fused_decode_is_used_and_flag_turns_it_off(tmp_path, monkeypatch):
    model_dir = make_tiny_model(tmp_path / "llama", "llama")
    calls = {"decode_step": [], "append_step": []}
    for name, got in calls.items():
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, real=real, got=got: got.append(a[0].shape[0]) or real(*a))
    _run(model_dir, None, True)
    used = {name: list(got) for name, got in calls.items()}
    _run(model_dir, None, False)
    assert len(used["decode_step"]) >= 12 + 5
    cfg = json.loads((model_dir / "config.json").read_text())
    g = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
    appends = (35, 30, 5, 3, 5, 7)  # the prefix, two appends, three batched sessions' own tokens
    # the appends with a KV head's rows for the tiles run fused (AVX-512 builds from 48 rows, AVX2 from 12)
    assert used["append_step"] == [n for n in appends if n * g >= ops.tiled_min_rows()]
    assert used["append_step"][:2] == [35, 30]
    assert {name: len(got) for name, got in calls.items()} == {name: len(got) for name, got in used.items()}


@native
def test_append_step_refuses_rows_outside_the_buffer(tmp_path):
    cfg, d, own, weights, extras = _stack_inputs(tmp_path, 8)
    with pytest.raises(ValueError, match=r"^append_step: own rows \[5, 9\) outside the buffer's 8"):
        ops.append_step(torch.randn(4, cfg.hidden_size), weights, extras, torch.ones(4, d), torch.zeros(4, d), None,
                        None, own, own.clone(), 5, 1e-6)
    with pytest.raises(ValueError, match=r"^append_step: cos/sin must be fp32 \(rows=4"):
        ops.append_step(torch.randn(4, cfg.hidden_size), weights, extras, torch.ones(3, d), torch.zeros(3, d), None,
                        None, own, own.clone(), 0, 1e-6)


@native
def test_fused_decode_equals_eager_on_two_threads(tmp_path):
    model_dir = _tiny(tmp_path, "qwen3", True)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        eager, fused = _run(model_dir, None, False), _run(model_dir, None, True)
    finally:
        torch.set_num_threads(before)
    assert fused[0] == eager[0] and fused[2] == eager[2]
    torch.testing.assert_close(fused[1], eager[1], **TOL)


@native
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_batched_rows_on_a_prefix_equal_one_by_one(tmp_path, arch):
    """B rows over one prefix attend it once for all of them (decode_attention_shared), then each its own KV: the
    same outputs and KV writes as decode steps of one row each."""
    from duomem_fast.model.decoder import decode_plan

    engine = Engine.from_pretrained(make_tiny_model(tmp_path / arch, arch, seed=5))
    cfg, d, L, B = engine.config, engine.config.head_dim, engine.config.num_layers, 3
    weights, extras = decode_plan(engine.decoder.w)
    kp, vp = torch.randn(L, 70, cfg.num_kv_heads, d), torch.randn(L, 70, cfg.num_kv_heads, d)
    own_k, own_v = torch.randn(L, B, 9, cfg.num_kv_heads, d), torch.randn(L, B, 9, cfg.num_kv_heads, d)
    x, cos, sin, start = torch.randn(B, cfg.hidden_size), torch.rand(B, d), torch.rand(B, d), [0, 4, 7]
    ok, ov = own_k.clone(), own_v.clone()
    batched = ops.decode_step(x, weights, extras, cos, sin, kp, vp, ok, ov, start, 1e-6)
    for b in range(B):
        kb, vb = own_k[:, b:b + 1].clone(), own_v[:, b:b + 1].clone()
        one = ops.decode_step(x[b:b + 1], weights, extras, cos[b:b + 1], sin[b:b + 1], kp, vp, kb, vb, [start[b]],
                              1e-6)
        torch.testing.assert_close(batched[b:b + 1], one, **TOL)
        torch.testing.assert_close(ok[:, b:b + 1], kb, **TOL)
        torch.testing.assert_close(ov[:, b:b + 1], vb, **TOL)


@native
def test_batched_rows_same_bits_on_two_threads(tmp_path):
    """The shared prefix pass of a batch (decode_attention_shared) shares its chunks out on two threads too."""
    from duomem_fast.model.decoder import decode_plan

    engine = Engine.from_pretrained(make_tiny_model(tmp_path / "llama", "llama", seed=6))
    cfg, d, L, B = engine.config, engine.config.head_dim, engine.config.num_layers, 2
    weights, extras = decode_plan(engine.decoder.w)
    kp, vp = torch.randn(L, 1100, cfg.num_kv_heads, d), torch.randn(L, 1100, cfg.num_kv_heads, d)
    own = torch.randn(2, L, B, 9, cfg.num_kv_heads, d)
    x, cos, sin = torch.randn(B, cfg.hidden_size), torch.rand(B, d), torch.rand(B, d)
    run = lambda: ops.decode_step(x, weights, extras, cos, sin, kp, vp, own[0].clone(), own[1].clone(),  # noqa: E731
                                  [3, 8], 1e-6)
    assert torch.equal(_threads(1, run), _threads(2, run))


@native
def test_append_step_traces_under_torch_compile(tmp_path):
    """append_step has a fake registered: torch.compile takes it into one graph, with the same output and KV writes."""
    cfg, d, own, weights, extras = _stack_inputs(tmp_path, 40)
    x, cos, sin = torch.randn(30, cfg.hidden_size), torch.rand(30, d), torch.rand(30, d)
    ref = ops.append_step(x, weights, extras, cos, sin, None, None, own, own.clone(), 3, 1e-6)
    k2, v2 = torch.zeros_like(own), torch.zeros_like(own)
    fn = torch.compile(lambda t: ops.append_step(t, weights, extras, cos, sin, None, None, k2, v2, 3, 1e-6),
                       backend="eager", fullgraph=True)
    assert torch.equal(fn(x), ref)
    assert torch.equal(k2, own) and k2[:, :, 3:33].abs().sum() > 0
