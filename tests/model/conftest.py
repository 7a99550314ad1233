import pytest

from duomem_fast.model.testing import ARCHS, make_tiny_model


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """One tiny random model directory per architecture."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: make_tiny_model(root / arch, arch, seed=i) for i, arch in enumerate(ARCHS)}
