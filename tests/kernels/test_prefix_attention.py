"""prefix_attention on every backend against prefix_attention_ref: GQA, ragged suffixes, prefix only, suffix only."""
import math

import pytest
import torch

from conftest import assert_close, backend_params
from duomem_fast import ops
from duomem_fast.kernels.reference import prefix_attention_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make(B, T, Hq, Hkv, D, P, S, dtype):
    q = torch.randn(B, T, Hq, D).to(dtype)
    kp, vp = (torch.randn(P, Hkv, D).to(dtype) for _ in range(2))
    ks, vs = (torch.randn(B, S, Hkv, D).to(dtype) for _ in range(2))
    lens = torch.randint(T, S + 1, (B,))
    return q, kp, vp, ks, vs, lens


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,Hq,Hkv,D,P,S", [
    (1, 1, 4, 4, 16, 37, 1),     # decode, MHA, one suffix token
    (3, 4, 6, 2, 16, 37, 9),     # GQA group 3, ragged suffixes
    (2, 3, 3, 1, 24, 19, 5),     # MQA, head dim not a power of 2
])
def test_prefix_and_suffix(backend, dtype, B, T, Hq, Hkv, D, P, S, use_backend):
    q, kp, vp, ks, vs, lens = make(B, T, Hq, Hkv, D, P, S, dtype)
    use_backend(backend)
    o, lse = ops.prefix_attention(q, kp, vp, ks, vs, lens, return_lse=True)
    o_ref, lse_ref = prefix_attention_ref(q, kp, vp, ks, vs, lens, return_lse=True)
    assert_close(o, o_ref, dtype)
    torch.testing.assert_close(lse, lse_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", backend_params())
def test_causal_rows_seeing_no_key_of_a_block(backend, use_backend):
    """A suffix past one 256-key block: its last block (key 256) is beyond the causal limit of the first rows,
    whose probabilities there must count as zero (the native kernel once added their raw scores into P·V)."""
    q, kp, vp, ks, vs, _ = make(2, 4, 6, 2, 16, 5, 257, torch.float32)
    lens = torch.tensor([257, 200])
    use_backend(backend)
    o = ops.prefix_attention(q, kp, vp, ks, vs, lens)
    assert_close(o, prefix_attention_ref(q, kp, vp, ks, vs, lens), torch.float32)


@pytest.fixture(params=["amx", "fp32"])
def tiles(request):
    """The many-row attention path: AMX tiles (head dim 64, 96+ rows, where the CPU has them) or fp32 register
    tiles."""
    if ops.backend("cpu") != "native":
        pytest.skip("the native CPU build is absent")
    ops._C.set_attention_amx(request.param == "amx")
    if request.param == "amx" and not ops._C.attention_amx():
        ops._C.set_attention_amx(False)
        pytest.skip("this CPU or build has no AMX-BF16")
    yield request.param
    ops._C.set_attention_amx(False)  # the default


@pytest.mark.skipif(ops.backend("cpu") != "native", reason="the native CPU build is absent")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,Hq,Hkv,D,P,S", [
    (1, 19, 9, 3, 64, 131, 40),     # 57 rows per KV head: one work item, a last tile of 3 rows, 3 keys past 128
    (1, 45, 9, 3, 64, 300, 50),     # 135 rows: AMX tiles where the CPU has them (96+ rows), a last group of 7
    (2, 25, 16, 2, 128, 65, 30),    # D=128 (two P·V halves), 400 rows: five work items per head
    (3, 17, 4, 4, 64, 1, 17),       # one prefix key: a block of 1 key among 64
])
def test_tiled_prefix_pass(dtype, B, T, Hq, Hkv, D, P, S, tiles):
    """>= 48 query rows per KV head: the prefix pass runs as tiles (AMX, or fp32 over transposed key blocks)."""
    q, kp, vp, ks, vs, lens = make(B, T, Hq, Hkv, D, P, S, dtype)
    o, lse = ops.prefix_attention(q, kp, vp, ks, vs, lens, return_lse=True)
    o_ref, lse_ref = prefix_attention_ref(q, kp, vp, ks, vs, lens, return_lse=True)
    assert_close(o, o_ref, dtype)
    torch.testing.assert_close(lse, lse_ref, atol=1e-4, rtol=1e-4)
    o, lse = ops.prefix_attention(q, kp, vp, return_lse=True)  # prefix only: the tiles' own lse, unmerged
    o_ref, lse_ref = prefix_attention_ref(q, kp, vp, return_lse=True)
    assert_close(o, o_ref, dtype)
    torch.testing.assert_close(lse, lse_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(ops.backend("cpu") != "native", reason="the native CPU build is absent")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,Hq,Hkv,D,P,S,lens", [
    (2, 20, 9, 3, 64, 70, 200, [200, 150]),   # 60 rows per sequence and KV head; causal edges in 4 key blocks
    (1, 100, 9, 3, 64, 1000, 1100, [1100]),   # a long append: 300 rows per KV head (AMX: items of 256 + 44)
    (1, 40, 9, 3, 64, 0, 129, [129]),         # suffix only (no merge): 120 rows, items of 96 + 24, 65 + 64 keys
    (2, 16, 12, 2, 128, 5, 80, [16, 80]),     # D=128; a suffix that is only its causal part (len = T)
])
def test_tiled_suffix_pass(dtype, B, T, Hq, Hkv, D, P, S, lens, tiles):
    """>= 48 query rows per sequence and KV head: the suffix pass (history + causal part) runs as register tiles
    with a key limit per row, merged into the prefix pass through the log-sum-exps."""
    q, kp, vp, ks, vs, _ = make(B, T, Hq, Hkv, D, max(P, 1), S, dtype)
    lens = torch.tensor(lens)
    kp, vp = (kp, vp) if P else (None, None)
    o, lse = ops.prefix_attention(q, kp, vp, ks, vs, lens, return_lse=True)
    o_ref, lse_ref = prefix_attention_ref(q, kp, vp, ks, vs, lens, return_lse=True)
    assert_close(o, o_ref, dtype)
    torch.testing.assert_close(lse, lse_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("growth", ["rising", "falling"])
def test_tiled_wide_scores(growth, tiles):
    """Scores spanning hundreds (sharp heads): keys grow (the running max moves block after block: AMX's lazy max
    rescales the output again and again) or shrink (most probabilities underflow). Against float64."""
    q, kp, vp, ks, vs, _ = make(1, 40, 9, 3, 64, 700, 90, torch.float32)  # 120 rows per KV head
    ramp = torch.linspace(0.05, 4.0, 700)[:, None, None]
    kp = kp * (ramp if growth == "rising" else ramp.flip(0))
    q, lens = q * 6, torch.tensor([90])
    o, lse = ops.prefix_attention(q, kp, vp, ks, vs, lens, return_lse=True)
    o_ref, lse_ref = prefix_attention_ref(*(t.double() for t in (q, kp, vp, ks, vs)), lens, return_lse=True)
    assert_close(o, o_ref.float(), torch.float32)
    torch.testing.assert_close(lse, lse_ref.float(), atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(ops.backend("cpu") != "native", reason="the native CPU build is absent")
@pytest.mark.parametrize("B,T,Hq,Hkv,D,P,S", [
    (1, 60, 9, 3, 64, 300, 70),   # an append: tiled prefix and suffix passes
    (16, 1, 9, 3, 64, 300, 5),    # parallel episodes decoding: row blocks
])
def test_two_threads_same_bits(B, T, Hq, Hkv, D, P, S, tiles):
    """Work items (on ATen's threads) write disjoint rows: two threads give one thread's bits."""
    q, kp, vp, ks, vs, lens = make(B, T, Hq, Hkv, D, P, S, torch.float32)
    before = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(ops.prefix_attention(q, kp, vp, ks, vs, lens, return_lse=True))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("part", ["prefix_only", "suffix_only", "empty_prefix"])
def test_one_part(backend, part, use_backend):
    q, kp, vp, ks, vs, lens = make(3, 2, 4, 2, 16, 21, 6, torch.float32)
    if part == "prefix_only":
        ks = vs = lens = None
    elif part == "suffix_only":
        kp = vp = None
    else:
        kp, vp = kp[:0], vp[:0]
    use_backend(backend)
    o, lse = ops.prefix_attention(q, kp, vp, ks, vs, lens, scale=0.3, return_lse=True)
    o_ref, lse_ref = prefix_attention_ref(q, kp, vp, ks, vs, lens, scale=0.3, return_lse=True)
    assert_close(o, o_ref, torch.float32)
    torch.testing.assert_close(lse, lse_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", backend_params())
def test_non_contiguous_views(backend, use_backend):
    q, kp, vp, ks, vs, lens = make(2, 3, 4, 2, 16, 13, 5, torch.float32)
    kv = torch.randn(13, 2, 2, 16)  # interleaved k/v cache: views with a doubled token stride
    kp, vp = kv[:, 0], kv[:, 1]
    q = torch.randn(2, 4, 3, 16).transpose(1, 2)  # (B, T, Hq, D) view
    use_backend(backend)
    assert_close(ops.prefix_attention(q, kp, vp, ks, vs, lens), prefix_attention_ref(q, kp, vp, ks, vs, lens),
                 torch.float32)


def test_matches_full_causal_sdpa():
    """The reference itself: prefix + suffix equals causal SDPA over the concatenated sequence (T = S)."""
    B, S, Hq, Hkv, D, P = 2, 5, 4, 2, 16, 11
    q, kp, vp, ks, vs, _ = make(B, S, Hq, Hkv, D, P, S, torch.float32)
    k = torch.cat([kp.expand(B, -1, -1, -1), ks], 1).repeat_interleave(Hq // Hkv, 2).transpose(1, 2)
    v = torch.cat([vp.expand(B, -1, -1, -1), vs], 1).repeat_interleave(Hq // Hkv, 2).transpose(1, 2)
    mask = torch.ones(S, P + S, dtype=torch.bool).tril(P)
    want = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask).transpose(1, 2)
    assert_close(prefix_attention_ref(q, kp, vp, ks, vs), want, torch.float32)


@pytest.mark.parametrize("bad", ["q_dim", "gqa", "suffix_batch", "nothing"])
def test_bad_input_raises_value_error(bad):
    q, kp, vp, ks, vs, lens = make(2, 1, 4, 2, 16, 5, 3, torch.float32)
    if bad == "q_dim":
        q = q[0]
    elif bad == "gqa":
        q = torch.randn(2, 1, 3, 16)
    elif bad == "suffix_batch":
        ks, vs = ks[:1], vs[:1]
    else:
        kp = vp = ks = vs = None
    with pytest.raises(ValueError):
        ops.prefix_attention(q, kp, vp, ks, vs, lens if ks is not None else None)


def test_native_opcheck():
    if not ops.HAS_NATIVE:
        pytest.skip("duomem_fast._C not built")
    q, kp, vp, ks, vs, lens = make(2, 2, 4, 2, 16, 7, 3, torch.float32)
    torch.library.opcheck(torch.ops.duomem.prefix_attention.default, (q, kp, vp, ks, vs, lens, 1 / math.sqrt(16)),
                          test_utils=("test_schema", "test_faketensor"))
