"""Ask a trained decoder questions about a target model's activations on a dialog.

A :class:`Reader` holds ONE copy of the weights: the target with the decoder's LoRA
adapters, read with the adapters disabled (as in training). A dialog is read once for
all questions; generation patches the prompt pass only and decodes from the KV cache.
:meth:`Reader.base` is the same reader without an adapter (a training-free,
SelfIE / Patchscope-style baseline); the ``*_vectors`` methods and
``vectors_transform`` let evaluations zero or shuffle the activations.
:meth:`Reader.ask_with_evidence` also reports, per answer, whether it was read from the
activations or could be guessed from the question alone (see :class:`Answer`).

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

from latentqa.chat import EncodedDialog, Message, encode_dialog, render, validate_dialog
from latentqa.decoder import (
    ADAPTER_FILES,
    DecoderSpec,
    decoder_batch,
    decoder_inputs,
    load_decoder,
    open_decoder_folder,
    unwrap_causal_lm,
)
from latentqa.errors import LatentQAError
from latentqa.evidence import EVIDENCE_THRESHOLD, Answer, ReaderScoring, VectorsTransform
from latentqa.handle import TargetHandle
from latentqa.layers import check_layer_index
from latentqa.models import EMBEDDED_MODEL, load_model
from latentqa.patch import PATCH_MODES, patch_activations
from latentqa.preflight import check_questions
from latentqa.read import pad_token_id, read_encoded

# Re-exported: older imports of these names from here keep working.
__all__ = ["ADAPTER_FILES", "EVIDENCE_THRESHOLD", "Answer", "Reader", "open_decoder_folder"]

_ANSWER_MARKER = "\u2063LATENTQA-ANSWER\u2063"


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: nn.Module) -> list[int]:
    """Token ids that end an answer: eos, and the chat template's end-of-turn token.

    The end-of-turn token is found by rendering an assistant turn and taking the first
    token after its content when that token is a special / added token.
    """
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates = [tokenizer.eos_token_id, *(eos if isinstance(eos, (list, tuple)) else [eos])]
    ids = {int(c) for c in candidates if c is not None}
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _ANSWER_MARKER}]
    tail = render(tokenizer, turns, False).partition(_ANSWER_MARKER)[2]
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    if tail_ids and tail_ids[0] in special:
        ids.add(int(tail_ids[0]))
    return sorted(ids)


def _context_length(model: nn.Module) -> int | None:
    config = unwrap_causal_lm(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if value else None


class Reader(ReaderScoring):
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
        self._context = _context_length(model)

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

    def _check_length(self, length: int, what: str) -> None:
        if self._context is not None and length > self._context:
            raise LatentQAError(
                f"{what} is {length} tokens, longer than the model's context of "
                f"{self._context} tokens; shorten it"
            )

    def encode(self, dialog: Sequence[Message]) -> EncodedDialog:
        """Tokenize a dialog with its read span (a leading system prompt is masked, and so is
        a default system prompt the chat template adds to a dialog without one)."""
        messages = validate_dialog(dialog)
        n_masked = 1 if messages[0]["role"] == "system" else 0
        # Without a system message, a template's default system prompt is left out too:
        # the read span then starts where it would after a (masked) system prompt.
        encoded = encode_dialog(self.tokenizer, messages, n_masked, mask_default_system=True)
        self._check_length(len(encoded.input_ids), "the dialog")
        return encoded

    @torch.no_grad()
    def read_many(
        self, dialogs: Sequence[Sequence[Message]], layer: int | None = None, batch_size: int = 16
    ) -> list[torch.Tensor]:
        """The target's read vectors for each dialog, ``[n_read_layers * kept, d_model]``.

        Args:
            dialogs: Lists of ``{"role", "content"}`` messages.
            layer: Read this block instead of the spec's read layers.
            batch_size: Dialogs per target forward pass.
        """
        if not isinstance(dialogs, (list, tuple)) or not dialogs:
            raise LatentQAError("pass at least one dialog (a list of message lists)")
        encoded = [self.encode(dialog) for dialog in dialogs]
        layers = self.spec.read_layers if layer is None else [layer]
        layers = [check_layer_index(item, self.n_layers, "read layer") for item in layers]
        vectors: list[torch.Tensor] = []
        with self.handle.target():
            for start in range(0, len(encoded), batch_size):
                chunk = encoded[start : start + batch_size]
                spans = read_encoded(
                    self.model, chunk, self._pad_id, layers, layers_path=self.layers_path
                )
                # each span [n_layers, span, d_model] -> [n_layers * kept, d_model]
                vectors += [decoder_inputs(span, self.spec) for span in spans]
        return vectors

    def read(self, dialog: Sequence[Message], layer: int | None = None) -> torch.Tensor:
        """The target's read vectors for one dialog, ``[n_read_layers * kept, d_model]``."""
        return self.read_many([dialog], layer)[0]

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

    # Asking questions.

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
                layers_path=self.layers_path,
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
    ) -> list[list[str]]:
        """Ask every question about every dialog (see :meth:`ask`): ``[dialog][question]``."""
        _, _, flat, width = self._answer_rows(
            dialogs, questions, max_new_tokens, temperature, layer, vectors_transform, batch_size
        )
        return [flat[i : i + width] for i in range(0, len(flat), width)]

    def _answer_rows(
        self, dialogs, questions, max_new_tokens, temperature, layer, vectors_transform, batch_size
    ) -> tuple[list[torch.Tensor], list[str], list[str], int]:
        """Read every dialog once, answer every question: (row vectors, row questions,
        answer texts, questions per dialog), rows dialog-major."""
        items = check_questions(questions)
        vectors = self.read_many(dialogs, layer, batch_size)
        if vectors_transform is not None:
            vectors = [vectors_transform(v) for v in vectors]
        rows = [v for v in vectors for _ in items]  # dialog-major: every question per dialog
        row_questions = items * len(vectors)
        ids = self.generate_ids(rows, row_questions, max_new_tokens, temperature, batch_size)
        return rows, row_questions, self._texts(ids), len(items)
