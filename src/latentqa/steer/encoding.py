"""What steering reads: each prompt, or the reply to it, encoded with its read span.

The decoder was trained to read either dialogs after the system prompt or a final
assistant reply (``reads`` in its latentqa.json); steering reads the target the same
way, on ordinary user prompts or the target's own replies to them.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from latentqa.chat import EncodedDialog, first_token_at, render, subject_span
from latentqa.errors import LatentQAError
from latentqa.generation import generate_texts
from latentqa.steer.model import SteerableModel


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> EncodedDialog:
    """A user prompt rendered with the reply header; the read span starts at its text.

    A default system prompt that some templates insert is not read (the decoder was
    trained on spans after the system prompt).
    """
    text = render(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    at = text.rfind(prompt.strip())
    start = first_token_at(encoded["offset_mapping"], at) if at >= 0 else 0
    return EncodedDialog(list(encoded["input_ids"]), start, text)


def encode_reply(tokenizer: PreTrainedTokenizerBase, prompt: str, reply: str) -> EncodedDialog:
    """A user prompt and the assistant's reply; the read span is the reply's tokens."""
    dialog = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    return subject_span(tokenizer, dialog, reply.strip())


def steering_reads(steerable: SteerableModel, read: str = "auto") -> str:
    """``prompt`` or ``reply``: what steering reads; ``auto`` follows the decoder's training
    (``reads`` in its latentqa.json: decoders trained on replies read replies)."""
    if read != "auto":
        return read
    return "reply" if steerable.spec.extra.get("reads") == "reply" else "prompt"


def own_replies(steerable: SteerableModel, prompts: Sequence[str], reply_tokens: int) -> list[str]:
    """The plain target's greedy replies to ``prompts`` (what steering reads with ``reply``)."""
    with steerable.unsteered() as model:
        return generate_texts(model, steerable.tokenizer, prompts, max_new_tokens=reply_tokens)


def encode_steering_items(
    steerable: SteerableModel,
    prompts: Sequence[str],
    read: str,
    replies: Sequence[str] | None = None,
    reply_tokens: int = 32,
) -> list[EncodedDialog]:
    """Encode what steering reads: each prompt, or each prompt's reply.

    Args:
        steerable: The target (its unsteered state writes missing replies).
        prompts: User prompts.
        read: ``prompt`` or ``reply`` (see :func:`steering_reads`).
        replies: With ``reply``: the reply to each prompt; ``None``: the unsteered
            target's greedy replies, generated here.
        reply_tokens: Length of generated replies.
    """
    if read == "prompt":
        return [encode_prompt(steerable.tokenizer, p) for p in prompts]
    if replies is None:
        replies = own_replies(steerable, prompts, reply_tokens)
    elif len(replies) != len(prompts):
        raise LatentQAError(f"got {len(replies)} replies for {len(prompts)} prompts")
    # An empty reply has nothing to read; such prompts are left out.
    return [
        encode_reply(steerable.tokenizer, p, r)
        for p, r in zip(prompts, replies, strict=True)
        if r.strip()
    ]
