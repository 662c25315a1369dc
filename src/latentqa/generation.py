"""Plain-model generation and scoring: the one ``generate`` call, and continuation scores.

:func:`generate_batch` is the package's only call of ``model.generate``: every
generation (the Reader's answers, replies of the target, Patchscope completions,
steered text) goes through it, with the model in whatever state the caller set up (a
steered or unsteered peft model, a steering-vector hook, activations patched with
:func:`latentqa.patch.patch_activations` around the call). :func:`generate_rows`
left-pads token-id rows for it; :func:`generate_texts` replies to chat prompts. The
scorers (:func:`continuation_logprobs`, :func:`reply_logprobs`, :func:`text_logprobs`)
score given text with the model as it stands. Nothing here switches adapters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.capture import left_pad, pad_token_id, position_ids_for
from latentqa.chat import render
from latentqa.decoder.loss import lm_head_logits
from latentqa.errors import LatentQAError
from latentqa.handle import stop_token_ids
from latentqa.models import cache_keyword, unwrap_causal_lm


def until_stop(ids: list[int], stops: Sequence[int]) -> list[int]:
    """``ids`` up to (without) the first stop token."""
    ends = [i for i, token in enumerate(ids) if token in stops]
    return ids[: ends[0]] if ends else ids


@torch.no_grad()
def generate_batch(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    pad_id: int,
    stop_ids: Sequence[int] | None = None,
    temperature: float = 0.0,
    past_key_values: Any = None,
) -> list[list[int]]:
    """Generate from a left-padded batch with the KV cache; each row's new token ids.

    Args:
        model: A causal LM or peft model, in the state to generate with.
        input_ids: ``[rows, width]`` left-padded prompt ids, on the model's device.
        attention_mask: ``[rows, width]``, 1 on real tokens.
        max_new_tokens: Most new tokens per row.
        pad_id: The pad id ``generate`` fills finished rows with.
        stop_ids: Tokens that end a row: passed as ``eos_token_id`` and each row is cut
            before its first one. ``None``: the model's generation config decides where
            rows end and rows come back uncut (finished rows end in pad ids).
        temperature: 0 for greedy decoding; above 0 plain temperature sampling (no
            top-k / top-p from the model's generation config).
        past_key_values: The KV cache of the first tokens of ``input_ids`` (one copy per
            row), e.g. a shared header's (:mod:`latentqa.decoder.header_cache`); only the
            tokens after them run in the prompt pass.

    Returns:
        One list of new token ids per row.
    """
    if temperature > 0:
        sampling: dict[str, Any] = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    else:
        sampling = dict(do_sample=False)
    if stop_ids is not None:
        sampling["eos_token_id"] = list(stop_ids)
    # The KV cache also makes a patch of the prompt pass (patch_activations) the only one.
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        use_cache=True,
        **({} if past_key_values is None else {"cache": past_key_values}),
        **sampling,
    )  # [rows, width + n_new]
    rows = output[:, input_ids.shape[1] :].tolist()
    return rows if stop_ids is None else [until_stop(row, stop_ids) for row in rows]


def generate_rows(
    model: nn.Module,
    rows: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    pad_id: int,
    stop_ids: Sequence[int] | None = None,
) -> list[list[int]]:
    """:func:`generate_batch` over token-id rows, left-padded into one batch (greedy).

    The tokens every row opens with (a chat template's header) run once and their KV
    cache is copied to each row (:func:`latentqa.decoder.header_cache.share_header`).
    """
    from latentqa.decoder.header_cache import share_header

    input_ids, attention = left_pad(rows, pad_id, next(model.parameters()).device)
    no_slots = torch.zeros_like(input_ids, dtype=torch.bool)
    split = share_header(model, input_ids, attention, no_slots, "start", pad_id)
    return generate_batch(
        model,
        split.input_ids,
        split.attention_mask,
        max_new_tokens=max_new_tokens,
        pad_id=pad_id,
        stop_ids=stop_ids,
        past_key_values=split.cache,
    )


def _messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": prompt}]


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str, system: str | None = None
) -> list[int]:
    """Token ids of a user prompt (after an optional system prompt) and the reply header."""
    text = render(tokenizer, _messages(prompt, system), add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def generate_texts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    system: str | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 64,
) -> list[str]:
    """Greedy replies to each prompt (one user turn, optional system prompt), KV-cached.

    Args:
        model: A causal LM or peft model, in the state to generate with.
        tokenizer: Its tokenizer (with a chat template).
        prompts: User messages.
        system: A system prompt put before every prompt (the prompting baseline).
        max_new_tokens: Reply length limit.
        batch_size: Prompts per ``generate`` call (left-padded). A decoding step of a
            small model on a CPU costs about as much for 64 rows as for 16 (it reads
            every weight either way): 50 replies took 8 s in one batch of 64 and 16-19 s
            in batches of 16, the same replies (docs/performance.md).

    Returns:
        One reply per prompt, stripped, without special tokens.
    """
    if max_new_tokens < 1:
        raise LatentQAError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    pad = pad_token_id(tokenizer)
    stops = stop_token_ids(tokenizer, unwrap_causal_lm(model))
    replies: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rows = [prompt_ids(tokenizer, p, system) for p in prompts[start : start + batch_size]]
        new = generate_rows(model, rows, max_new_tokens=max_new_tokens, pad_id=pad, stop_ids=stops)
        replies += [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new]
    return replies


@torch.no_grad()
def continuation_logprobs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    heads: Sequence[Sequence[int]],
    tails: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
) -> list[tuple[float, int]]:
    """Sum log-probability of each ``tail`` given its ``head``, and the tail's length.

    Args:
        model: A causal LM or peft model, in the state to score with.
        tokenizer: Its tokenizer (for the pad id).
        heads: Context token ids per row (at least one token each).
        tails: Scored token ids per row (rows with no tail score ``(0.0, 0)``).
        batch_size: Rows per forward pass.
    """
    causal_lm = unwrap_causal_lm(model)
    pad = pad_token_id(tokenizer)
    results: list[tuple[float, int]] = []
    for start in range(0, len(heads), batch_size):
        chunk = list(
            zip(heads[start : start + batch_size], tails[start : start + batch_size], strict=True)
        )
        rows = [list(head) + list(tail) for head, tail in chunk]
        device = next(model.parameters()).device
        input_ids, attention = left_pad(rows, pad, device)
        # The body runs with whatever adapters / hooks are active; the LM head runs only
        # where a position predicts a tail token.
        input_ids, attention, cache = _shared_opening(
            causal_lm, input_ids, attention, min(len(head) for head, _ in chunk) - 1, pad
        )
        body = causal_lm.base_model
        hidden = body(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=position_ids_for(attention)[:, -input_ids.shape[1] :],
            use_cache=cache is not None,
            **({} if cache is None else {cache_keyword(body): cache}),
        ).last_hidden_state  # [rows, seq, d_model]: the rows' own tokens
        width = input_ids.shape[1]
        predicts = torch.zeros((len(rows), width), dtype=torch.bool, device=hidden.device)
        for row, (_, tail) in enumerate(chunk):
            if tail:
                predicts[row, width - len(tail) - 1 : width - 1] = True
        targets = torch.cat(
            [input_ids[row, width - len(tail) :] for row, (_, tail) in enumerate(chunk)]
        )  # [n_scored], row-major like predicts
        logits = lm_head_logits(causal_lm, hidden[predicts]).float()  # [n_scored, vocab]
        picked = -F.cross_entropy(logits, targets, reduction="none")  # [n_scored]
        offset = 0
        for _, tail in chunk:
            n = len(tail)
            results.append((float(picked[offset : offset + n].sum()), n))
            offset += n
    return results


def _shared_opening(
    causal_lm: nn.Module,
    input_ids: torch.Tensor,
    attention: torch.Tensor,
    most: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """The tokens every row opens with (at most ``most``: a chat template's header and a
    shared prompt) run once, their KV cache copied to each row.

    Returns ``(ids, attention, cache)``: ``ids`` ``[rows, rest]`` the rows' own tokens
    (right-aligned, as before), ``attention`` over the opening and them, and the cache
    (``None`` and the batch unchanged where too little is shared). Only scoring calls
    this: the opening predicts no scored token, as ``most`` keeps each head's last token,
    which predicts its tail's first, among the rows' own.
    """
    from latentqa.decoder.header_cache import share_header

    no_slots = torch.zeros_like(input_ids, dtype=torch.bool)
    split = share_header(causal_lm, input_ids, attention, no_slots, "start", pad_id, most)
    own = split.rest_attention.shape[1]  # the rows' own tokens, after the opening
    return split.input_ids[:, -own:], split.attention_mask, split.cache


def reply_logprobs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    replies: Sequence[str],
    *,
    system: str | None = None,
    batch_size: int = 16,
) -> list[tuple[float, int]]:
    """``(sum log-prob, n tokens)`` of each reply's text as the assistant's answer to its prompt.

    The end-of-turn token is not scored, so truncated generations score fairly.
    """
    heads = [prompt_ids(tokenizer, p, system) for p in prompts]
    tails = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in replies]
    return continuation_logprobs(model, tokenizer, heads, tails, batch_size=batch_size)


def text_logprobs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    prefix: str = "",
    batch_size: int = 16,
) -> list[tuple[float, int]]:
    """``(sum log-prob, n tokens)`` of plain texts (no chat template), after ``prefix``.

    Each text is conditioned on the BOS token (else the end-of-text token) and
    ``prefix``, so that every one of its tokens is scored.
    """
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    head = ([] if start is None else [int(start)]) + list(
        tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    )
    if not head:
        raise LatentQAError("the tokenizer has neither a BOS nor an EOS token to start a text")
    tails = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return continuation_logprobs(
        model, tokenizer, [head] * len(texts), tails, batch_size=batch_size
    )


def perplexity(scores: Sequence[tuple[float, int]]) -> float:
    """Per-token perplexity of summed log-probs ``(sum, n)``: exp(-sum / n) over all rows."""
    total = sum(s for s, _ in scores)
    count = sum(n for _, n in scores)
    return math.exp(-total / count) if count else float("nan")
