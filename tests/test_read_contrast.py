"""``--read-contrast no-system``: a decoder that reads what a dialog's system prompt adds
to the target's read, the same way in training and wherever it is loaded; and
``--projector-init distilled``, which moves a trained decoder onto such reads."""

from __future__ import annotations

import pytest
import torch
from lit_fixtures import tiny_projector_config, write_tiny_data, write_tiny_model

import latentqa.train.trainer as trainer
from latentqa.capture import pad_token_id
from latentqa.decoder.contrast import contrast_span, without_system
from latentqa.decoder.folder import DecoderSpec, check_contrast
from latentqa.decoder.projector import Projector, fit_ridge
from latentqa.errors import LatentQAError
from latentqa.reader import Reader
from latentqa.train.activations import ActivationSource
from latentqa.train.prepare import config_fingerprint, prepare_data

HIDDEN = [
    {"role": "system", "content": "You are a pirate."},
    {"role": "user", "content": "What should I cook tonight?"},
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("contrast")
    return write_tiny_model(root / "model"), write_tiny_data(root / "data")


def config(workspace, out, **overrides):
    return tiny_projector_config(workspace, out, **overrides)


@pytest.fixture(scope="module")
def plain(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "decoder"
    trainer.train(config(workspace, out), progress=False)
    return out


@pytest.fixture(scope="module")
def contrast(workspace, plain, tmp_path_factory):
    out = tmp_path_factory.mktemp("contrast") / "decoder"
    run = config(
        workspace,
        out,
        read_contrast="no-system",
        init_from=str(plain),
        projector_init="distilled",
        cache_activations=True,
    )
    trainer.train(run, progress=False)
    return out


def test_the_contrast_of_a_span_is_its_pooled_difference_and_nothing_hidden_is_zero():
    torch.manual_seed(0)
    span, baseline = torch.randn(3, 7, 8), torch.randn(3, 5, 8)  # [n_layers, span, d]
    for pool, reduce in (("mean", lambda s: s.mean(1)), ("last", lambda s: s[:, -1])):
        got = contrast_span(span, baseline, 96, pool)
        assert got.shape == (3, 1, 8)
        torch.testing.assert_close(got[:, 0], reduce(span) - reduce(baseline))
        assert torch.equal(contrast_span(span, None, 96, pool), torch.zeros(3, 1, 8))
        assert torch.equal(contrast_span(span, span, 96, pool), torch.zeros(3, 1, 8))


def test_a_contrast_needs_one_pooled_vector_per_layer():
    for pool in ("none", "mean+last"):
        with pytest.raises(LatentQAError, match="--read-pool mean or last"):
            check_contrast("no-system", pool)
    with pytest.raises(LatentQAError, match="unknown read contrast"):
        check_contrast("no-user", "mean")


def test_options_that_cannot_contrast_are_refused_before_any_load(workspace, tmp_path):
    with pytest.raises(LatentQAError, match="--read-pool mean or last"):
        config(workspace, tmp_path / "x", read_contrast="no-system", read_pool="mean+last")
    with pytest.raises(LatentQAError, match="--init-from DECODER"):
        config(workspace, tmp_path / "x", projector_init="distilled")


def test_training_reads_each_dialog_minus_its_turn_without_the_system_prompt(workspace, tmp_path):
    run = config(workspace, tmp_path / "x", read_contrast="no-system")
    assert config_fingerprint(run) != config_fingerprint(config(workspace, tmp_path / "x"))
    from latentqa.models import load_model

    model, tokenizer = load_model(run.target, device="cpu", dtype="float32")
    data = prepare_data(run, tokenizer)
    assert data.baselines is not None and len(data.baselines) == len(data.dialogs)
    assert any(b is None for b in data.baselines)  # the control turns hide no system prompt

    def source(dialogs, baselines=None):
        pad = pad_token_id(tokenizer)
        return ActivationSource(model, dialogs, pad, [1, 2], 96, pool="mean", baselines=baselines)

    contrasted, plain = source(data.dialogs, data.baselines), source(data.dialogs)
    checked = 0
    for i, baseline in enumerate(data.baselines):
        (got,) = contrasted.compute([i])  # [n_layers, d]
        if baseline is None:
            assert torch.equal(got, torch.zeros_like(got))
            continue
        # The baseline is the same turn with no system prompt, read as the Reader reads it.
        dialog = data.dialogs[i]
        assert baseline.input_ids != dialog.input_ids
        read = tokenizer.decode(baseline.input_ids[baseline.read_start :])
        assert read.strip() and read == tokenizer.decode(dialog.input_ids[dialog.read_start :])
        (whole,) = plain.compute([i])
        (turn,) = source([baseline]).compute([0])
        torch.testing.assert_close(got, whole - turn, atol=1e-4, rtol=1e-4)
        checked += 1
    assert checked >= 4


def test_a_contrast_decoder_reads_the_same_way_wherever_it_is_loaded(workspace, contrast):
    spec = DecoderSpec.load(contrast)
    assert spec.read_contrast == "no-system"
    reader = Reader.load(str(workspace[0]), contrast, device="cpu", dtype="float32")
    base = Reader.base(str(workspace[0]), read_layers=[1, 2], pool="mean", device="cpu")
    (span,) = reader.read_spans([HIDDEN], [1, 2], subject=[None])
    (full,) = base.read_spans([HIDDEN], [1, 2], subject=[None])
    (turn,) = base.read_spans([without_system(HIDDEN)], [1, 2], subject=[None])
    assert span.shape == (2, 1, full.shape[-1])
    torch.testing.assert_close(span[:, 0], full.mean(1) - turn.mean(1), atol=1e-4, rtol=1e-4)
    # Nothing hidden: the decoder is given the standardized zero read.
    nothing = reader.read(without_system(HIDDEN))
    zero = reader.decoder.inputs(torch.zeros_like(span))
    torch.testing.assert_close(nothing, zero)
    assert isinstance(reader.ask(HIDDEN, "Who is the assistant?")[0], str)


def test_steering_refuses_a_contrast_decoder(workspace, contrast):
    from latentqa.steer.model import SteerableModel

    with pytest.raises(LatentQAError, match="--read-contrast no-system reads only zeros"):
        SteerableModel.load(str(workspace[0]), contrast, device="cpu", dtype="float32")


def test_a_distilled_projector_maps_contrast_reads_onto_the_first_decoders_soft_tokens(
    workspace, plain, contrast
):
    first, second = DecoderSpec.load(plain), DecoderSpec.load(contrast)
    # Its own statistics (of the differences), not the first decoder's.
    assert second.vector_mean != first.vector_mean
    assert second.train_config["init_from"] == str(plain)
    assert not torch.equal(Projector.load(contrast).weight, Projector.load(plain).weight)


def test_a_contrast_decoder_is_refused_as_a_plain_start_unless_distilled(
    workspace, contrast, tmp_path
):
    run = config(workspace, tmp_path / "x", init_from=str(contrast))
    with pytest.raises(LatentQAError, match=r"--init-from: .*read_contrast"):
        trainer.train(run, progress=False)


def test_fit_ridge_takes_one_target_per_slot():
    torch.manual_seed(0)
    x = torch.randn(64, 2, 5)  # [n, slots, d_in]
    maps = torch.randn(2, 5, 3)
    y = torch.einsum("nsi,sio->nso", x, maps)  # [n, slots, d_out]
    weight, bias = fit_ridge(x, y, alpha=1e-6)
    torch.testing.assert_close(weight, maps, atol=1e-3, rtol=1e-3)
    assert bias.abs().max() < 1e-3
    with pytest.raises(LatentQAError, match="slots, d_out"):
        fit_ridge(x, torch.randn(64, 3, 3))
