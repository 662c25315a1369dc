"""Tiny random models and tokenizers, built in memory with a fixed seed (no downloads)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

# ChatML with a default system prompt when none is given (as SmolLM2's template).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Gemma style: a BOS, no system role (folded into the first user turn), 'model' turns.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first_prefix = messages[0]['content'] + '\n\n' %}{% set rest = messages[1:] %}"
    "{% else %}{% set first_prefix = '' %}{% set rest = messages %}{% endif %}"
    "{% for message in rest %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_prefix if loop.first else '') "
    "+ message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

_CORPUS = [
    "You are a pirate captain who loves the sea. Hello, how are you today?",
    "What persona is the assistant adopting? A pirate. The assistant speaks sarcastically.",
    "Please answer in rhyme. What is the capital of France? Paris is the capital.",
    "The quick brown fox jumps over the lazy dog; 0123456789 ? _ . , ! x",
    "Describe the tone of the assistant: cheerful, gloomy, formal, casual.",
]
_SPECIALS = ["<pad>", "<bos>", "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]


def make_tokenizer(template: str = CHATML_TEMPLATE) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in memory, with the given chat template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS, trainer=trainer)
    chatml = template == CHATML_TEMPLATE
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<|im_end|>" if chatml else "<end_of_turn>",
        pad_token="<pad>",
        padding_side="left",
    )
    tokenizer.chat_template = template
    return tokenizer


def make_llama(
    vocab_size: int,
    seed: int = 0,
    n_layers: int = 4,
    *,
    tie: bool = True,
    max_positions: int = 512,
    initializer_range: float = 0.02,
) -> LlamaForCausalLM:
    """A tiny random Llama (width 32), its weights drawn after ``torch.manual_seed(seed)``.

    Args:
        vocab_size: The tokenizer's size.
        seed: Seed of the random weights.
        n_layers: Decoder blocks.
        tie: Tie the LM head to the input embeddings.
        max_positions: ``max_position_embeddings`` (no weights depend on it).
        initializer_range: Standard deviation of the initial weights (larger: outputs
            that depend more on the inputs).
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie,
        initializer_range=initializer_range,
    )
    return LlamaForCausalLM(config).eval()


def make_qwen2(vocab_size: int, seed: int = 0, n_layers: int = 3) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(config).eval()


def make_pair(arch: str, seed: int = 0):
    """(model, tokenizer) for ``arch`` in {"llama", "qwen2"}."""
    if arch == "llama":
        tokenizer = make_tokenizer(CHATML_TEMPLATE)
        return make_llama(len(tokenizer), seed), tokenizer
    tokenizer = make_tokenizer(GEMMA_TEMPLATE)
    return make_qwen2(len(tokenizer), seed), tokenizer


def add_random_lora(model, seed: int):
    """LoRA (r=4) on every linear layer with random, non-zero ``B`` matrices, so the
    adapter changes outputs from the first step (peft's default starts ``B`` at zero)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, lora)


def make_lora_decoder(arch: str, mode: str, lora_seed: int, **spec_fields):
    """A tiny :class:`LoadedDecoder` (read and write layer 1) with a random LoRA, whose
    outputs depend on the adapter and on the vectors it reads; ``spec_fields`` are
    passed to its :class:`DecoderSpec` (e.g. ``prompt_order``)."""
    from latentqa.decoder.folder import DecoderSpec
    from latentqa.decoder.loaded import LoadedDecoder

    tokenizer = make_tokenizer() if arch == "llama" else make_pair("qwen2")[1]
    model = (
        make_llama(len(tokenizer), initializer_range=0.2)
        if arch == "llama"
        else make_qwen2(len(tokenizer))
    )
    spec = DecoderSpec(
        target="tiny",
        read_layers=[1],
        write_layer=1,
        mode=mode,
        max_read_tokens=96,
        hidden_size=model.config.hidden_size,
        n_layers=model.config.num_hidden_layers,
        **spec_fields,
    )
    peft_model = add_random_lora(model, lora_seed).eval()
    return LoadedDecoder.from_model(peft_model, tokenizer, spec)


def assert_same_loss_and_gradients(
    decoder, alone, shared, mode, lora_from="start", frozen_once=(None, None)
) -> None:
    """Per-prompt answer losses and the LoRA gradients of a shared layout equal those of
    the prompts run one per row (``alone``); each is ``(batch, vectors)``; the decoder
    writes at layer 1. ``frozen_once`` is ``answer_token_loss``'s, for each run."""
    from latentqa.decoder.loss import answer_token_loss

    results = []
    for (batch, vectors), once in zip((alone, shared), frozen_once, strict=True):
        sums = answer_token_loss(
            decoder,
            batch,
            vectors,
            write_layer=1,
            mode=mode,
            reduction="none",
            lora_from=lora_from,
            frozen_once=once,
        )
        sums[:, 0].sum().backward()
        grads = [p.grad.clone() for p in decoder.parameters() if p.requires_grad]
        decoder.zero_grad(set_to_none=True)
        results.append((sums.detach(), grads))
    (expected, expected_grads), (got, grads) = results
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, expected_grads, strict=True):
        # Float32 round-off in an element of a gradient scales with the terms summed into
        # it, i.e. with the tensor's magnitude (up to ~20 here), not the element's own; a
        # clean-checkout CI run drew a case 1.14x over 1e-5 (hypothesis draws vary).
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, rtol=1e-3, atol=5e-5 * scale)


def random_reads(hidden_size: int, n: int, seed: int) -> list[torch.Tensor]:
    """``n`` seeded random reads of 1 to 3 vectors each, ``[n_i, hidden_size]``."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1 + (2 * i) % 3, hidden_size, generator=generator) for i in range(n)]


def n_forward_hooks(model: torch.nn.Module) -> int:
    """Forward hooks registered anywhere in ``model`` (a context must leave none)."""
    return sum(len(m._forward_hooks) for m in model.modules())


def count_rows(monkeypatch, owner: type, name: str) -> list[int]:
    """Replace method ``owner.name`` (whose first argument is a list of rows) by a spy
    that calls it and records how many rows each call got; returns that record."""
    calls: list[int] = []
    real = getattr(owner, name)

    def spy(self, rows, *args, **kwargs):
        calls.append(len(rows))
        return real(self, rows, *args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls
