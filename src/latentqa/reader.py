"""Ask a trained decoder questions about a target model's activations on a dialog.

A :class:`Reader` holds ONE copy of the weights: the target with the decoder's LoRA
adapters, read with the adapters disabled (as in training). A dialog is read once for
all questions; generation patches the prompt pass only and decodes from the KV cache.
:meth:`Reader.base` is the same reader without an adapter (a training-free,
SelfIE / Patchscope-style baseline); the ``*_vectors`` methods and
``vectors_transform`` let evaluations zero or shuffle the activations.
:meth:`Reader.ask_with_evidence` also reports, per answer, whether it was read from the
activations or could be guessed from the question alone (see :class:`Answer`).
With a ``subject``, only that text's tokens in the last user turn are read (as the
shipped ``relations`` decoder, trained on a country name's tokens, expects).

Scoring and evidence live in :mod:`latentqa.evidence`, decoder folders in
:mod:`latentqa.decoder` (both re-exported here); adapters are switched through the
reader's :class:`~latentqa.handle.TargetHandle`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.answering import ReaderGeneration
from latentqa.capture import pad_token_id, read_encoded
from latentqa.chat import (
    EncodedDialog,
    Message,
    Subjects,
    check_subject,
    encode_dialog,
    encode_subject,
    subject_span,
    validate_dialog,
)
from latentqa.decoder.folder import ADAPTER_FILES, DecoderSpec, load_decoder, open_decoder_folder
from latentqa.decoder.inputs import decoder_inputs
from latentqa.errors import LatentQAError
from latentqa.generation import context_length, stop_token_ids
from latentqa.handle import TargetHandle
from latentqa.layers import check_layer_index
from latentqa.models import EMBEDDED_MODEL, load_model, unwrap_causal_lm
from latentqa.patch import PATCH_MODES
from latentqa.questions import check_questions
from latentqa.scoring import EVIDENCE_THRESHOLD, Answer, ReaderScoring, VectorsTransform

# Re-exported: older imports of these names from here keep working.
__all__ = [
    "ADAPTER_FILES",
    "EVIDENCE_THRESHOLD",
    "Answer",
    "Reader",
    "check_subject",
    "encode_subject",
    "open_decoder_folder",
    "stop_token_ids",
]


class Reader(ReaderGeneration, ReaderScoring):
    """A decoder (target + LoRA adapters, or the bare target) reading the target's activations.

    Args:
        model: A peft model (target with the decoder's adapters) or a bare causal LM.
        tokenizer: The target's tokenizer, with a chat template.
        spec: How the decoder reads: read / write layers, mode, max_read_tokens.
        decoder_path: The decoder folder, or ``None`` without an adapter.
        target_name: The target's model spec, for reports.
        layers_path: Optional dotted path of the decoder block list.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        spec: DecoderSpec,
        *,
        decoder_path: Path | None = None,
        target_name: str | None = None,
        layers_path: str | None = None,
    ) -> None:
        from peft import PeftModel

        self.handle = TargetHandle.resolve(model.eval(), tokenizer, layers_path)
        """The model, its blocks and the one way to switch its adapters."""
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.decoder_path = decoder_path
        self.target_name = target_name if target_name is not None else spec.target
        self.layers_path = layers_path
        self.has_adapter = isinstance(model, PeftModel)
        self.n_layers = self.handle.n_layers
        self.hidden_size = int(unwrap_causal_lm(model).config.hidden_size)
        self.device = next(model.parameters()).device
        self._pad_id = pad_token_id(tokenizer)
        self._stop_ids = stop_token_ids(tokenizer, unwrap_causal_lm(model))
        self._context = context_length(model)

    @classmethod
    def load(
        cls,
        target: str = EMBEDDED_MODEL,
        decoder: str | Path | None = None,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
    ) -> Reader:
        """Load the target once and attach a trained decoder's adapters to it.

        Args:
            target: Model spec of the target (see :func:`latentqa.models.load_model`).
            decoder: A folder written by ``latentqa train``; ``None``: the decoder shipped
                for the embedded model.
            device: ``auto``, ``cpu``, ``cuda[:N]``.
            dtype: The frozen weights' dtype.

        Raises:
            LatentQAError: Missing or malformed decoder folder, or a decoder trained on
                another target.
        """
        handle, spec, folder = load_decoder(target, decoder, device=device, dtype=dtype)
        return cls(
            handle.model,
            handle.tokenizer,
            spec,
            decoder_path=folder,
            target_name=str(target),
            layers_path=handle.layers_path,
        )

    @classmethod
    def base(
        cls,
        target: str = EMBEDDED_MODEL,
        *,
        read_layers: Sequence[int] | None = None,
        write_layer: int = 0,
        mode: str = "replace",
        max_read_tokens: int = 96,
        pool: str = "none",
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        layers_path: str | None = None,
    ) -> Reader:
        """The untrained target reading its own activations, no adapter (a baseline).

        ``read_layers`` defaults to half depth; the other arguments are as in
        :class:`latentqa.decoder.DecoderSpec` and :meth:`load`.
        """
        if mode not in PATCH_MODES:
            raise LatentQAError(
                f"unknown injection mode {mode!r}; use one of {', '.join(PATCH_MODES)}"
            )
        if max_read_tokens < 1:
            raise LatentQAError(f"max_read_tokens must be at least 1, got {max_read_tokens}")
        model, tokenizer = load_model(target, device=device, dtype=dtype)
        n_layers = TargetHandle.resolve(model, tokenizer, layers_path).n_layers
        layers = [n_layers // 2] if read_layers is None else list(read_layers)
        spec = DecoderSpec(
            target=str(target),
            read_layers=[check_layer_index(layer, n_layers, "read layer") for layer in layers],
            write_layer=check_layer_index(write_layer, n_layers, "write layer"),
            mode=mode,
            max_read_tokens=max_read_tokens,
            pool=pool,
            hidden_size=int(model.config.hidden_size),
            n_layers=n_layers,
        )
        return cls(model, tokenizer, spec, target_name=str(target), layers_path=layers_path)

    # Reading the target.

    def encode(self, dialog: Sequence[Message], subject: str | None = None) -> EncodedDialog:
        """Tokenize a dialog with its read span.

        Args:
            dialog: ``{"role", "content"}`` messages.
            subject: Read only the tokens of this text's last occurrence in the last user
                turn (see :func:`encode_subject`); ``None``: a leading system prompt is
                masked, and so is a default system prompt the chat template adds to a
                dialog without one, and everything after it is read; for a decoder
                trained on replies (``reads: reply`` in its latentqa.json), a dialog
                ending with an assistant turn is read on that reply only.

        Raises:
            LatentQAError: A malformed dialog, a subject not in the last user turn, or a
                dialog longer than the model's context.
        """
        messages = validate_dialog(dialog)
        if subject is not None:
            encoded = encode_subject(self.tokenizer, messages, subject)
        elif self.spec.extra.get("reads") == "reply" and messages[-1]["role"] == "assistant":
            # A decoder trained on replies only (shipped:control) reads the last reply.
            encoded = subject_span(self.tokenizer, messages, messages[-1]["content"].strip())
        else:
            n_masked = 1 if messages[0]["role"] == "system" else 0
            # Without a system message, a template's default system prompt is left out
            # too: the read span starts where it would after a (masked) system prompt.
            encoded = encode_dialog(self.tokenizer, messages, n_masked, mask_default_system=True)
        self._check_length(len(encoded.input_ids), "the dialog")
        return encoded

    @torch.no_grad()
    def read_many(
        self,
        dialogs: Sequence[Sequence[Message]],
        layer: int | None = None,
        batch_size: int = 16,
        *,
        subject: Subjects = None,
    ) -> list[torch.Tensor]:
        """The target's read vectors for each dialog, ``[n_read_layers * kept, d_model]``.

        Args:
            dialogs: Lists of ``{"role", "content"}`` messages.
            layer: Read this block instead of the spec's read layers.
            batch_size: Dialogs per target forward pass.
            subject: Read only the tokens of this text in each dialog's last user turn
                (for decoders trained on subject tokens, such as ``shipped:relations``):
                one text for every dialog, or one per dialog (``None`` items read the
                whole dialog); ``None``: read everything after the system prompt.

        Returns:
            One ``[n_read_layers * kept, d_model]`` tensor per dialog, read layers first:
            with a subject, its tokens' vectors of each read layer in turn.

        Raises:
            LatentQAError: No dialogs, a subject list of another length, a subject that
                is not in a dialog's last user turn, or a layer out of range.
        """
        if not isinstance(dialogs, (list, tuple)) or not dialogs:
            raise LatentQAError("pass at least one dialog (a list of message lists)")
        one = subject is None or isinstance(subject, str)
        subjects = [subject] * len(dialogs) if one else list(subject)
        if len(subjects) != len(dialogs):
            raise LatentQAError(
                f"{len(subjects)} subjects for {len(dialogs)} dialogs: pass one per dialog"
            )
        layers = self.spec.read_layers if layer is None else [layer]
        spans = self.read_spans(dialogs, layers, batch_size, subject=subjects)
        # each span [n_layers, span, d_model] -> [n_layers * kept, d_model]
        return [decoder_inputs(span, self.spec) for span in spans]

    @torch.no_grad()
    def read_spans(
        self,
        dialogs: Sequence[Sequence[Message]],
        layers: Sequence[int],
        batch_size: int = 16,
        *,
        subject: Sequence[str | None],
    ) -> list[torch.Tensor]:
        """The target's raw hidden states, ``[n_layers, span, d_model]`` per dialog: the
        tokens :meth:`read_many` reads (one subject, or ``None``, per dialog), before the
        decoder's pooling, truncation or standardization (evaluations pool them their own
        way: a probe's mean, Patchscope's last token)."""
        if len(subject) != len(dialogs):
            raise LatentQAError(f"{len(subject)} subjects for {len(dialogs)} dialogs")
        encoded = [self.encode(d, s) for d, s in zip(dialogs, subject, strict=True)]
        return self.read_encoded(encoded, layers, batch_size)

    @torch.no_grad()
    def read_encoded(
        self, encoded: Sequence[EncodedDialog], layers: Sequence[int], batch_size: int = 16
    ) -> list[torch.Tensor]:
        """Raw hidden states ``[n_layers, span, d_model]`` of already encoded dialogs (any
        read span, e.g. an assistant reply's: :func:`latentqa.steer.encode_reply`)."""
        layers = [check_layer_index(item, self.n_layers, "read layer") for item in layers]
        spans: list[torch.Tensor] = []
        with self.handle.target():
            for start in range(0, len(encoded), batch_size):
                chunk = encoded[start : start + batch_size]
                spans += read_encoded(
                    self.model, chunk, self._pad_id, layers, blocks=self.handle.blocks
                )
        return spans

    def read(
        self, dialog: Sequence[Message], layer: int | None = None, *, subject: str | None = None
    ) -> torch.Tensor:
        """The target's read vectors for one dialog, ``[n_read_layers * kept, d_model]``.

        ``layer`` and ``subject`` are as in :meth:`read_many`.
        """
        return self.read_many([dialog], layer, subject=subject)[0]

    # Asking questions.

    def ask(
        self,
        dialog: Sequence[Message],
        questions: str | Sequence[str],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        layer: int | None = None,
        *,
        vectors_transform: VectorsTransform | None = None,
        batch_size: int = 32,
        subject: str | None = None,
    ) -> list[str]:
        """Answer each question about the target's activations on ``dialog`` (read once).

        Args:
            dialog: ``{"role", "content"}`` messages; a leading system prompt is masked.
            questions: The questions (a single string counts as one).
            max_new_tokens: Answer length limit.
            temperature: 0 for greedy decoding, else sampling.
            layer: Read this target block instead of the decoder's read layers.
            vectors_transform: Applied to the read vectors ``[n, d_model]`` first.
            batch_size: Dialogs per target pass / rows per generation batch.
            subject: Read only the tokens of this text in the last user turn (for
                decoders trained on subject tokens, e.g. ``"France"`` in ``"Tell me about
                France."`` for ``shipped:relations``); ``None``: the whole dialog after
                the system prompt.

        Returns:
            One answer per question, as plain strings; :meth:`ask_with_evidence` takes the
            same arguments and also reports how much each answer owes to the activations.
        """
        answers = self.ask_many(
            [dialog],
            questions,
            max_new_tokens,
            temperature,
            layer,
            vectors_transform=vectors_transform,
            batch_size=batch_size,
            subject=subject,
        )
        return answers[0]

    def ask_many(
        self,
        dialogs: Sequence[Sequence[Message]],
        questions: str | Sequence[str],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        layer: int | None = None,
        *,
        vectors_transform: VectorsTransform | None = None,
        batch_size: int = 32,
        subject: Subjects = None,
    ) -> list[list[str]]:
        """Ask every question about every dialog (see :meth:`ask`): ``[dialog][question]``.

        ``subject`` is one text for every dialog or one per dialog (see :meth:`read_many`).
        """
        _, _, flat, width = self._answer_rows(
            dialogs,
            questions,
            max_new_tokens,
            temperature,
            layer,
            vectors_transform,
            batch_size,
            subject=subject,
        )
        return [flat[i : i + width] for i in range(0, len(flat), width)]

    def _answer_rows(
        self,
        dialogs,
        questions,
        max_new_tokens,
        temperature,
        layer,
        vectors_transform,
        batch_size,
        *,
        subject: Subjects = None,
    ) -> tuple[list[torch.Tensor], list[str], list[str], int]:
        """Read every dialog once, answer every question: (row vectors, row questions,
        answer texts, questions per dialog), rows dialog-major."""
        items = check_questions(questions)
        vectors = self.read_many(dialogs, layer, batch_size, subject=subject)
        if vectors_transform is not None:
            vectors = [vectors_transform(v) for v in vectors]
        rows = [v for v in vectors for _ in items]  # dialog-major: every question per dialog
        row_questions = items * len(vectors)
        ids = self.generate_ids(rows, row_questions, max_new_tokens, temperature, batch_size)
        return rows, row_questions, self._texts(ids), len(items)
