"""Ask a trained decoder questions about a target model's activations on a dialog.

A :class:`Reader` works through ONE :class:`~latentqa.decoder.loaded.LoadedDecoder`:
one copy of the weights, the target with the decoder's LoRA adapters, read with the
adapters disabled (as in training). A dialog is read once for all questions; generation
patches the prompt pass only and decodes from the KV cache. :meth:`Reader.base` is the
same reader without an adapter (a training-free, SelfIE / Patchscope-style baseline);
``vectors_transform`` lets evaluations zero or shuffle the activations; ``ask(...,
evidence=True)`` also says whether each answer was read or guessed
(:class:`~latentqa.scoring.Answer`). With a ``subject``, only that text's tokens in the
last user turn are read (as ``shipped:relations`` expects). Generation:
:mod:`latentqa.answering`; scoring, evidence: :mod:`latentqa.scoring`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import torch

from latentqa import answering, scoring
from latentqa.answering import AskOptions, VectorsTransform
from latentqa.capture import read_encoded
from latentqa.chat import (
    EncodedDialog,
    Message,
    Subjects,
    encode_dialog,
    encode_subject,
    subject_span,
    validate_dialog,
)
from latentqa.data.references import reference_dialogs
from latentqa.decoder.contrast import read_contrasted
from latentqa.decoder.folder import DecoderSpec
from latentqa.decoder.loaded import DecoderHolder, LoadedDecoder, decoder_method
from latentqa.errors import LatentQAError
from latentqa.handle import TargetHandle
from latentqa.layers import check_layer_index, resolve_read_layers
from latentqa.models import EMBEDDED_MODEL, load_model
from latentqa.patch import PATCH_MODES
from latentqa.questions import check_questions
from latentqa.scoring import Answer

if TYPE_CHECKING:
    from typing_extensions import Unpack

T = TypeVar("T")


def _per_dialog(flat: list[T], width: int) -> list[list[T]]:
    """Dialog-major rows regrouped: ``width`` consecutive rows per dialog."""
    return [flat[i : i + width] for i in range(0, len(flat), width)]


class Reader(DecoderHolder):
    """A decoder (target + LoRA adapters, or the bare target) reading the target's activations.

    Build one with :meth:`load` (a decoder folder), :meth:`base` (no adapter) or
    ``Reader(LoadedDecoder.from_model(model, tokenizer, spec))`` (a model in hand).

    Args:
        decoder: The loaded decoder it reads and answers through.
    """

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
        :class:`latentqa.decoder.folder.DecoderSpec`, :meth:`load` and
        :meth:`LoadedDecoder.from_model <latentqa.decoder.loaded.LoadedDecoder.from_model>`.
        """
        if mode not in PATCH_MODES:
            raise LatentQAError(
                f"unknown injection mode {mode!r}; use one of {', '.join(PATCH_MODES)}"
            )
        if max_read_tokens < 1:
            raise LatentQAError(f"max_read_tokens must be at least 1, got {max_read_tokens}")
        model, tokenizer = load_model(target, device=device, dtype=dtype)
        handle = TargetHandle.resolve(model, tokenizer, layers_path)
        n_layers = handle.n_layers
        spec = DecoderSpec(
            target=str(target),
            read_layers=resolve_read_layers(read_layers, n_layers),
            write_layer=check_layer_index(write_layer, n_layers, "write layer"),
            mode=mode,
            max_read_tokens=max_read_tokens,
            pool=pool,
            hidden_size=int(model.config.hidden_size),
            n_layers=n_layers,
        )
        return cls(LoadedDecoder(handle, spec, target_name=str(target)))

    @classmethod
    def base_like(
        cls,
        spec: DecoderSpec,
        target: str = EMBEDDED_MODEL,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
    ) -> Reader:
        """:meth:`base` reading as ``spec``'s decoder does (its read and write layers, mode,
        kept tokens and pooling): the untrained baseline an evaluation sets beside it."""
        return cls.base(
            target,
            read_layers=spec.read_layers,
            write_layer=spec.write_layer,
            mode=spec.mode,
            max_read_tokens=spec.max_read_tokens,
            pool=spec.pool,
            device=device,
            dtype=dtype,
        )

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
        self.decoder.check_length(len(encoded.input_ids), "the dialog")
        return encoded

    def reads_for(
        self,
        dialogs: Sequence[Sequence[Message]],
        reads: Sequence[torch.Tensor] | None,
        *args,
        **kwargs,
    ) -> list[torch.Tensor]:
        """``reads`` checked (one per dialog); ``None``: :meth:`read_many` with the rest."""
        if reads is None:
            return self.read_many(dialogs, *args, **kwargs)
        if len(reads) != len(dialogs):
            raise LatentQAError(f"{len(reads)} reads for {len(dialogs)} dialogs: one each")
        return list(reads)

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
        # each span [n_layers, span, d_model] -> [n_layers * kept, d_model] (or pooled,
        # projected: a projector reads only the decoder's own layers)
        return [self.decoder.inputs(span, layers) for span in spans]

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
        way: a probe's mean, Patchscope's last token); a contrast decoder's: ``[n_layers, 1,
        d_model]`` (:func:`~latentqa.decoder.contrast.read_contrasted`)."""
        if len(subject) != len(dialogs):
            raise LatentQAError(f"{len(subject)} subjects for {len(dialogs)} dialogs")
        encoded = [self.encode(d, s) for d, s in zip(dialogs, subject, strict=True)]
        spans = self.read_encoded(encoded, layers, batch_size)
        if self.spec.read_contrast == "none":
            return spans
        read = partial(self.read_encoded, layers=layers, batch_size=batch_size)
        return read_contrasted(dialogs, subject, spans, self.encode, read, self.spec)

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
                    self.model, chunk, self.decoder.pad_id, layers, blocks=self.blocks
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
        *,
        subject: str | None = None,
        evidence: bool = False,
        **options: Unpack[AskOptions],
    ) -> list[str] | list[Answer]:
        """Answer each question about the target's activations on ``dialog`` (read once).

        Args:
            dialog: ``{"role", "content"}`` messages; a leading system prompt is masked.
            questions: The questions (a single string counts as one).
            subject: Read only the tokens of this text in the last user turn (for
                decoders trained on subject tokens, e.g. ``"France"`` in ``"Tell me about
                France."`` for ``shipped:relations``); ``None``: the whole dialog after
                the system prompt.
            evidence: Also weigh each answer against zeroed activations: after
                generation it is scored twice, with the vectors it was generated from and
                with zeros of the same shape (one batched decoder pass per condition);
                an answer whose evidence exceeds
                :data:`~latentqa.scoring.EVIDENCE_THRESHOLD` was *read* from the
                activations, otherwise *guessed* from the question.
            **options: ``max_new_tokens`` (64), ``temperature`` (0: greedy), ``layer``
                (read this block instead of the decoder's read layers),
                ``vectors_transform`` (applied to the read vectors ``[n, d_model]``
                first; the zeroed condition uses zeros of the transformed shape) and
                ``batch_size`` (32): see :class:`~latentqa.answering.AskOptions`.

        Returns:
            One answer per question: plain strings, or with ``evidence`` one
            :class:`~latentqa.scoring.Answer` each (``str(answer)`` is the same text).
        """
        return self.ask_many([dialog], questions, subject=subject, evidence=evidence, **options)[0]

    def ask_many(
        self,
        dialogs: Sequence[Sequence[Message]],
        questions: str | Sequence[str],
        *,
        subject: Subjects = None,
        evidence: bool = False,
        reads: Sequence[torch.Tensor] | None = None,
        **options: Unpack[AskOptions],
    ) -> list[list[str]] | list[list[Answer]]:
        """Ask every question about every dialog (see :meth:`ask`): ``[dialog][question]``.

        Each dialog is read once; the answers run in batches of ``batch_size`` rows,
        dialog-major. ``subject`` is one text for every dialog or one per dialog (see
        :meth:`read_many`). ``reads``: the dialogs' vectors from :meth:`read_many` with
        the same ``layer`` and ``subject``, when the caller has them (not read again).

        Raises:
            LatentQAError: Bad dialogs, questions, subject, layer or settings.
            TypeError: An option that is not one of :class:`~latentqa.answering.AskOptions`.
        """
        answering.check_ask_options(options)
        items = check_questions(questions)
        batch_size = options.get("batch_size", 32)
        vectors = self.reads_for(dialogs, reads, options.get("layer"), batch_size, subject=subject)
        if (transform := options.get("vectors_transform")) is not None:
            vectors = [transform(v) for v in vectors]
        rows = [v for v in vectors for _ in items]  # dialog-major: every question per dialog
        row_questions = items * len(vectors)
        max_new_tokens = options.get("max_new_tokens", 64)
        temperature = options.get("temperature", 0.0)
        ids = answering.generate_ids(
            self.decoder, rows, row_questions, max_new_tokens, temperature, batch_size
        )
        texts = answering.answer_texts(self.decoder, ids)
        if evidence:
            # Subject reads (a name's tokens) have no like-for-like reference dialogs:
            # their evidence stays real vs zeroed.
            refs = None if subject is not None else self.reference_reads(options.get("layer"))
            weighed = scoring.evidence_rows(
                self.decoder, rows, row_questions, texts, batch_size, refs, self.read_threshold
            )
            return _per_dialog(weighed, len(items))
        return _per_dialog(texts, len(items))

    def reference_reads(self, layer: int | None = None) -> list[torch.Tensor]:
        """The reads of :func:`reference_dialogs` (once per reader and layer): an answer's
        evidence is its likelihood given the dialog's read minus its mean over these."""
        cache = self.__dict__.setdefault("_reference_reads", {})
        if layer not in cache:
            cache[layer] = self.read_many(reference_dialogs(), layer)
        return cache[layer]

    @property
    def read_threshold(self) -> float:
        """Evidence above which an answer is marked read: the decoder's calibrated
        ``read_threshold`` (in its ``latentqa.json``) or
        :data:`~latentqa.scoring.EVIDENCE_THRESHOLD`."""
        value = self.spec.extra.get("read_threshold")
        return float(value) if isinstance(value, (int, float)) else scoring.EVIDENCE_THRESHOLD

    def score(
        self,
        dialog: Sequence[Message],
        question: str,
        answers: Sequence[str],
        normalize: bool = False,
        layer: int | None = None,
        *,
        vectors_transform: VectorsTransform | None = None,
        subject: str | None = None,
    ) -> list[float]:
        """Log-likelihood (sum of log-probs) of each candidate answer to ``question``.

        One target read and one decoder forward over all candidates; ``normalize`` is as
        in :func:`~latentqa.scoring.score_vectors`, ``layer``, ``vectors_transform`` and
        ``subject`` as in :meth:`ask`.
        """
        (question,) = check_questions([question])
        scoring.check_answers(answers)  # before the read: bad input fails fast
        vectors = self.read(dialog, layer, subject=subject)
        if vectors_transform is not None:
            vectors = vectors_transform(vectors)
        return scoring.score_vectors(self.decoder, vectors, question, answers, normalize)

    # Functions of the decoder, as methods: vectors already read (zeroed, shuffled, ...).

    generate_ids = decoder_method(answering.generate_ids)
    ask_vectors = decoder_method(answering.ask_vectors)
    score_rows = decoder_method(scoring.score_rows)
    score_rows_shared = decoder_method(scoring.score_rows_shared)
    reference_scores = decoder_method(scoring.reference_scores)
    score_vectors = decoder_method(scoring.score_vectors)
    yes_no_margins = decoder_method(scoring.yes_no_margins)
    evidence_vectors = decoder_method(scoring.evidence_rows)
