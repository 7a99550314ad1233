"""The attention paths of model/attention.py against the fp32 grouped-matmul reference, in bf16."""
import pytest
import torch

from duomem_fast import ops
from duomem_fast.model.attention import _auto, _rows_fit, attend


def _inputs(B, T, P, S, dtype, hq=6, hkv=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, hq, d, generator=g).to(dtype)
    shared = [(torch.randn(P, hkv, d, generator=g).to(dtype), torch.randn(P, hkv, d, generator=g).to(dtype))]
    own_k, own_v = (torch.randn(B, S, hkv, d, generator=g).to(dtype) for _ in range(2))
    lens = torch.tensor([S - i for i in range(B)]) if B > 1 else None
    return q, shared, own_k, own_v, lens


@pytest.mark.parametrize("impl", ["lowp", "flash", "ops"])
@pytest.mark.parametrize("B,T", [(1, 1), (1, 5), (2, 19)])
def test_bf16_paths_track_the_fp32_reference(impl, B, T):
    q, shared, own_k, own_v, lens = _inputs(B, T, 37, 23, torch.bfloat16)
    ref = attend(q.float(), [(k.float(), v.float()) for k, v in shared], own_k.float(), own_v.float(), lens, "torch")
    out = attend(q, shared, own_k, own_v, lens, impl)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_lowp_in_fp32_is_the_reference():
    q, shared, own_k, own_v, lens = _inputs(2, 7, 11, 13, torch.float32)
    a = attend(q, shared, own_k, own_v, lens, "lowp")
    torch.testing.assert_close(a, attend(q, shared, own_k, own_v, lens, "torch"), atol=1e-5, rtol=1e-5)


def test_auto_choice():
    native = ops.backend("cpu") == "native"
    bf = torch.zeros(1, 69, 6, 16, dtype=torch.bfloat16)  # 6 query heads over 2 KV heads: G = 3
    assert _auto(bf, 2) == "lowp"  # bf16 prefill: bf16 GEMMs
    assert _auto(bf[:, :4], 2) == ("ops" if native else "lowp")
    fp = bf.float()
    assert _auto(fp[:, :1], 2) == ("ops" if native else "flash")  # decode rows
    t = -(-ops.tiled_min_rows() // 3)  # tokens from which a KV head has the tiles' rows (48 AVX-512, 12 AVX2)
    assert _auto(fp[:, :t - 1], 2) == "flash"  # below the native tiles
    assert _auto(fp[:, :t], 2) == ("ops" if native else "flash")  # the register tiles


@pytest.mark.skipif(not ops.has_decode_step("cpu"), reason="the native decode ops are absent")
@pytest.mark.parametrize("T,P,S", [(2, 37, 23), (5, 600, 9), (15, 1100, 40)])
def test_rows_path_is_the_reference(T, P, S):
    """A few tokens of one session as T decode rows, token t's own KV ending at itself: the causal result."""
    q, shared, own_k, own_v, lens = _inputs(1, T, P, S, torch.float32, hq=9, hkv=3, d=64)
    assert lens is None and _rows_fit(q, shared, own_k, lens)
    out = attend(q, shared, own_k, own_v, None, "rows")
    ref = attend(q, shared, own_k, own_v, None, "torch")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    auto = attend(q, shared, own_k, own_v, None, "auto")
    if T * 3 < ops.tiled_min_rows():  # below the tiles "auto" takes this path
        torch.testing.assert_close(auto, out, atol=0, rtol=0)
    else:  # the tiles (AVX2 builds from 12 rows a KV head)
        torch.testing.assert_close(auto, ref, atol=2e-5, rtol=1e-4)


def test_rows_path_not_taken_where_it_does_not_fit():
    q, shared, own_k, own_v, lens = _inputs(2, 4, 37, 23, torch.float32)
    assert not _rows_fit(q, shared, own_k, lens)                 # two sessions
    assert not _rows_fit(q[:1, :1], shared, own_k[:1], None)     # one token: the decode path already
    assert not _rows_fit(q[:1], [], own_k[:1], None)             # no prefix
    assert not _rows_fit(q[:1].bfloat16(), shared, own_k[:1], None)
