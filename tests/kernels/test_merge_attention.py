"""merge_attention: two partial attentions over disjoint keys merge into the attention over all keys."""
import pytest
import torch

from conftest import assert_close, backend_params
from duomem_fast import ops
from duomem_fast.kernels.reference import merge_attention_ref, prefix_attention_ref


def halves(dtype, B=3, T=2, H=4, D=16, L=19, cut=7):
    q = torch.randn(B, T, H, D).to(dtype)
    k, v = (torch.randn(L, H, D).to(dtype) for _ in range(2))
    a = prefix_attention_ref(q, k[:cut], v[:cut], return_lse=True)
    b = prefix_attention_ref(q, k[cut:], v[cut:], return_lse=True)
    return a, b, prefix_attention_ref(q, k, v, return_lse=True)


@pytest.mark.parametrize("backend", ["reference", *backend_params()])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_merge_equals_full(backend, dtype, use_backend):
    (oa, la), (ob, lb), (o_full, l_full) = halves(dtype)
    use_backend(backend)
    o, lse = ops.merge_attention(oa, la, ob, lb)
    assert_close(o, o_full, dtype)
    torch.testing.assert_close(lse, l_full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["reference", *backend_params()])
def test_empty_side_contributes_nothing(backend, use_backend):
    (oa, la), _, _ = halves(torch.float32)
    empty_o, empty_l = torch.zeros_like(oa), torch.full_like(la, float("-inf"))
    use_backend(backend)
    o, lse = ops.merge_attention(oa, la, empty_o, empty_l)
    assert_close(o, oa, torch.float32)
    torch.testing.assert_close(lse, la)
    o2, lse2 = ops.merge_attention(empty_o, empty_l, empty_o, empty_l)  # both empty: zeros, -inf, no NaN
    assert not o2.isnan().any() and (lse2 == float("-inf")).all()


def test_shape_mismatch_raises_value_error():
    (oa, la), (ob, lb), _ = halves(torch.float32)
    with pytest.raises(ValueError):
        ops.merge_attention(oa, la, ob[:1], lb[:1])


def test_native_opcheck():
    if not ops.HAS_NATIVE:
        pytest.skip("duomem_fast._C not built")
    (oa, la), (ob, lb), _ = halves(torch.float32)
    torch.library.opcheck(torch.ops.duomem.merge_attention.default, (oa, la, ob, lb),
                          test_utils=("test_schema", "test_faketensor"))
