import pytest
import torch

from duomem_fast.model.testing import ARCHS, make_tiny_model

# One intra-op thread for every test: results do not depend on it, and on a shared 2-core machine two spinning
# OpenMP threads per process made the engine tests 9x slower (221 s -> 25 s measured).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """One tiny random model directory per architecture."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: make_tiny_model(root / arch, arch, seed=i) for i, arch in enumerate(ARCHS)}
