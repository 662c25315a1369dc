"""A verbalizer phase: the decoder learns to read a bag of words before it reads a target.

With ``--verbalize-steps N`` the first ``N`` optimizer steps give the decoder no read at
all. Each example's soft tokens are instead the decoder's own mean input embedding of
its dialog's masked text (the hidden system prompt or control turn, else its answer:
:attr:`latentqa.train.prepare.PreparedData.fit_texts`), the very target a fitted
projector maps a read toward (:mod:`latentqa.train.projector_fit`). The LoRA thus learns
to turn such a vector into words from a clean signal, with no target pass; the steps
after it train the LoRA and the projector on the real, projected reads.

:class:`TextVectorSource` serves these vectors through the same ``get`` a
:class:`latentqa.train.activations.ActivationSource` offers, so the batch layout is the
one real reads get.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.decoder.projector import text_soft_tokens
from latentqa.errors import LatentQAError


class TextVectorSource:
    """Per training dialog, its masked text's mean input embedding, one copy per slot.

    The vectors are scaled by one factor, so that their median norm is the median norm
    of a token embedding: what a fitted projector's outputs are scaled to.

    Args:
        embeddings: The decoder's input embeddings.
        tokenizer: The decoder's tokenizer.
        texts: Per dialog index, its text (see ``PreparedData.fit_texts``).
        n_slots: Soft tokens per read (read layers x poolings).
    """

    def __init__(
        self,
        embeddings: nn.Embedding,
        tokenizer: PreTrainedTokenizerBase,
        texts: Mapping[int, str],
        n_slots: int,
    ) -> None:
        self.dialogs = sorted(d for d, text in texts.items() if text.strip())
        if not self.dialogs:
            raise LatentQAError("--verbalize-steps needs training dialogs with a masked text")
        # [n_dialogs, d_model]
        vectors = text_soft_tokens(embeddings, tokenizer, [texts[d] for d in self.dialogs])
        self.vectors = vectors.to(embeddings.weight.device)  # moved once, not per batch
        self.row = {dialog: row for row, dialog in enumerate(self.dialogs)}
        self.n_slots = n_slots

    def get(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """``[n_slots, d_model]`` per dialog index: its vector repeated for every slot.

        Raises:
            LatentQAError: A dialog without a masked text or answer.
        """
        missing = [i for i in indices if i not in self.row]
        if missing:
            raise LatentQAError(f"dialog {missing[0]} has no text to verbalize")
        return [self.vectors[self.row[i]].expand(self.n_slots, -1) for i in indices]


def verbalizing(step: int, verbalize_steps: int) -> bool:
    """Whether optimizer step ``step`` (0-based) is one of the verbalizer phase."""
    return step < verbalize_steps
