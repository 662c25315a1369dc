"""``--init-from``: a run that starts from a trained decoder's adapter, projector and
standardization, and refuses one trained with other read options."""

from __future__ import annotations

import pytest
import torch
from lit_fixtures import tiny_projector_config, write_tiny_data, write_tiny_model
from safetensors.torch import load_file

import latentqa.train.trainer as trainer
from latentqa.decoder.folder import DecoderSpec
from latentqa.decoder.projector import Projector
from latentqa.errors import LatentQAError
from latentqa.train.prepare import config_fingerprint


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("init-from")
    return write_tiny_model(root / "model"), write_tiny_data(root / "data")


def config(workspace, out, **overrides):
    return tiny_projector_config(workspace, out, **overrides)


@pytest.fixture(scope="module")
def first(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("first") / "decoder"
    trainer.train(config(workspace, out), progress=False)
    return out


def test_the_second_phase_starts_from_the_first_decoders_weights(
    workspace, first, tmp_path, monkeypatch
):
    start = trainer._start
    seen = {}

    def record(*args, **kwargs):
        run = start(*args, **kwargs)
        seen["lora"] = {
            name: p.detach().clone()
            for name, p in run.decoder.named_parameters()
            if p.requires_grad
        }
        seen["projector"] = {k: v.clone() for k, v in run.projector.state_dict().items()}
        seen["stats"], seen["step"] = run.stats, run.step
        return run

    monkeypatch.setattr(trainer, "_start", record)
    second = tmp_path / "second"
    trainer.train(config(workspace, second, init_from=str(first)), progress=False)
    saved = load_file(first / "adapter_model.safetensors")
    assert saved and len(saved) == len(seen["lora"])
    for key, tensor in saved.items():  # peft drops the adapter name when it saves
        stem = key.removesuffix(".weight")
        (match,) = [v for k, v in seen["lora"].items() if k.startswith(stem + ".")]
        assert torch.equal(match, tensor.to(match.dtype)), key
    projector = Projector.load(first)
    assert torch.equal(seen["projector"]["weight"], projector.weight)
    spec, spec2 = DecoderSpec.load(first), DecoderSpec.load(second)
    assert seen["stats"] == (spec.vector_mean, spec.vector_std) and seen["step"] == 0
    assert (spec2.vector_mean, spec2.vector_std) == (spec.vector_mean, spec.vector_std)
    # It trained on: the second decoder is not the first one's copy.
    assert not torch.equal(Projector.load(second).weight, projector.weight)


def test_a_fresh_start_and_an_init_from_start_differ(workspace, first, tmp_path):
    fresh = config(workspace, tmp_path / "a")
    assert config_fingerprint(fresh) != config_fingerprint(
        config(workspace, tmp_path / "a", init_from=str(first))
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"read_layers": [1]}, "read_layers"),
        ({"read_pool": "mean+last"}, "read_pool"),
        ({"lora_r": 4}, "lora_r"),
        ({"standardize": False}, "standardize"),
    ],
)
def test_a_decoder_with_other_read_options_is_refused(
    workspace, first, tmp_path, overrides, message
):
    run = config(workspace, tmp_path / "x", init_from=str(first), **overrides)
    with pytest.raises(LatentQAError, match=f"--init-from: .*{message}"):
        trainer.train(run, progress=False)


def test_a_folder_that_is_no_decoder_fails_before_the_load(workspace, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatentQAError, match="not a latentqa decoder folder"):
        trainer.train(
            config(workspace, tmp_path / "x", init_from=str(tmp_path / "empty")), progress=False
        )
    with pytest.raises(LatentQAError, match="init_from must name"):
        config(workspace, tmp_path / "x", init_from=" ")
