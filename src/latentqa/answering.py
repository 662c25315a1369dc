"""Generating a decoder's answers about read vectors.

:func:`generate_ids` patches each row's read vectors into the decoder's prompt pass and
decodes its answer from the KV cache through the one generation engine
(:func:`latentqa.generation.generate_batch`), the opening every row of a batch shares
run once (:mod:`latentqa.decoder.header_cache`); :func:`answer_texts` decodes answers and
:func:`ask_vectors` answers questions about vectors already read;
:func:`generate_ids_once` generates rows that cannot differ (all-zero reads of one shape
asked the same question) once. :class:`AskOptions`
are the keyword options of :meth:`latentqa.reader.Reader.ask` and ``ask_many``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypedDict

import torch

from latentqa.decoder.header_cache import share_header
from latentqa.decoder.inputs import decoder_batch
from latentqa.decoder.loaded import LoadedDecoder
from latentqa.decoder.lora_gate import lora_scope
from latentqa.errors import LatentQAError
from latentqa.generation import generate_batch
from latentqa.models import unwrap_causal_lm
from latentqa.patch import patch_activations
from latentqa.questions import check_questions

VectorsTransform = Callable[[torch.Tensor], torch.Tensor]
"""Maps read vectors ``[n, d_model]`` to replacements of the same shape."""


class AskOptions(TypedDict, total=False):
    """Keyword options of :meth:`Reader.ask` and :meth:`Reader.ask_many` (all optional)."""

    max_new_tokens: int
    """Answer length limit (default 64)."""
    temperature: float
    """0 (the default) for greedy decoding, else plain temperature sampling."""
    layer: int | None
    """Read this target block instead of the decoder's read layers (default ``None``)."""
    vectors_transform: VectorsTransform | None
    """Applied to each dialog's read vectors ``[n, d_model]`` first (default ``None``)."""
    batch_size: int
    """Dialogs per target pass / rows per generation and scoring batch (default 32)."""


@torch.no_grad()
def generate_ids(
    decoder: LoadedDecoder,
    vectors: Sequence[torch.Tensor],
    questions: Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 128,
) -> list[list[int]]:
    """Answer token ids, up to the first stop token, per (vectors, question) row.

    ``vectors[i]`` (``[n_i, d_model]``) is patched into the prompt pass of row ``i``
    only; later tokens come from the KV cache. Rows run in left-padded batches.

    Args:
        decoder: The decoder answering.
        vectors: One ``[n, d_model]`` tensor per row.
        questions: One question per row.
        max_new_tokens: Answer length limit.
        temperature: 0 for greedy decoding, else plain temperature sampling.
        batch_size: Rows per generation batch. On a CPU a decoding step costs little
            more for 128 rows than for 32 (it reads every weight either way): the 177
            open answers of ``eval system-prompt``'s ``lit`` took 17-20 s in batches of
            128 and 24-26 s in batches of 32, the same answers.

    Raises:
        LatentQAError: Rows of unequal lengths, empty questions, bad vectors or settings,
            or a prompt longer than the model's context.
    """
    questions = check_questions(questions)
    if len(vectors) != len(questions):
        raise LatentQAError(f"{len(vectors)} vector sets for {len(questions)} questions")
    if max_new_tokens < 1 or temperature < 0:
        raise LatentQAError(
            f"need max_new_tokens >= 1, temperature >= 0; got {max_new_tokens}, {temperature}"
        )
    vectors = [decoder.check_vectors(v) for v in vectors]
    causal_lm = unwrap_causal_lm(decoder.model)
    answers: list[list[int]] = []
    for start in range(0, len(questions), batch_size):
        rows = slice(start, start + batch_size)
        batch, flat = decoder_batch(
            decoder.tokenizer, vectors[rows], questions[rows], order=decoder.spec.prompt_order
        )
        batch = batch.to(decoder.device)  # ids and masks [rows, width]; flat [n, d_model]
        width = batch.input_ids.shape[1]
        decoder.check_length(width + max_new_tokens, "the decoder prompt plus max_new_tokens")
        # The opening every row shares (the chat header) runs once, its KV cache copied.
        split = share_header(
            causal_lm,
            batch.input_ids,
            batch.attention_mask,
            batch.placeholder_mask,
            decoder.spec.lora_from,
            decoder.pad_id,
        )
        with (
            patch_activations(
                causal_lm,
                decoder.spec.write_layer,
                split.placeholder_mask,
                flat,
                decoder.spec.mode,
                blocks=decoder.blocks,
            ),
            lora_scope(
                causal_lm, decoder.spec.lora_from, split.placeholder_mask, split.rest_attention
            ),
        ):
            answers += generate_batch(
                decoder.model,
                split.input_ids,
                split.attention_mask,
                max_new_tokens=max_new_tokens,
                pad_id=decoder.pad_id,
                stop_ids=decoder.stop_ids,
                temperature=temperature,
                past_key_values=split.cache,
            )
    return answers


def check_ask_options(options: dict) -> None:
    """Refuse keyword options that are not :class:`AskOptions`.

    Raises:
        TypeError: Names the unknown options and lists the known ones.
    """
    unknown = sorted(set(options) - AskOptions.__optional_keys__)
    if unknown:
        known = ", ".join(sorted(AskOptions.__optional_keys__))
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; the options are {known}")


def generate_ids_once(
    generate: Callable[..., list[list[int]]],
    vectors: Sequence[torch.Tensor],
    questions: Sequence[str],
    *args: Any,
    **kwargs: Any,
) -> list[list[int]]:
    """``generate(vectors, questions, *args, **kwargs)`` (greedy :func:`generate_ids`, or
    :meth:`~latentqa.reader.Reader.generate_ids`), with rows that cannot differ generated once.

    A row given all-zero vectors holds nothing of its dialog: its prompt is fixed by the
    vectors' shape and dtype and its question, so such rows (``lit_zeroed`` in the
    evaluations) are generated once per (shape, dtype, question) and the answer shared.
    Other rows are generated as they come, in their order.
    """
    keys: list[tuple] = []
    first: dict[tuple, int] = {}
    for index, (v, question) in enumerate(zip(vectors, questions, strict=True)):
        key = ("zeros", tuple(v.shape), v.dtype, question) if not v.any() else (index,)
        first.setdefault(key, index)
        keys.append(key)
    rows = list(first.values())
    ids = generate([vectors[i] for i in rows], [questions[i] for i in rows], *args, **kwargs)
    found = dict(zip(first, ids, strict=True))
    return [found[key] for key in keys]


def answer_texts(decoder: LoadedDecoder, rows: Sequence[list[int]]) -> list[str]:
    """Answers' token ids decoded, without special tokens, stripped."""
    return [decoder.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in rows]


def ask_vectors(
    decoder: LoadedDecoder,
    vectors: torch.Tensor,
    questions: str | Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
) -> list[str]:
    """Answer questions about already-read vectors ``[n, d_model]`` (e.g. zeroed, shuffled)."""
    items = check_questions(questions)
    rows = generate_ids(decoder, [vectors] * len(items), items, max_new_tokens, temperature)
    return answer_texts(decoder, rows)
