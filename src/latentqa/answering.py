"""Generating answers with a decoder: the generation half of :class:`latentqa.reader.Reader`.

:class:`ReaderGeneration` (mixed into the reader) patches read vectors into the
decoder's prompt pass and decodes answers from the KV cache; :func:`stop_token_ids`
finds the tokens that end an answer (eos and the chat template's end-of-turn token) and
:func:`context_length` the model's context (both also used by steering).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from latentqa.decoder.inputs import decoder_batch
from latentqa.errors import LatentQAError
from latentqa.models import unwrap_causal_lm
from latentqa.patch import patch_activations
from latentqa.questions import check_questions


class ReaderGeneration:
    """Generation methods of :class:`latentqa.reader.Reader`.

    A mixin: it uses the reader's ``model``, ``tokenizer``, ``spec``, ``device``,
    ``layers_path``, ``hidden_size``, ``_context``, ``_pad_id`` and ``_stop_ids``.
    """

    def _check_length(self, length: int, what: str) -> None:
        if self._context is not None and length > self._context:
            raise LatentQAError(
                f"{what} is {length} tokens, longer than the model's context of "
                f"{self._context} tokens; shorten it"
            )

    def _check_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        if not isinstance(vectors, torch.Tensor) or vectors.dim() != 2 or len(vectors) < 1:
            shape = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors)
            raise LatentQAError(f"vectors must be a [n, d_model] tensor with n >= 1, got {shape}")
        if vectors.shape[-1] != self.hidden_size:
            raise LatentQAError(
                f"vectors have size {vectors.shape[-1]} but the decoder's hidden size is "
                f"{self.hidden_size}: they come from another model"
            )
        return vectors.to(self.device)

    @torch.no_grad()
    def generate_ids(
        self,
        vectors: Sequence[torch.Tensor],
        questions: Sequence[str],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        batch_size: int = 32,
    ) -> list[list[int]]:
        """Answer token ids, up to the first stop token, per (vectors, question) row.

        ``vectors[i]`` (``[n_i, d_model]``) is patched into the prompt pass of row ``i``
        only; later tokens come from the KV cache. Rows run in left-padded batches.
        """
        questions = check_questions(questions)
        if len(vectors) != len(questions):
            raise LatentQAError(f"{len(vectors)} vector sets for {len(questions)} questions")
        if max_new_tokens < 1 or temperature < 0:
            raise LatentQAError(
                f"need max_new_tokens >= 1, temperature >= 0; got {max_new_tokens}, {temperature}"
            )
        vectors = [self._check_vectors(v) for v in vectors]
        # Plain temperature sampling (no top-k / top-p from the model's generation config).
        if temperature > 0:
            sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        else:
            sampling = dict(do_sample=False)
        causal_lm = unwrap_causal_lm(self.model)
        answers: list[list[int]] = []
        for start in range(0, len(questions), batch_size):
            rows = slice(start, start + batch_size)
            batch, flat = decoder_batch(self.tokenizer, vectors[rows], questions[rows])
            batch = batch.to(self.device)  # ids and masks [rows, width]; flat [n, d_model]
            width = batch.input_ids.shape[1]
            self._check_length(width + max_new_tokens, "the decoder prompt plus max_new_tokens")
            with patch_activations(
                causal_lm,
                self.spec.write_layer,
                batch.placeholder_mask,
                flat,
                self.spec.mode,
                blocks=self.handle.blocks,
            ):
                output = self.model.generate(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=self._stop_ids,
                    pad_token_id=self._pad_id,
                    use_cache=True,
                    **sampling,
                )  # [rows, width + n_new]
            answers += [self._until_stop(row) for row in output[:, width:].tolist()]
        return answers

    def _until_stop(self, ids: list[int]) -> list[int]:
        stops = [i for i, token in enumerate(ids) if token in self._stop_ids]
        return ids[: stops[0]] if stops else ids

    def _texts(self, rows: list[list[int]]) -> list[str]:
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in rows]

    def ask_vectors(
        self,
        vectors: torch.Tensor,
        questions: str | Sequence[str],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
    ) -> list[str]:
        """Answer questions about already-read vectors ``[n, d_model]`` (e.g. zeroed, shuffled)."""
        items = check_questions(questions)
        rows = self.generate_ids([vectors] * len(items), items, max_new_tokens, temperature)
        return self._texts(rows)
