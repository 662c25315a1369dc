"""A custom ``layers_path`` reaches both the read (capture) and the write (patch).

The model here carries a decoy: a list of identical modules with more weights than the
decoder blocks, never run by the forward pass, so the automatic block search picks
it. Only the override ``model.layers`` finds the real blocks; a read or a write that
dropped the override would hook the decoy and see (or change) nothing.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny import make_pair
from torch import nn

from latentqa.capture import read_activations
from latentqa.decoder.folder import DecoderSpec
from latentqa.decoder.inputs import decoder_batch
from latentqa.decoder.loaded import LoadedDecoder
from latentqa.decoder.loss import answer_token_loss
from latentqa.decoder.packing import shared_decoder_batch
from latentqa.handle import TargetHandle
from latentqa.layers import block_output_hook, find_decoder_layers
from latentqa.reader import Reader
from latentqa.train.activations import ActivationSource
from latentqa.train.trainer import LITObjective

PATH = "model.layers"
DIALOG = [
    {"role": "system", "content": "You are a pirate captain."},
    {"role": "user", "content": "Hello, how are you today?"},
]
QUESTION = "What persona is the assistant adopting?"
ANSWER = "A pirate captain."


def with_decoy(model: nn.Module) -> nn.Module:
    """Add an unused block list that outweighs the real one (same length)."""
    blocks = model.model.layers
    d_model = model.config.hidden_size
    width = 4 * sum(p.numel() for p in blocks.parameters()) // (len(blocks) * d_model)
    model.decoy = nn.ModuleList(nn.Linear(d_model, width) for _ in blocks)
    return model


@pytest.fixture
def pair():
    model, tokenizer = make_pair("llama")
    return with_decoy(model).eval(), tokenizer


def spec_for(model: nn.Module) -> DecoderSpec:
    n_layers = len(model.model.layers)
    return DecoderSpec(
        target="tiny",
        read_layers=[1],
        write_layer=0,
        mode="replace",
        max_read_tokens=8,
        hidden_size=model.config.hidden_size,
        n_layers=n_layers,
    )


def test_the_decoy_fools_the_automatic_search(pair):
    model, _ = pair
    assert find_decoder_layers(model).path == "decoy"
    assert find_decoder_layers(model, PATH).blocks is model.model.layers


def test_block_output_hook_unwraps_edits_and_removes_on_error(pair):
    model, _ = pair
    blocks = find_decoder_layers(model, PATH)
    ids = torch.tensor([[1, 2, 3]])
    seen = []

    def fail(index: int, hidden: torch.Tensor) -> None:
        seen.append((index, tuple(hidden.shape)))
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError), block_output_hook(blocks, [-1, 0], fail) as hooked:
        assert hooked == [0, len(blocks) - 1]
        model(input_ids=ids)
    assert seen == [(0, (1, 3, model.config.hidden_size))]
    assert all(not block._forward_hooks for block in blocks.blocks)


def test_reader_reads_and_writes_through_the_custom_path(pair):
    model, tokenizer = pair
    reader = Reader(LoadedDecoder.from_model(model, tokenizer, spec_for(model), layers_path=PATH))
    vectors = reader.read(DIALOG)  # [kept, d_model]
    # The read is the output of the real block 1 (hidden_states[2]) at the kept positions.
    blocks = find_decoder_layers(model, PATH)
    expected = read_activations(model, tokenizer, [DIALOG], [1], n_masked=1, blocks=blocks)
    torch.testing.assert_close(vectors, expected[0][0, -8:])
    real = reader.score_vectors(vectors, QUESTION, [ANSWER])
    zeroed = reader.score_vectors(torch.zeros_like(vectors), QUESTION, [ANSWER])
    assert real != pytest.approx(zeroed)  # the write reached a block that runs
    # Generation patches through the same path, and leaves no hook behind.
    reader.generate_ids([vectors], [QUESTION], max_new_tokens=3)
    assert all(not block._forward_hooks for block in model.model.layers)


@pytest.mark.parametrize("shared", [False, True], ids=["unshared", "shared"])
def test_training_loss_writes_through_the_custom_path(pair, shared):
    model, tokenizer = pair
    torch.manual_seed(0)
    decoder = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    handle = TargetHandle.resolve(decoder, tokenizer, PATH)
    reader = Reader(LoadedDecoder.from_model(model, tokenizer, spec_for(model), layers_path=PATH))
    source = ActivationSource.from_handle(handle, [reader.encode(DIALOG)], [1], 8)
    (vectors,) = source.get([0])  # read with the adapters off, through the override
    if shared:
        batch, flat = shared_decoder_batch(tokenizer, [vectors], [[(QUESTION, ANSWER)]])
    else:
        batch, flat = decoder_batch(tokenizer, [vectors], [QUESTION], [ANSWER])

    def losses(layers_path: str | None) -> tuple[float, float]:
        objective = LITObjective(decoder, 0, "replace", find_decoder_layers(decoder, layers_path))
        with torch.no_grad():
            return float(objective(batch, flat)), float(objective(batch, torch.zeros_like(flat)))

    real, zeroed = losses(PATH)
    assert real != pytest.approx(zeroed)
    # Without the override the write lands on the decoy, which never runs: no effect.
    blind_real, blind_zeroed = losses(None)
    assert blind_real == pytest.approx(blind_zeroed)


def test_answer_losses_take_the_blocks(pair):
    model, tokenizer = pair
    vectors = torch.randn(4, model.config.hidden_size)
    batch, flat = decoder_batch(tokenizer, [vectors], [QUESTION], [ANSWER])
    shared, shared_flat = shared_decoder_batch(tokenizer, [vectors], [[(QUESTION, ANSWER)]])
    with torch.no_grad():
        blocks = find_decoder_layers(model, PATH)
        plain = answer_token_loss(model, batch, flat, write_layer=0, mode="add", blocks=blocks)
        packed = answer_token_loss(
            model, shared, shared_flat, write_layer=0, mode="add", blocks=blocks
        )
        untouched = answer_token_loss(model, batch, flat, write_layer=0, mode="add")
    torch.testing.assert_close(plain, packed)
    assert float(plain) != pytest.approx(float(untouched))


def test_handle_switches_adapters_one_way(pair):
    model, tokenizer = pair
    config = LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config, adapter_name="decoder")
    peft_model.add_adapter("steer", config)
    handle = TargetHandle.resolve(peft_model, tokenizer, PATH, trainable="steer")
    ids = torch.tensor([[1, 2, 3, 4]])

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return peft_model(input_ids=ids).logits

    with handle.target():
        plain = logits()
    with handle.use_adapter("steer"):
        assert peft_model.active_adapter == "steer"
        steered = logits()
    assert peft_model.active_adapter == "decoder"  # restored on exit
    assert not torch.allclose(plain, steered)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".steer." in name for name in trainable)
