"""Kernel tests: every backend against kernels/reference.py. Without a GPU the Triton kernels run under the
interpreter, which must be switched on before triton decorates them (hence at import time, before any test module)."""
import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_TRITON = importlib.util.find_spec("triton") is not None

# Per-dtype tolerance table: |ours - ref| <= atol + rtol·|ref|, outputs of magnitude ~1. The reference computes in fp32
# and rounds once to the output dtype; a kernel that also accumulates in fp32 differs by about one rounding step.
TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


def assert_close(ours: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert ours.dtype == ref.dtype, (ours.dtype, ref.dtype)
    torch.testing.assert_close(ours.float(), ref.float(), **TOL[dtype])


def backend_params() -> list:
    """The non-reference backends, skipped visibly when absent."""
    from duomem_fast import ops
    return [
        pytest.param("native", marks=pytest.mark.skipif(not ops.HAS_NATIVE, reason="duomem_fast._C not built")),
        pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")),
    ]


@pytest.fixture
def use_backend(request):
    """Force duomem_fast.ops onto one backend for the test, restore automatic choice after."""
    from duomem_fast import ops

    def _use(name):
        ops.set_backend(name)
    yield _use
    ops.set_backend(None)
