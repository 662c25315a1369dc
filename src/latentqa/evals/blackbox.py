"""The target model as its own black-box baseline: it sees only the visible dialog.

It scores candidate answers to a question appended as a new user turn, by the
log-likelihood of each candidate as its reply (:func:`score_answer_sets` scores many
items at once, each item's shared prompt computed once), and it generates open answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.capture import left_pad, pad_token_id, position_ids_for
from latentqa.chat import Message, render
from latentqa.decoder.trie import BATCH_TOKENS, TriePrompt, pack_tries, trie_logprobs
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
    log_probs = F.log_softmax(logits[:, :-1], -1)  # [n, seq - 1]: position p predicts p + 1
    scores = []
    for row, n_tail in enumerate(spans):
        targets = input_ids[row, -n_tail:]
        # The last n_tail predictions are those of the tail's tokens (this took the n_tail
        # before them until issue #24: each token scored by the prediction of the one before).
        picked = log_probs[row, -n_tail:].gather(-1, targets[:, None]).squeeze(-1)
        total = float(picked.sum())
        scores.append(total / n_tail if normalize else total)
    return scores


@torch.no_grad()
def score_answer_sets(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dialogs: Sequence[Sequence[Message]],
    questions: Sequence[str],
    answer_sets: Sequence[Sequence[str]],
    normalize: bool = True,
    *,
    max_tokens: int = BATCH_TOKENS,
    progress: Callable[[Iterable[slice]], Iterable[slice]] | None = None,
) -> list[list[float]]:
    """:func:`score_answers` for many items at once, each item's prompt computed once.

    Item ``i``'s answers are scored as the target's reply to ``questions[i]`` after
    ``dialogs[i]``, as :func:`score_answers` scores them (equal up to float round-off,
    tested), but its candidates share one token trie (:mod:`latentqa.decoder.trie`):
    the dialog and question run once, not once per candidate, and the LM head runs only
    where an answer token is predicted. Items run together in passes of ``max_tokens``
    (``progress`` wraps the passes, e.g. in a progress bar).

    Returns:
        One list of scores per item, in its answers' order.
    """
    groups = []
    for dialog, question, answers in zip(dialogs, questions, answer_sets, strict=True):
        messages = [*dialog, {"role": "user", "content": question}]
        group = []
        for answer in answers:
            head, tail = _answer_ids(tokenizer, messages, answer)
            group.append(TriePrompt(head + tail, [False] * len(head) + [True] * len(tail)))
        groups.append(group)
    batch = pack_tries(groups, pad_token_id(tokenizer), trie_tokens=None)
    causal_lm = unwrap_causal_lm(model)
    device = next(model.parameters()).device
    dtype = causal_lm.get_input_embeddings().weight.dtype

    def body(rows: slice) -> torch.Tensor:
        inputs = batch.body_inputs(rows, device, dtype)
        return causal_lm.base_model(**inputs, use_cache=False).last_hidden_state

    with adapters_off(model):
        sums = trie_logprobs(model, batch, body, max_tokens=max_tokens, progress=progress)
    flat = (sums[:, 0] / sums[:, 1].clamp_min(1) if normalize else sums[:, 0]).tolist()
    out, at = [], 0
    for answers in answer_sets:
        out.append(flat[at : at + len(answers)])
        at += len(answers)
    return out


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
