"""Plain-model text generation: batched left-padded generation, stop tokens, context."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.chat import render
from latentqa.models import unwrap_causal_lm

_ANSWER_MARKER = "\u2063LATENTQA-ANSWER\u2063"


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: nn.Module) -> list[int]:
    """Token ids that end an answer: eos, and the chat template's end-of-turn token.

    The end-of-turn token is found by rendering an assistant turn and taking the first
    token after its content when that token is a special / added token.

    Args:
        tokenizer: The model's tokenizer, with a chat template.
        model: The causal LM (its generation config's eos ids count too).

    Returns:
        The stop token ids, sorted.
    """
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates = [tokenizer.eos_token_id, *(eos if isinstance(eos, (list, tuple)) else [eos])]
    ids = {int(c) for c in candidates if c is not None}
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _ANSWER_MARKER}]
    tail = render(tokenizer, turns, False).partition(_ANSWER_MARKER)[2]
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    if tail_ids and tail_ids[0] in special:
        ids.add(int(tail_ids[0]))
    return sorted(ids)


def context_length(model: nn.Module) -> int | None:
    """The model's context in tokens (``max_position_embeddings``), or ``None`` if unknown."""
    config = unwrap_causal_lm(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if value else None
