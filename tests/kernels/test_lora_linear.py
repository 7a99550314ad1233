"""lora_linear on every backend against lora_linear_ref: odd shapes, dtypes, multi-adapter with -1, strided views."""
import pytest
import torch

from conftest import assert_close, backend_params
from duomem_fast import ops
from duomem_fast.kernels.reference import lora_linear_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make(M, K, N, r, dtype, n_adapters=None, wdtype=None):
    """Inputs scaled so outputs are O(1): x ~ N(0,1), W ~ N(0, 1/K), A ~ N(0, 1/K), B ~ N(0, 1/r)."""
    lead = (n_adapters,) if n_adapters else ()
    x = torch.randn(M, K).to(dtype)
    w = (torch.randn(N, K) / K ** 0.5).to(wdtype or dtype)
    a = (torch.randn(*lead, r, K) / K ** 0.5).to(dtype)
    b = (torch.randn(*lead, N, r) / r ** 0.5).to(dtype)
    bias = torch.randn(N).to(dtype)
    return x, w, a, b, bias


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 3, 19])
@pytest.mark.parametrize("r", [1, 64])
def test_single_adapter(backend, dtype, M, r, use_backend):
    x, w, a, b, bias = make(M, 111, 37, r, dtype)
    use_backend(backend)
    assert_close(ops.lora_linear(x, w, a, b, 0.5, bias), lora_linear_ref(x, w, a, b, 0.5, bias), dtype)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [3, 19])
def test_multi_adapter_with_base_rows(backend, dtype, M, use_backend):
    x, w, a, b, bias = make(M, 111, 50, 8, dtype, n_adapters=3)
    ids = torch.arange(M) % 4 - 1  # -1, 0, 1, 2, -1, ...: base-only rows mixed in
    scales = torch.tensor([0.5, 2.0, 1.0])
    use_backend(backend)
    ours = ops.lora_linear(x, w, a, b, scales, bias, adapter_ids=ids)
    assert_close(ours, lora_linear_ref(x, w, a, b, scales, bias, ids), dtype)


@pytest.mark.parametrize("backend", backend_params())
def test_non_contiguous_and_3d(backend, use_backend):
    big = torch.randn(2, 5, 300)
    x = big[:, :, 7:118]  # (2, 5, 111), row stride 300
    w = (torch.randn(111, 40) / 11).t()  # (40, 111) transposed view: column-major weight
    a = (torch.randn(2, 16, 111) / 11)[:, ::2]  # (2, 8, 111), stride over ranks
    b = torch.randn(40, 8)[:, :]
    use_backend(backend)
    ours = ops.lora_linear(x, w, a[1], b, 0.25)
    assert_close(ours, lora_linear_ref(x, w, a[1], b, 0.25), torch.float32)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [4, 19])
def test_fp32_activations_16bit_weight(backend, wdtype, M, use_backend):
    """GEMV rows (M <= 16 natively) multiply fp32 x by the widened weights: fp32-exact. Past them, bf16 weights take
    bf16 GEMMs and x is rounded to bf16 on the way in (fp32 accumulation and output): bf16 tolerance."""
    x, w, a, b, bias = make(M, 111, 37, 16, torch.float32, wdtype=wdtype)
    use_backend(backend)
    rounded = wdtype == torch.bfloat16 and M > 16 and backend == "native"
    assert_close(ops.lora_linear(x, w, a, b, 1.0), lora_linear_ref(x, w, a, b, 1.0),
                 torch.bfloat16 if rounded else torch.float32)


@pytest.mark.parametrize("backend", backend_params())
def test_base_only(backend, use_backend):
    x, w, _, _, bias = make(19, 111, 37, 1, torch.float32)
    use_backend(backend)
    assert_close(ops.lora_linear(x, w, bias=bias), lora_linear_ref(x, w, bias=bias), torch.float32)


def test_fused_qkv_shapes_native(use_backend):
    """The engine's fused q/k/v (960 rows) with stacked A (3r, K) and block-diagonal B (N, 3r)."""
    if not ops.HAS_NATIVE:
        pytest.skip("duomem_fast._C not built")
    K, r = 576, 8
    x, w, a, _, _ = make(4, K, 960, 3 * r, torch.float32)
    b = torch.block_diag(*(torch.randn(n, r) / r ** 0.5 for n in (576, 192, 192)))
    use_backend("native")
    assert_close(ops.lora_linear(x, w, a, b, 2.0), lora_linear_ref(x, w, a, b, 2.0), torch.float32)


@pytest.mark.parametrize("bad", ["x_k", "lora_b", "ids", "stacked"])
def test_bad_input_raises_value_error(bad):
    x, w, a, b, bias = make(3, 16, 8, 2, torch.float32)
    kwargs = dict(lora_a=a, lora_b=b)
    if bad == "x_k":
        x = torch.randn(3, 15)
    elif bad == "lora_b":
        kwargs["lora_b"] = torch.randn(9, 2)
    elif bad == "ids":
        kwargs.update(lora_a=a[None], lora_b=b[None], adapter_ids=torch.zeros(2, dtype=torch.long))
    else:
        kwargs["adapter_ids"] = torch.zeros(3, dtype=torch.long)  # 2-D lora_a with ids
    with pytest.raises(ValueError):
        ops.lora_linear(x, w, **kwargs)


def test_native_opcheck():
    """Schema, fake (meta) implementation and autograd registration agree with the real kernel."""
    if not ops.HAS_NATIVE:
        pytest.skip("duomem_fast._C not built")
    x, w, a, b, bias = make(3, 111, 37, 4, torch.float32)
    torch.library.opcheck(torch.ops.duomem.lora_linear.default, (x, w, a, b, 0.5, None, bias, None),
                          test_utils=("test_schema", "test_faketensor"))


def test_auto_dispatch_matches_reference(use_backend):
    x, w, a, b, bias = make(3, 111, 37, 4, torch.float32)
    use_backend(None)
    auto = ops.lora_linear(x, w, a, b, 0.5, bias)
    use_backend("reference")
    assert_close(auto, ops.lora_linear(x, w, a, b, 0.5, bias), torch.float32)


def test_native_concurrent_callers_and_fork():
    """The native pool is shared: two Python threads calling at once, and a forked child, still get exact results."""
    if not ops.HAS_NATIVE:
        pytest.skip("duomem_fast._C not built")
    import multiprocessing as mp
    import threading
    cases = [make(M, 576, N, 8, torch.float32) for M, N in [(1, 576), (4, 1536), (3, 192)]]
    want = [lora_linear_ref(x, w, a, b, 0.5, bias) for x, w, a, b, bias in cases]
    bad = []

    def worker():
        for _ in range(50):
            for (x, w, a, b, bias), y in zip(cases, want):
                got = torch.ops.duomem.lora_linear(x, w, a, b, 0.5, None, bias, None)
                if not torch.allclose(got, y, atol=1e-4, rtol=1e-4):
                    bad.append((x.shape, w.shape))
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad, bad[:3]
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply(_fork_check, (cases[1], want[1]), ) is True


def _fork_check(case, want):
    x, w, a, b, bias = case
    return bool(torch.allclose(torch.ops.duomem.lora_linear(x, w, a, b, 0.5, None, bias, None), want, atol=1e-4))
