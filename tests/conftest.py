import pytest
from tiny import make_pair

ARCHES = ["llama", "qwen2"]


@pytest.fixture(params=ARCHES)
def tiny(request):
    """A tiny random (model, tokenizer) of each architecture, fixed seed."""
    return make_pair(request.param)
