import pytest
import torch

# One intra-op thread for every test: results do not depend on it, and on a shared 2-core machine two spinning
# OpenMP threads per process made the engine tests 9x slower (221 s -> 25 s measured).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
