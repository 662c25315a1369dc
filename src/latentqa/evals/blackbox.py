"""The target model as its own black-box baseline: it sees only the visible dialog.

It scores candidate answers to a question appended as a new user turn, by the
log-likelihood of each candidate as its reply, and it generates open answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.capture import left_pad, pad_token_id, position_ids_for
from latentqa.chat import Message, render
from latentqa.generation import generate_rows
from latentqa.handle import adapters_off
from latentqa.models import unwrap_causal_lm


def _answer_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], answer: str
) -> tuple[list[int], list[int]]:
    prompt = render(tokenizer, messages, add_generation_prompt=True)
    full = render(tokenizer, [*messages, {"role": "assistant", "content": answer}], False)
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    tail = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    return head, tail


@torch.no_grad()
def score_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dialog: Sequence[Message],
    question: str,
    answers: Sequence[str],
    normalize: bool = True,
) -> list[float]:
    """Log-likelihood of each answer as the target's reply to ``question`` after ``dialog``."""
    messages = [*dialog, {"role": "user", "content": question}]
    rows, spans = [], []
    for answer in answers:
        head, tail = _answer_ids(tokenizer, list(messages), answer)
        rows.append(head + tail)
        spans.append(len(tail))
    input_ids, attention = left_pad(rows, pad_token_id(tokenizer), next(model.parameters()).device)
    causal_lm = unwrap_causal_lm(model)
    with adapters_off(model):
        logits = causal_lm(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=position_ids_for(attention),
            use_cache=False,
        ).logits.float()  # [n, seq, vocab]
    log_probs = F.log_softmax(logits[:, :-1], -1)
    scores = []
    for row, n_tail in enumerate(spans):
        targets = input_ids[row, -n_tail:]
        picked = log_probs[row, -n_tail - 1 : -1].gather(-1, targets[:, None]).squeeze(-1)
        total = float(picked.sum())
        scores.append(total / n_tail if normalize else total)
    return scores


def generate_replies(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dialogs: Sequence[Sequence[Message]],
    max_new_tokens: int = 48,
    batch_size: int = 16,
) -> list[str]:
    """Greedy replies of the target to each dialog (ending with a user turn).

    Replies end where the model's generation config says (no template stop tokens); an
    empty one reads ``"..."``.
    """
    causal_lm = unwrap_causal_lm(model)
    pad = pad_token_id(tokenizer)
    replies: list[str] = []
    for start in range(0, len(dialogs), batch_size):
        chunk = dialogs[start : start + batch_size]
        rows = [
            tokenizer(render(tokenizer, list(d), True), add_special_tokens=False)["input_ids"]
            for d in chunk
        ]
        with adapters_off(model):
            new = generate_rows(causal_lm, rows, max_new_tokens=max_new_tokens, pad_id=pad)
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        replies += [text.strip() or "..." for text in texts]
    return replies
