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
assert not ops.HAS_NATIVE and ops.backend("cpu") == "reference"
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
