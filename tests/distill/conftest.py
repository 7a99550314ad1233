import pytest

from duomem_fast.model.testing import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    # the agent's system prompt alone is ~900 tokens with the tiny 384-token BPE: room for whole episodes
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama", max_position_embeddings=4096)
