"""Steering's loss computes each read (or question) once: the same loss and gradients as
one prompt per row, in both prompt orders."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from lit_fixtures import STEER_PROMPTS

from latentqa.decoder.packing import SharedBatch, cpu_attention
from latentqa.steer import STEER_ADAPTER, SteerableModel, encode_prompt, steering_loss
from latentqa.steer.loss import shared_pairs_batch

CONTROL = [
    ("What persona is the assistant adopting?", "A pirate captain."),
    ("Describe the assistant's tone.", "Cheerful and loud."),
]


def _steer_grads(steerable: SteerableModel) -> dict[str, torch.Tensor]:
    grads = {}
    for name, parameter in steerable.model.named_parameters():
        if parameter.grad is not None:
            grads[name] = parameter.grad.clone()
            parameter.grad = None
    return grads


@pytest.mark.parametrize("order", ["vectors-first", "question-first"])
def test_shared_steering_loss_equals_one_prompt_per_row(paths, order):
    steerable = SteerableModel.load(paths["model"], paths["decoder"], device="cpu")
    steerable.decoder.spec = dataclasses.replace(steerable.spec, prompt_order=order)
    steerable.add_steering(r=4, alpha=8, seed=0)
    torch.manual_seed(0)
    for name, parameter in steerable.model.named_parameters():
        if f".{STEER_ADAPTER}." in name and "lora_B" in name:  # B = 0 gives A no gradient
            torch.nn.init.normal_(parameter, std=0.05)
    encoded = [encode_prompt(steerable.tokenizer, p) for p in STEER_PROMPTS[:3]]
    read_layers = steerable.spec.read_layers

    with cpu_attention(torch.device("cpu")):
        shared, _ = steering_loss(steerable, encoded, CONTROL, read_layers)
        shared.backward()
    shared_grads = _steer_grads(steerable)
    alone, _ = steering_loss(steerable, encoded, CONTROL, read_layers, shared=False)
    alone.backward()
    alone_grads = _steer_grads(steerable)

    torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-6)
    assert shared_grads and shared_grads.keys() == alone_grads.keys()
    for name, grad in alone_grads.items():
        scale = float(grad.abs().max()) + 1e-12
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("order", ["vectors-first", "question-first"])
def test_each_read_or_question_is_computed_once(paths, order):
    steerable = SteerableModel.load(paths["model"], paths["decoder"], device="cpu")
    vectors = [torch.randn(n, steerable.model.config.hidden_size) for n in (5, 7, 4)]
    batch, flat = shared_pairs_batch(steerable.tokenizer, vectors, CONTROL, order)
    assert isinstance(batch, SharedBatch) and batch.n_branches == len(vectors) * len(CONTROL)
    # Each read goes in once per tree that reads it: once in the vectors-first order (its
    # tree holds both questions), once per question in the question-first order.
    per_read = 1 if order == "vectors-first" else len(CONTROL)
    assert flat.shape[0] == per_read * sum(len(v) for v in vectors)
    assert batch.n_tokens < batch.n_example_tokens
