"""Weights in exact GGUF blocks: packing is lossless or refused, de-quantisation is bit-exact on every path, and
lora_linear over blocks matches lora_linear_ref over the fp32 matrix."""
import pytest
import torch

from conftest import assert_close, backend_params
from duomem_fast import ops
from duomem_fast.kernels.reference import dequantize_blocks_ref, lora_linear_ref
from duomem_fast.model.blocks import pack_blocks
from duomem_fast.model.testing import snap_q4_1, snap_q8_0

SNAPS = {"q4_1": (snap_q4_1, 24), "q8_0": (snap_q8_0, 36)}


def gguf_like(N, K, fmt):
    """A random (N, K) matrix as a GGUF file of `fmt` de-quantises it; one block constant (d = 0)."""
    w = torch.randn(N, K) / K ** 0.5
    w[0, :32] = 0.25
    return SNAPS[fmt][0](w)


@pytest.mark.parametrize("fmt", SNAPS)
def test_pack_is_lossless(fmt):
    w = gguf_like(37, 96, fmt)
    blocks = pack_blocks(w)
    assert blocks is not None and blocks.dtype == torch.uint8 and blocks.shape == (37, 3, SNAPS[fmt][1])
    assert torch.equal(dequantize_blocks_ref(blocks), w)


def test_pack_refuses_what_is_not_exact():
    w = torch.randn(8, 64)
    assert pack_blocks(w) is None  # generic fp32 values
    near = snap_q4_1(w)
    assert pack_blocks(near) is not None
    near[3, 5] = torch.nextafter(near[3, 5], torch.tensor(9.0))  # one value one ulp off the grid
    assert pack_blocks(near) is None
    assert pack_blocks(torch.randn(8, 48)) is None  # K not a multiple of 32
    assert pack_blocks(snap_q4_1(w).bfloat16()) is None  # only fp32 matrices are packed


@pytest.mark.skipif(not ops.HAS_NATIVE, reason="duomem_fast._C not built")
@pytest.mark.parametrize("fmt", SNAPS)
def test_native_dequantize_is_bit_exact(fmt, use_backend):
    w = gguf_like(45, 160, fmt)
    use_backend("native")
    assert torch.equal(ops.dequantize_blocks(pack_blocks(w)), w)


@pytest.mark.skipif(not ops.HAS_NATIVE, reason="duomem_fast._C not built")
@pytest.mark.parametrize("fmt", SNAPS)
@pytest.mark.parametrize("M", [1, 3, 4, 5, 16, 19, 32, 33])
def test_identity_rows_read_back_the_weights(fmt, M, use_backend):
    """x = rows of the identity: every product is w·1 or w·0, so y holds W's columns exactly, in the GEMV (M <= 32;
    M <= 12 on AVX2 builds) and in the many-row paths (AMX, d·q + m·1 is the stored w; AVX2 register blocks; or
    widen-then-GEMM) alike."""
    w = gguf_like(37, 64, fmt)
    use_backend("native")
    y = ops.lora_linear(torch.eye(64)[:M], pack_blocks(w))
    assert torch.equal(y, w[:, :M].t())


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", SNAPS)
@pytest.mark.parametrize("M", [1, 3, 6, 19, 40])
@pytest.mark.parametrize("r", [1, 64])
def test_lora_linear_over_blocks(backend, fmt, M, r, use_backend):
    if backend == "triton" and (M, r) != (3, 1):
        pytest.skip("the interpreter is slow: one shape for the Triton path (it widens the blocks first)")
    K, N = 96, 37
    w = gguf_like(N, K, fmt)
    x = torch.randn(M, 2 * K)[:, ::2]  # non-contiguous
    a, b, bias = torch.randn(r, K) / K ** 0.5, torch.randn(N, r) / r ** 0.5, torch.randn(N)
    use_backend(backend)
    blocks = pack_blocks(w)
    assert_close(ops.lora_linear(x, blocks, a, b, 0.5, bias), lora_linear_ref(x, w, a, b, 0.5, bias), torch.float32)
    assert_close(ops.lora_linear(x, blocks), lora_linear_ref(x, w), torch.float32)
    xb = x.bfloat16()
    assert_close(ops.lora_linear(xb, blocks, a, b, 0.5), lora_linear_ref(xb, w, a, b, 0.5), torch.bfloat16)


@pytest.fixture
def block_gemm():
    """Choose the many-row path over blocks ('auto' or 'widen'); the default is restored after."""
    yield ops._C.set_block_gemm
    ops._C.set_block_gemm("auto")


