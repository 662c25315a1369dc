import json

import pytest
from lit_fixtures import STEER_PROMPTS, write_sensitive_model, write_tiny_data
from tiny import make_pair

from latentqa.configs import config_from_dict
from latentqa.train.config import TrainConfig
from latentqa.train.trainer import train

ARCHES = ["llama", "qwen2"]


@pytest.fixture(params=ARCHES)
def tiny(request):
    """A tiny random (model, tokenizer) of each architecture, fixed seed."""
    return make_pair(request.param)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """A sensitive tiny model, a decoder trained on it and a prompts file (steering tests)."""
    root = tmp_path_factory.mktemp("steer")
    model = write_sensitive_model(root / "model")
    values = dict(
        data=str(write_tiny_data(root / "data")),
        out=str(root / "decoder"),
        target=str(model),
        steps=3,
        batch_size=4,
        lr=1e-2,
        warmup_steps=1,
        eval_every=0,
        save_every=0,
        eval_examples=4,
        dtype="float32",
        device="cpu",
    )
    train(config_from_dict(TrainConfig, values), progress=False)
    prompts = root / "prompts.json"
    prompts.write_text(json.dumps(STEER_PROMPTS))
    return {"model": str(model), "decoder": str(root / "decoder"), "prompts": str(prompts)}
