import json

import pytest
from lit_fixtures import STEER_PROMPTS, build_tiny_decoder, write_sensitive_model
from tiny import make_pair

ARCHES = ["llama", "qwen2"]


@pytest.fixture(params=ARCHES)
def tiny(request):
    """A tiny random (model, tokenizer) of each architecture, fixed seed."""
    return make_pair(request.param)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """A sensitive tiny model, a decoder trained on it and a prompts file (steering tests)."""
    root = tmp_path_factory.mktemp("steer")
    model, decoder = build_tiny_decoder(root, write_sensitive_model)
    prompts = root / "prompts.json"
    prompts.write_text(json.dumps(STEER_PROMPTS))
    return {"model": str(model), "decoder": str(decoder), "prompts": str(prompts)}