@pytest.mark.skipif(not ops.HAS_NATIVE, reason="duomem_fast._C not built")
@pytest.mark.parametrize("mode", ["amx", "avx2", "widen"])
@pytest.mark.parametrize("fmt", SNAPS)
@pytest.mark.parametrize("M", [13, 33, 64, 77, 130])
@pytest.mark.parametrize("N", [151, 40])
def test_many_rows_over_blocks(mode, fmt, M, N, block_gemm, use_backend):
    """Many rows (an append, a prefill): AMX tiles over the blocks (x split exactly into three bf16 parts),
    fp32 register blocks over a few widened W rows (AVX2 builds, the LoRA expand as r more steps of each sum) or the
    matrix widened for oneDNN. Each sums fp32 products in fp32, in different orders, so each is held to the
    error bound of an fp32 dot product against the float64 product (x of every magnitude: a lost bit of the split
    would show), not to elementwise agreement with one order."""
    block_gemm("widen" if mode == "widen" else "auto")
    if ops._C.block_gemm() != mode:
        pytest.skip(f"this CPU or build takes the {ops._C.block_gemm()} path, not {mode}")
    use_backend("native")
    # N = 151: AMX's two full 64-row units and a partial one, the last 16-row tile partial; AVX2's three 48-row units
    # and one of 7 (a 6-row group and a 1-row one). N = 40: 6-row groups and a 4-row one. M: partial 16-row panels
    # (13: the fewest rows AVX2 builds give the register blocks; the others take the GEMV there).
    K, r = 160, 8
    w = gguf_like(N, K, fmt)
    x = torch.randn(2, M, K) * torch.logspace(-6, 6, K)  # 3-D; magnitudes far apart exercise the bf16 split
    a, b, bias = torch.randn(r, K) / K ** 0.5, torch.randn(N, r) / r ** 0.5, torch.randn(N)
    blocks = pack_blocks(w)
    def f64(x, w, a=None, b=None, s=0.0, bias=None):  # the product in float64, and its sum of |terms|
        y = x @ w.t() + (s * (x @ a.t()) @ b.t() if a is not None else 0) + (bias if bias is not None else 0)
        return y, x.abs() @ w.abs().t() + (s * (x.abs() @ a.abs().t()) @ b.abs().t() if a is not None else 0)

    for args in [(), (a, b, 0.5), (a, b, 0.5, bias)]:
        exact, bound = f64(x.double(), w.double(), *[v.double() if torch.is_tensor(v) else v for v in args])
        if len(args) == 4:
            bound = bound + bias.double().abs()
        y = ops.lora_linear(x, blocks, *args)
        assert y.dtype == torch.float32 and y.shape == exact.shape
        err = ((y.double() - exact).abs() / bound).max().item()
        assert err < 2e-6, f"error {err:.2e} of the sum of |products| (fp32 eps 6e-8)"
    xb = x[0].bfloat16()
    assert_close(ops.lora_linear(xb, blocks, a, b, 2.0), lora_linear_ref(xb, w, a, b, 2.0), torch.bfloat16)


@pytest.mark.skipif(not ops.HAS_NATIVE, reason="duomem_fast._C not built")
def test_block_gemm_mode_is_checked():
    with pytest.raises(RuntimeError, match="block GEMM mode must be 'auto' or 'widen', got 'fast'"):
        ops._C.set_block_gemm("fast")


@pytest.mark.skipif(not ops.HAS_NATIVE, reason="duomem_fast._C not built")
@pytest.mark.parametrize("M", [3, 19])
def test_multi_adapter_over_blocks(M, use_backend):
    K, N = 64, 40
    w = gguf_like(N, K, "q4_1")
    x, a, b = torch.randn(M, K), torch.randn(3, 8, K) / 8, torch.randn(3, N, 8) / 3
    ids, scales = torch.arange(M) % 4 - 1, torch.tensor([0.5, 2.0, 1.0])
    use_backend("native")
    assert_close(ops.lora_linear(x, pack_blocks(w), a, b, scales, adapter_ids=ids),
                 lora_linear_ref(x, w, a, b, scales, adapter_ids=ids), torch.float32)


@pytest.mark.parametrize("backend", ["reference", *backend_params()])
def test_bad_blocks_are_named(backend, use_backend):
    use_backend(backend)
    with pytest.raises(ValueError, match=r"uint8 weight must be GGUF blocks \(N, K/32, 24 or 36\)"):
        ops.lora_linear(torch.randn(2, 64), torch.zeros(4, 2, 20, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"x must be \(\.\.\., K=64\)"):
        ops.lora_linear(torch.randn(2, 96), torch.zeros(4, 2, 24, dtype=torch.uint8))
    with pytest.raises(ValueError, match="block weights must be uint8"):
        ops.dequantize_blocks(torch.zeros(4, 2, 20, dtype=torch.uint8))
