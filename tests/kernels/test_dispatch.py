"""The dispatcher: import never fails without the native build, it falls back to the references (and says so), and
forcing an unavailable backend is a ValueError."""
import subprocess
import sys

import pytest

from duomem_fast import ops

_NO_BUILD = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
sys.modules["duomem_fast._C"] = None  # as if built with DUOMEM_NO_NATIVE=1
import torch
from duomem_fast import ops
from duomem_fast.kernels.reference import lora_linear_ref
assert not ops.HAS_NATIVE and ops.backend("cpu") == "reference" and ops.cpu_isa() == "none"
x, w = torch.randn(3, 8), torch.randn(5, 8)
assert torch.equal(ops.lora_linear(x, w), lora_linear_ref(x, w))
try:
    ops.set_backend("native")
except ValueError as e:
    print("refused:", e)
"""


def test_import_and_fallback_without_native_build():
    out = subprocess.run([sys.executable, "-c", _NO_BUILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "not loaded" in out.stdout and "-> reference" in out.stdout and "refused:" in out.stdout, out.stdout


def test_unknown_backend_is_value_error():
    with pytest.raises(ValueError, match="unknown backend"):
        ops.set_backend("fast")


def test_auto_backend_per_device():
    assert ops.backend("cpu") == ("native" if ops.HAS_NATIVE else "reference")
    assert ops.backend("cuda") == ("triton" if ops.HAS_TRITON else "reference")


def _cpu_flags() -> set[str]:
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not ops.HAS_NATIVE, reason="duomem_fast._C not built")
def test_cpu_isa_names_what_the_build_runs_and_the_cpu_has():
    """setup.py builds for the machine it runs on: AVX-512 kernels where the CPU has AVX-512 (+BF16, +AMX in the
    name when compiled in, each a flag of this CPU), the AVX2 ones on an AVX2 CPU without it."""
    isa, flags = ops.cpu_isa(), _cpu_flags()
    assert isa in {"avx512", "avx512+bf16", "avx512+amx", "avx512+bf16+amx", "avx2", "portable"}, isa
    if not flags:
        pytest.skip("no /proc/cpuinfo flags here")
    need = {"avx512": "avx512f", "bf16": "avx512_bf16", "amx": "amx_tile", "avx2": "avx2"}
    assert all(need[part] in flags for part in isa.split("+") if part in need), (isa, sorted(flags))
    if "avx512f" not in flags and "avx2" in flags and "fma" in flags:
        assert isa == "avx2", f"an AVX2 CPU without AVX-512 runs the {isa} kernels"


@pytest.mark.skipif(not ops.HAS_NATIVE, reason="duomem_fast._C not built")
def test_cpu_fast_path_after_first_call_and_reset_by_set_backend():
    """The first CPU lora_linear resolves (and logs); later ones skip that. Forcing a backend undoes it."""
    import torch
    from duomem_fast.kernels.reference import lora_linear_ref
    x, w, a, b = torch.randn(3, 40), torch.randn(24, 40), torch.randn(4, 40), torch.randn(24, 4)
    try:
        ops.set_backend(None)
        assert not ops._NATIVE_CPU
        first = ops.lora_linear(x, w, a, b, 0.5)
        assert ops._NATIVE_CPU
        assert torch.equal(ops.lora_linear(x, w, a, b, 0.5), first)
        torch.testing.assert_close(first, lora_linear_ref(x, w, a, b, 0.5), atol=2e-5, rtol=2e-5)
        ops.set_backend("reference")
        assert not ops._NATIVE_CPU
        assert torch.equal(ops.lora_linear(x, w, a, b, 0.5), lora_linear_ref(x, w, a, b, 0.5))
        assert not ops._NATIVE_CPU
    finally:
        ops.set_backend(None)


@pytest.mark.skipif(not ops.HAS_NATIVE, reason="duomem_fast._C not built")
@pytest.mark.parametrize("bad", ["x_k", "lora_b_rows", "ids_count"])
def test_fast_path_keeps_value_errors(bad):
    """Bad shapes reaching the CPU fast path still raise the API edge's ValueError naming the value."""
    import torch
    x, w, a, b = torch.randn(3, 16), torch.randn(8, 16), torch.randn(2, 16), torch.randn(8, 2)
    ops.set_backend(None)
    ops.lora_linear(x, w, a, b)
    assert ops._NATIVE_CPU
    kwargs = dict(lora_a=a, lora_b=b)
    if bad == "x_k":
        x = torch.randn(3, 15)
    elif bad == "lora_b_rows":
        kwargs["lora_b"] = torch.randn(9, 2)
    else:
        kwargs.update(lora_a=a[None], lora_b=b[None], adapter_ids=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError):
        ops.lora_linear(x, w, **kwargs)


@pytest.mark.skipif(not ops.HAS_NATIVE, reason="duomem_fast._C not built")
def test_lora_linear_traces_without_graph_break():
    """Under torch.compile the fast path steps aside for torch.ops.duomem.lora_linear (fake registered): one graph."""
    import torch
    from duomem_fast.kernels.reference import lora_linear_ref
    x, w, a, b = torch.randn(2, 32), torch.randn(16, 32), torch.randn(4, 32), torch.randn(16, 4)
    ops.set_backend(None)
    ops.lora_linear(x, w, a, b, 0.5)  # resolved and logged eagerly first, as in the engine
    torch._dynamo.reset()
    fn = torch.compile(lambda t: ops.lora_linear(t, w, a, b, 0.5), backend="eager", fullgraph=True)
    torch.testing.assert_close(fn(x), lora_linear_ref(x, w, a, b, 0.5), atol=2e-5, rtol=2e-5)
