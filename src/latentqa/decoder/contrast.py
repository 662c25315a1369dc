"""Contrast reads: what a dialog's system prompt adds to the target's read.

A decoder trained with ``--read-contrast no-system`` reads, instead of a dialog's pooled
vectors, those vectors minus the pooled vectors of the same dialog without its system
prompt: the turn an auditor can always replay with nothing hidden. What the dialog's own
text puts into the read cancels; what the hidden prompt adds remains. A ridge probe on
the difference picks the hidden prompt among 5 far more often than on the plain read
(docs/decoder-experiments.md, "what the hidden prompt adds to the read").

A dialog without a system prompt reads zeros: nothing was hidden.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from latentqa.chat import EncodedDialog
from latentqa.decoder.folder import DecoderSpec, check_contrast
from latentqa.decoder.inputs import flatten_reads
from latentqa.errors import LatentQAError

Dialog = list[dict[str, str]]


def without_system(dialog: Sequence[dict[str, str]]) -> Dialog:
    """The same messages with no leading system message (what reading the turn with
    nothing hidden sees: ``no_system_prompt``, and a contrast read's baseline)."""
    messages = list(dialog)
    return messages[1:] if messages and messages[0]["role"] == "system" else messages


def has_system(dialog: Sequence[dict[str, str]]) -> bool:
    """Whether the dialog starts with a system message (its contrast is not zero)."""
    return bool(dialog) and dialog[0]["role"] == "system"


def check_plain_reads(contrast: str, what: str) -> None:
    """Refuse a contrast decoder where reads have no system prompt to contrast.

    Raises:
        LatentQAError: ``contrast`` is not ``none``.
    """
    if contrast != "none":
        raise LatentQAError(
            f"{what} reads turns without a system prompt, where a decoder trained with "
            f"--read-contrast {contrast} reads only zeros: use a decoder trained without it"
        )


def read_contrasted(
    dialogs: Sequence[Sequence[dict[str, str]]],
    subjects: Sequence[str | None],
    spans: Sequence[torch.Tensor],
    encode: Callable[[Dialog, str | None], EncodedDialog],
    read: Callable[[list[EncodedDialog]], list[torch.Tensor]],
    spec: DecoderSpec,
) -> list[torch.Tensor]:
    """Each dialog's contrast span (:func:`contrast_span`) from its read ``spans``: the
    dialogs that have a system prompt are encoded (each with its subject) and read again
    without it; the others read zeros."""
    hidden = [i for i, dialog in enumerate(dialogs) if has_system(dialog)]
    twins = [encode(without_system(dialogs[i]), subjects[i]) for i in hidden]
    baselines = dict(zip(hidden, read(twins) if twins else [], strict=True))
    return [
        contrast_span(span, baselines.get(i), spec.max_read_tokens, spec.pool)
        for i, span in enumerate(spans)
    ]


def contrast_span(
    span: torch.Tensor, baseline: torch.Tensor | None, max_read_tokens: int, pool: str
) -> torch.Tensor:
    """The pooled difference of two reads as a one-position span.

    ``[n_layers, span, d_model]`` and the baseline's ``[n_layers, span', d_model]`` (or
    ``None``: nothing hidden, zeros) -> ``[n_layers, 1, d_model]``. Mean or last of one
    position is that position, so the decoder's own pooling returns the difference
    unchanged and everything after it (standardizing, the projector) is as for any read.
    """
    check_contrast("no-system", pool)
    pooled = flatten_reads(span, max_read_tokens, pool)  # [n_layers, d_model]
    if baseline is None:
        return torch.zeros_like(pooled).unsqueeze(1)
    return (pooled - flatten_reads(baseline, max_read_tokens, pool)).unsqueeze(1)
