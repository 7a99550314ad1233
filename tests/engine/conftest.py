import pytest

from duomem_fast.model.testing import ARCHS, make_tiny_model


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """One tiny random model directory per architecture."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: make_tiny_model(root / arch, arch, seed=i) for i, arch in enumerate(ARCHS)}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the CI machine is small and shared; OpenMP spinning on a busy core costs 10x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
