"""Decoder block search across architectures and wrappers."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny import make_pair
from torch import nn
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel

from latentqa.errors import LatentQAError
from latentqa.layers import check_layer_index, find_decoder_layers


def gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=4))


def gemma3():
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    )
    return Gemma3ForCausalLM(config)


@pytest.mark.parametrize(
    ("build", "path", "n_layers"),
    [
        (lambda: make_pair("llama")[0], "model.layers", 4),
        (lambda: make_pair("qwen2")[0], "model.layers", 3),
        (gpt2, "transformer.h", 3),
        (gemma3, "model.layers", 2),
    ],
    ids=["llama", "qwen2", "gpt2", "gemma3"],
)
def test_finds_the_block_list(build, path, n_layers):
    model = build()
    found = find_decoder_layers(model)
    assert found.path == path
    assert len(found) == n_layers
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    through_peft = find_decoder_layers(wrapped)
    assert through_peft.path.endswith(path)
    assert through_peft.blocks is found.blocks
    # An override written for the bare model also works on the wrapped one.
    assert find_decoder_layers(wrapped, layers_path=path).blocks is found.blocks


def test_finds_blocks_through_a_ddp_style_wrapper():
    class Wrapper(nn.Module):  # what DDP and FSDP look like from the outside
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = make_pair("llama")[0]
    assert find_decoder_layers(Wrapper(model)).path == "module.model.layers"


def test_override_and_clear_errors():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
            self.extras = nn.ModuleList([nn.Linear(4, 400)])  # more weights, wrong list

    odd = Odd()
    assert find_decoder_layers(odd).path == "extras"
    assert find_decoder_layers(odd, layers_path="stack").path == "stack"
    with pytest.raises(LatentQAError, match="candidates: stack, extras"):
        find_decoder_layers(odd, layers_path="nope")
    with pytest.raises(LatentQAError, match="found no list of decoder blocks"):
        find_decoder_layers(nn.Linear(2, 2))


def test_layer_index_check():
    assert check_layer_index(-1, 30) == 29
    with pytest.raises(LatentQAError, match=r"valid: 0\.\.29"):
        check_layer_index(30, 30)
