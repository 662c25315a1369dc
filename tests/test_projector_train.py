"""A projector in front of the decoder: trained, saved, resumed, fitted, loaded and read."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from lit_fixtures import (
    DIALOG,
    QUESTIONS,
    tiny_run_reads,
    tiny_train_config,
    write_tiny_data,
    write_tiny_model,
)
from safetensors.torch import load_file

import latentqa.train.trainer as trainer
from latentqa.decoder.folder import SPEC_FILE, DecoderSpec
from latentqa.decoder.projector import (
    PROJECTOR_FILE,
    Projector,
    fit_ridge,
    mean_token_embeddings,
    text_soft_tokens,
    token_norm,
)
from latentqa.errors import LatentQAError
from latentqa.evals.system_prompt import (
    METHODS,
    OPT_IN_METHODS,
    build_items,
    evaluate_system_prompt,
)
from latentqa.evals.system_prompt_scoring import ConditionReads
from latentqa.reader import Reader
from latentqa.train.checkpoint import PROJECTOR_KEY
from latentqa.train.config import TrainConfig
from latentqa.train.prepare import _FINGERPRINT_KEYS, config_fingerprint
from latentqa.train.projector_fit import build_projector, fit_examples
from latentqa.typed_config import config_to_dict


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("projector")
    return write_tiny_model(root / "model"), write_tiny_data(root / "data")


def config(workspace, out, **overrides) -> TrainConfig:
    defaults = dict(
        steps=4,
        batch_size=4,
        lr=1e-2,
        warmup_steps=1,
        eval_every=0,
        save_every=2,
        eval_examples=8,
        device="cpu",
        projector="linear",
        read_pool="mean+last",
        read_layers=[1, 2],
    )
    return tiny_train_config(workspace, out, **{**defaults, **overrides})


@pytest.fixture(scope="module")
def trained(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "decoder"
    trainer.train(config(workspace, out, standardize=True, cache_activations=True), progress=False)
    return out


def test_a_projector_run_writes_its_decoder_and_the_reader_reads_through_it(workspace, trained):
    assert (trained / PROJECTOR_FILE).is_file() and (trained / SPEC_FILE).is_file()
    spec = DecoderSpec.load(trained)
    assert (spec.projector, spec.mode, spec.pool, spec.read_layers) == (
        "linear",
        "embed",
        "mean+last",
        [1, 2],
    )
    assert spec.n_slots == 4 and spec.vector_mean is not None
    reader = Reader.load(str(workspace[0]), str(trained), device="cpu")
    saved = Projector.load(trained)
    assert torch.equal(reader.decoder.projector.weight, saved.weight)
    vectors = reader.read(DIALOG)  # projected: one soft token per (layer, pooling)
    assert vectors.shape == (4, 32)
    answers = reader.ask(DIALOG, QUESTIONS, evidence=True, max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a.text, str) for a in answers)
    # The decoder's answers depend on what it reads: real and zeroed vectors differ.
    assert all(a.logprob_real != a.logprob_zeroed for a in answers)
    with pytest.raises(LatentQAError, match="maps reads of layers"):
        reader.read(DIALOG, layer=0)


def test_the_projector_is_frozen_but_passes_gradients_to_the_read(workspace, trained):
    reader = Reader.load(str(workspace[0]), str(trained), device="cpu")
    span = torch.randn(2, 5, 32, requires_grad=True)  # [layers, positions, d_model]
    out = reader.decoder.inputs(span)
    out.sum().backward()
    assert span.grad is not None and span.grad.abs().sum() > 0
    assert all(
        p.grad is None and not p.requires_grad for p in reader.decoder.projector.parameters()
    )
    # One layer of the two (as steering's per-layer loss reads) goes through its own maps.
    with torch.no_grad():
        torch.testing.assert_close(reader.decoder.inputs(span[1:], [2]), out[2:])


def _projector_tensors(path) -> dict[str, torch.Tensor]:
    tensors = load_file(path)
    return {k[len(PROJECTOR_KEY) :]: v for k, v in tensors.items() if k.startswith(PROJECTOR_KEY)}


def test_resume_restores_the_projector_exactly(workspace, tmp_path, monkeypatch):
    full = tmp_path / "full"
    trainer.train(config(workspace, full), progress=False)
    killed = tmp_path / "killed"
    step = trainer._step

    def crash_after_two(run, *args):
        if run.step == 2:  # its checkpoint is written: the run dies here
            raise KeyboardInterrupt
        return step(run, *args)

    monkeypatch.setattr(trainer, "_step", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config(workspace, killed), progress=False)
    monkeypatch.setattr(trainer, "_step", step)
    saved = _projector_tensors(killed / "checkpoints" / "step-0000002" / "adapter.safetensors")
    assert set(saved) == {"weight", "bias"}
    start = trainer._start
    restored = {}

    def record(*args, **kwargs):
        run = start(*args, **kwargs)
        restored.update({k: v.clone() for k, v in run.projector.state_dict().items()})
        return run

    monkeypatch.setattr(trainer, "_start", record)
    trainer.train(config(workspace, killed), resume=True, progress=False)
    assert restored.keys() == saved.keys()
    for key in saved:
        assert torch.equal(restored[key], saved[key]), key  # bit for bit
    a, b = Projector.load(full), Projector.load(killed)
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.bias, b.bias, rtol=1e-5, atol=1e-6)


def test_projector_warmup_steps_leave_the_lora_untouched(workspace, tmp_path):
    out = tmp_path / "warm"
    trainer.train(
        config(workspace, out, steps=2, save_every=1, projector_warmup_steps=1), progress=False
    )

    def lora_b(step: int) -> list[torch.Tensor]:
        tensors = load_file(out / "checkpoints" / f"step-{step:07d}" / "adapter.safetensors")
        return [v for k, v in tensors.items() if "lora_B" in k]

    assert all(not v.any() for v in lora_b(1))  # peft starts B at zero; still zero
    assert any(v.any() for v in lora_b(2))


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_the_fitted_start_is_the_ridge_map_of_the_training_reads(workspace, tmp_path, kind):
    cfg = config(workspace, tmp_path / "unused", projector=kind, read_pool="mean")
    decoder, tokenizer, data, source = tiny_run_reads(cfg)
    projector = build_projector(cfg, decoder, tokenizer, source, data, n_slots=2)
    features, texts = fit_examples(source, data, cfg)  # [n, 2, d_model]
    assert "You are a pirate captain." in texts  # the hidden system prompts
    embeddings = decoder.get_input_embeddings()
    targets = mean_token_embeddings(embeddings, tokenizer, texts)
    weight, bias = fit_ridge(features, targets, cfg.projector_alpha, token_norm(embeddings))
    expected = torch.einsum("nsi,sio->nso", features, weight) + bias
    with torch.no_grad():
        torch.testing.assert_close(projector(features), expected, rtol=1e-5, atol=1e-5)
    random = build_projector(
        config(workspace, tmp_path / "r", projector_init="random", read_pool="mean"),
        decoder,
        tokenizer,
        source,
        data,
        n_slots=2,
    )
    assert not torch.allclose(random.weight, projector.weight)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"read_pool": "none"}, "set --read-pool mean, last or mean+last"),
        ({"mode": "replace"}, "leave --mode unset or set it to embed"),
        ({"mode": "add"}, "not --mode add"),
        ({"projector_warmup_steps": 4}, "set --projector-warmup-steps below --steps"),
        ({"projector": "none", "projector_warmup_steps": 2}, "--projector-warmup-steps applies"),
        ({"projector": "none", "projector_init": "random"}, "--projector-init applies"),
        ({"projector": "none", "mode": "embed", "write_layer": 2}, "--write-layer 2 has no"),
        ({"projector": "conv"}, "projector' must be one of none, linear, mlp"),
        ({"read_pool": "max"}, "must be one of none, mean, last, mean+last"),
        ({"prompt_order": "random"}, "must be one of vectors-first, question-first"),
        ({"projector_alpha": 0}, "projector_alpha must be positive"),
        ({"projector_fit_dialogs": 1}, "projector_fit_dialogs must be at least 2"),
    ],
)
def test_contradictory_options_are_one_line_errors(workspace, tmp_path, overrides, message):
    with pytest.raises(LatentQAError) as error:
        config(workspace, tmp_path, **overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_mode_follows_the_projector_and_old_runs_keep_their_fingerprint(workspace, tmp_path):
    assert config(workspace, tmp_path).mode == "embed"
    plain = config(workspace, tmp_path, projector="none", read_pool="none")
    assert plain.mode == "replace"
    values = config_to_dict(plain)
    before = {key: values[key] for key in _FINGERPRINT_KEYS}  # the key before the options
    before["share_reads"] = plain.share_reads
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert config_fingerprint(plain) == digest
    ordered = config(workspace, tmp_path, projector="none", prompt_order="question-first")
    assert config_fingerprint(ordered) != config_fingerprint(
        config(workspace, tmp_path, projector="none")
    )


def test_question_first_runs_record_their_order_and_old_specs_still_load(workspace, tmp_path):
    out = tmp_path / "qfirst"
    trainer.train(
        config(workspace, out, projector="none", read_pool="last", prompt_order="question-first"),
        progress=False,
    )
    spec = DecoderSpec.load(out)
    assert (spec.prompt_order, spec.projector, spec.mode) == ("question-first", "none", "replace")
    # A spec at the defaults is written without the new fields, as before them.
    spec.prompt_order = "vectors-first"
    spec.save(tmp_path)
    saved = json.loads((tmp_path / SPEC_FILE).read_text())
    assert "projector" not in saved and "prompt_order" not in saved
    assert DecoderSpec.load(tmp_path).prompt_order == "vectors-first"
    saved.update(projector="linear", pool="none")
    (tmp_path / SPEC_FILE).write_text(json.dumps(saved))
    with pytest.raises(LatentQAError, match="needs a pooled read"):
        DecoderSpec.load(tmp_path)


@pytest.mark.parametrize("per_layer_loss", [False, True])
def test_steering_trains_the_target_through_the_frozen_projector(
    workspace, trained, per_layer_loss
):
    from latentqa.steer import STEER_ADAPTER, SteerableModel, encode_prompt, steering_loss

    steerable = SteerableModel.load(str(workspace[0]), str(trained), device="cpu")
    steerable.add_steering([0, 1], r=4, alpha=8)
    for name, parameter in steerable.model.named_parameters():
        if f".{STEER_ADAPTER}." in name and "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)  # B starts at zero: no gradient to A
    encoded = [encode_prompt(steerable.tokenizer, p) for p in ("Hello!", "Describe the tone.")]
    control = [("Who is the assistant?", "A pirate captain.")]
    loss, groups = steering_loss(steerable, encoded, control, [1, 2], per_layer_loss=per_layer_loss)
    assert len(groups) == (2 if per_layer_loss else 1)
    loss.backward()
    steering = [p for n, p in steerable.model.named_parameters() if f".{STEER_ADAPTER}." in n]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in steering)
    assert all(p.grad is None for p in steerable.decoder.projector.parameters())


def test_text_oracle_gives_the_decoder_its_own_embedding_of_the_hidden_prompt(workspace, trained):
    reader = Reader.load(str(workspace[0]), str(trained), device="cpu")
    items, _ = build_items(None, n=6)
    vectors = ConditionReads(reader, None, items, None, 0)("text")
    hidden = [item.dialog[0]["content"] for item in items]
    expected = text_soft_tokens(reader.model.get_input_embeddings(), reader.tokenizer, hidden)
    assert len(vectors) == len(items)
    for row, want in zip(vectors, expected, strict=True):  # one copy per (layer, pooling)
        torch.testing.assert_close(row, want.expand(4, -1))
    # Opt-in: named, it runs as a decoder method; by default it does not run.
    result = evaluate_system_prompt(
        reader, None, None, n=6, methods=["lit_text_oracle"], open_answers=False
    )
    assert list(result["methods"]) == ["lit_text_oracle"]
    assert 0.0 <= result["methods"]["lit_text_oracle"]["mc_accuracy_calibrated"] <= 1.0
    assert "lit_text_oracle" in OPT_IN_METHODS and "lit_text_oracle" in METHODS
    base = Reader.base(str(workspace[0]), read_layers=[1], device="cpu")
    with pytest.raises(LatentQAError, match="needs a decoder with a projector"):
        evaluate_system_prompt(base, None, None, n=6, methods=["lit", "lit_text_oracle"])
