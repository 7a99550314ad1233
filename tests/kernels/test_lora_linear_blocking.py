"""The C++ lora_linear's register-blocked GEMV path (M <= 16) at its edges, against lora_linear_ref.

The kernel takes 8 W rows at a time (then 4, then singles), x rows 4 at a time (then a 3/2/1 remainder), prefetches
the next W block unless the weights were read recently (csrc/weight_reuse.h), splits K > 1024 into ranges for M >= 4
(partial sums added into y, LoRA and bias on the last range), and runs bf16 weights with bf16 x on vdpbf16ps: each of
these has its own code.
"""
import pytest
import torch

from conftest import assert_close
from duomem_fast import ops
from duomem_fast.kernels.reference import lora_linear_ref
from test_lora_linear import make  # same input scaling as the main lora_linear tests

pytestmark = pytest.mark.skipif(not ops.HAS_NATIVE, reason="duomem_fast._C not built")


@pytest.fixture(autouse=True)
def _native(use_backend):
    use_backend("native")


# N = 8 * 4 + 4 + 1 (every row-block size); N = 3 (singles only); M 2..16 (4-row x blocks and every remainder)
@pytest.mark.parametrize("M", [2, 4, 5, 6, 7, 8, 15, 16])
@pytest.mark.parametrize("N", [37, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_and_column_blocks(M, N, dtype):
    x, w, a, b, bias = make(M, 111, N, 16, dtype)
    assert_close(ops.lora_linear(x, w, a, b, 0.5, bias), lora_linear_ref(x, w, a, b, 0.5, bias), dtype)


# long K with a tail (K % 16, K % 32 != 0): K ranges for M >= 4, one pass for M = 1
@pytest.mark.parametrize("M", [1, 4, 8, 13])
@pytest.mark.parametrize("K", [1111, 4099])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_k(M, K, dtype):
    x, w, a, b, bias = make(M, K, 45, 8, dtype)
    assert_close(ops.lora_linear(x, w, a, b, 1.5, bias), lora_linear_ref(x, w, a, b, 1.5, bias), dtype)


@pytest.mark.parametrize("r", [1, 17, 64])
def test_rank_tails(r):
    """The expand runs as r extra steps of the W block's dot products: r not a multiple of 16 uses a masked step."""
    x, w, a, b, bias = make(4, 111, 37, r, torch.float32)
    assert_close(ops.lora_linear(x, w, a, b, 2.0, bias), lora_linear_ref(x, w, a, b, 2.0, bias), torch.float32)


@pytest.mark.parametrize("ids", [[1, 1, 1, 1, 1, 1, 1, 1], [0, 1, 0, 1, -1, -1, -1, -1], [-1, 2, 2, 2, 2, 0]])
def test_multi_adapter_blocks(ids):
    """One adapter for a whole 4-row block (B loaded once), mixed ids in a block, and all-base blocks."""
    ids = torch.tensor(ids)
    x, w, a, b, bias = make(len(ids), 111, 37, 8, torch.float32, n_adapters=3)
    scales = torch.tensor([0.5, 2.0, 1.0])
    ours = ops.lora_linear(x, w, a, b, scales, bias, adapter_ids=ids)
    assert_close(ours, lora_linear_ref(x, w, a, b, scales, bias, ids), torch.float32)


@pytest.mark.parametrize("M", [1, 4, 7])
def test_bf16_weight_paths(M):
    """bf16 W with fp32 x (widened W, fp32 FMAs, fp32 tolerance) and with bf16 x (vdpbf16ps on exact bf16 inputs)."""
    x, w, a, b, bias = make(M, 333, 37, 16, torch.float32, wdtype=torch.bfloat16)
    assert_close(ops.lora_linear(x, w, a, b, 1.0, bias), lora_linear_ref(x, w, a, b, 1.0, bias), torch.float32)
    xb = x.bfloat16()
    assert_close(ops.lora_linear(xb, w, a, b, 1.0), lora_linear_ref(xb, w, a, b, 1.0), torch.bfloat16)


@pytest.fixture
def prefetch_mode():
    yield ops._C.set_lora_prefetch
    ops._C.set_lora_prefetch("auto")


@pytest.mark.parametrize("M", [1, 4, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefetch_modes_give_identical_results(M, dtype, prefetch_mode):
    """The next-block prefetch is a hint only: every mode gives the same bits (N = 45 has 8-, 4- and 1-row blocks)."""
    x, w, a, b, bias = make(M, 333, 45, 16, dtype)
    outs = []
    for mode in ("always", "never", "auto"):
        prefetch_mode(mode)
        outs.append(ops.lora_linear(x, w, a, b, 0.5, bias))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert_close(outs[0], lora_linear_ref(x, w, a, b, 0.5, bias), dtype)


def test_prefetch_auto_follows_reuse_distance(prefetch_mode):
    """auto: a weight read again with little weight traffic since is taken as cached (no prefetch); one first seen,
    or read again only after more than the budget (half the LLC) of other weights, is prefetched."""
    budget = ops._C.lora_prefetch_budget()
    if budget <= 0:
        pytest.skip("last-level cache size unknown: auto always prefetches")
    prefetch_mode("auto")
    x, w, a, b, _ = make(1, 256, 64, 4, torch.float32)

    def prefetched(weight, lora_a=None, lora_b=None) -> int:
        calls, pf = ops._C.lora_prefetch_counts()
        ops.lora_linear(x, weight, lora_a, lora_b)
        calls2, pf2 = ops._C.lora_prefetch_counts()
        assert calls2 == calls + 1
        return pf2 - pf

    others = [torch.randn(1024, 256) for _ in range(budget // (1024 * 256 * 4) + 1)]  # 1 MiB each, > budget in all
    for o in others:      # traffic first: w's address may be an earlier test's freed tensor, already "seen"
        prefetched(o)
    assert prefetched(w, a, b) == 1  # not read within the budget: prefetched
    assert prefetched(w, a, b) == 0  # read just before
    assert prefetched(w) == 0  # the same W without its adapter: still the same cached W
    for o in others:
        prefetched(o)
    assert prefetched(w) == 1  # evicted by the traffic since
    assert prefetched(others[-1]) == 0  # the latest one is still cached


@pytest.fixture
def single_row_stream():
    yield ops._C.set_lora_single_row_stream
    ops._C.set_lora_single_row_stream(True)


# N = 37: two 16-row groups and a 5-row remainder; K with a masked tail, a multiple of 64, and long
@pytest.mark.parametrize("K", [111, 576, 4099])
@pytest.mark.parametrize("r", [1, 17, 64])
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16, torch.float16])
def test_single_row_stream_and_blocks(K, r, wdtype, single_row_stream):
    """M=1 streams W row after row (vec.h stream_rows); switched off it takes the 8-row blocks. Both match the
    reference, with the LoRA expand and the bias, and on a W whose rows are strided (a column slice)."""
    x, w, a, b, bias = make(1, K, 37, r, torch.float32, wdtype=wdtype)
    wide = torch.cat([w, torch.zeros(37, 5, dtype=wdtype)], dim=1)[:, :K]  # row stride K + 5
    assert wide.stride(0) == K + 5
    ref = lora_linear_ref(x, w, a, b, 0.5, bias)
    for on in (True, False):
        single_row_stream(on)
        assert_close(ops.lora_linear(x, w, a, b, 0.5, bias), ref, torch.float32)
        assert_close(ops.lora_linear(x, wide, a, b, 0.5, bias), ref, torch.float32)
        assert_close(ops.lora_linear(x, w, bias=bias), lora_linear_ref(x, w, bias=bias), torch.float32)


@pytest.mark.parametrize("ids", [[-1], [1]])
def test_single_row_stream_multi_adapter(ids, single_row_stream):
    """One row with its adapter id: -1 is the base only, 1 takes the second adapter's B rows."""
    x, w, a, b, bias = make(1, 111, 37, 8, torch.float32, n_adapters=3)
    scales, ids = torch.tensor([0.5, 2.0, 1.0]), torch.tensor(ids)
    ref = lora_linear_ref(x, w, a, b, scales, bias, ids)
    for on in (True, False):
        single_row_stream(on)
        assert_close(ops.lora_linear(x, w, a, b, scales, bias, adapter_ids=ids), ref, torch.float32)


# K=111 and 576: 2-4 x rows stream W row after row; K=4099: x no longer fits L1 beside the stream: the 8-row
# blocks, or on AVX2 builds the same streams in K slices (slice_rows)
@pytest.mark.parametrize("M", [2, 3, 4])
@pytest.mark.parametrize("K", [111, 576, 4099])
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
def test_few_rows_stream_and_blocks(M, K, wdtype):
    """2-4 rows (a decode step of a few sessions) match the reference with the expand and the bias, on a contiguous
    and on a row-strided W, and do not depend on whether W was just read (the kernel is chosen by shape only)."""
    x, w, a, b, bias = make(M, K, 37, 17, torch.float32, wdtype=wdtype)
    wide = torch.cat([w, torch.zeros(37, 5, dtype=wdtype)], dim=1)[:, :K]
    ref = lora_linear_ref(x, w, a, b, 0.5, bias)
    first = ops.lora_linear(x, w, a, b, 0.5, bias)
    assert_close(first, ref, torch.float32)
    assert torch.equal(ops.lora_linear(x, w, a, b, 0.5, bias), first)  # W now cached: same kernel, same sums
    assert_close(ops.lora_linear(x, wide, a, b, 0.5, bias), ref, torch.float32)


@pytest.mark.parametrize("M", [1, 2, 5, 16, 17, 60])
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
def test_b_continuing_w_rows(M, wdtype):
    """W and B as the column slices of one (N, K + r) tensor (lora.py extend_lora_rows): the kernel runs one GEMV or
    GEMM over [x | s·x Aᵀ] and [W | B]; a B one column further on (not adjacent) takes the ordinary path."""
    x, w, a, b, bias = make(M, 111, 37, 16, torch.float32, wdtype=wdtype)
    ref = lora_linear_ref(x, w, a, b, 0.5, bias)
    joined = torch.cat([w, b.to(wdtype)], dim=1)
    gap = torch.cat([w, torch.zeros(37, 1, dtype=wdtype), b.to(wdtype)], dim=1)
    for ext, wv, bv in ((joined, joined[:, :111], joined[:, 111:]), (gap, gap[:, :111], gap[:, 112:])):
        tol = torch.float32 if wdtype == torch.float32 else torch.bfloat16  # bf16 B rounds the expand
        assert_close(ops.lora_linear(x, wv, a, bv.to(torch.float32) if ext is gap else bv, 0.5, bias), ref, tol)


@pytest.mark.parametrize("K", [111, 576, 1536])
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
def test_one_row_stream_group_same_bits(K, wdtype):
    """One x row streams 1 or 4 W rows side by side (csrc/weight_reuse.h picks by CPU and row length): the choice
    moves memory traffic only, so both give the same bits (the sums' adds are fixed in order: -ffast-math
    reassociated them per copy)."""
    from duomem_fast.ops import _C

    x, w, a, b, bias = make(1, K, 37, 17, torch.float32, wdtype=wdtype)
    assert _C.stream_row_group(K * w.element_size()) in (1, 4)
    try:
        out = {}
        for group in (1, 4):
            _C.set_stream_row_group(group)
            out[group] = ops.lora_linear(x, w, a, b, 0.5, bias)
    finally:
        _C.set_stream_row_group(0)
    assert torch.equal(out[1], out[4])
    assert_close(out[1], lora_linear_ref(x, w, a, b, 0.5, bias), torch.float32)
    with pytest.raises(RuntimeError, match="must be 1 or 4"):
        _C.set_stream_row_group(2)


@pytest.mark.parametrize("K", [111, 576])
def test_stream_look_ahead_same_bits(K):
    """The row streams' software look-ahead (into the next group's rows past a row's end) moves prefetches only:
    any look-ahead, with 1 or 4 rows side by side, gives the same bits as no prefetch at all."""
    from duomem_fast.ops import _C

    x, w, a, b, bias = make(1, K, 41, 16, torch.float32)
    out = []
    try:
        _C.set_lora_prefetch("never")
        out.append(ops.lora_linear(x, w, a, b, 0.5, bias))
        _C.set_lora_prefetch("always")
        for g in (1, 4):
            for ahead in (0, 64, 1024, 8192):
                _C.set_stream_row_group(g)
                _C.set_stream_ahead(ahead)
                out.append(ops.lora_linear(x, w, a, b, 0.5, bias))
    finally:
        _C.set_stream_row_group(0)
        _C.set_stream_ahead(0)
        _C.set_lora_prefetch("auto")
    assert all(torch.equal(out[0], o) for o in out[1:])
    with pytest.raises(RuntimeError, match="look-ahead must be 0"):
        _C.set_stream_ahead(-1)
