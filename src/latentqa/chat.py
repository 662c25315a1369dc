"""Dialogs: validation, chat-template rendering, and the read span of each dialog.

A dialog is a list of ``{"role", "content"}`` messages. The read span is the part
of the rendered dialog whose activations the decoder may see: everything after
the system prompt / control turn ("masked messages"). It is computed from the
chat template and the tokenizer's character offsets, never from constants, so
templates that fold the system prompt into the first user turn (Gemma) are
handled as well as ChatML or Llama 3. A relation fact reads only its subject's
tokens instead (:func:`subject_span`; :func:`encode_subject` checks the subject first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from latentqa.errors import LatentQAError

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


def validate_dialog(dialog: Sequence[Message], *, require_user: bool = True) -> list[Message]:
    """Check a dialog's structure and return it as a list of plain dicts.

    Raises:
        LatentQAError: on an empty dialog, a message that is not a dict with string
            ``role`` and ``content``, an unknown role, or (if ``require_user``) no user turn.
    """
    if not isinstance(dialog, (list, tuple)) or not dialog:
        raise LatentQAError("a dialog must be a non-empty list of {'role', 'content'} messages")
    messages = []
    for index, message in enumerate(dialog):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise LatentQAError(
                f"message {index} must be a dict with string 'role' and 'content', "
                f"got {message!r:.80}"
            )
        role = message.get("role")
        if role not in ROLES:
            raise LatentQAError(
                f"message {index} has unknown role {role!r}; use one of {', '.join(ROLES)}"
            )
        messages.append({"role": role, "content": message["content"]})
    if require_user and not any(m["role"] == "user" for m in messages):
        raise LatentQAError("the dialog has no user turn; add a message with role 'user'")
    return messages


def render(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], add_generation_prompt: bool
) -> str:
    """Render messages with the tokenizer's chat template as text."""
    if not getattr(tokenizer, "chat_template", None):
        raise LatentQAError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
            "latentqa needs a chat model (or set tokenizer.chat_template)"
        )
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def first_token_at(offsets: Sequence[tuple[int, int]], char_index: int) -> int:
    """Index of the first token whose character span starts at or after ``char_index``.

    A token straddling the boundary starts before it and so stays on the masked
    side: it carries characters of the masked text.
    """
    for index, (start, _end) in enumerate(offsets):
        if start >= char_index:
            return index
    return len(offsets)


@dataclass(frozen=True)
class EncodedDialog:
    """A rendered, tokenized dialog and its read span."""

    input_ids: list[int]
    """Token ids of the rendered dialog (no padding)."""
    read_start: int
    """First token of the read span; the span runs to the end of ``input_ids``."""
    text: str
    """The rendered text."""

    @property
    def read_length(self) -> int:
        return len(self.input_ids) - self.read_start


_SYSTEM_MARKER = "\u2063LATENTQA-SYSTEM\u2063"


def default_system_end(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], add_generation_prompt: bool
) -> int:
    """Where a system prompt that the template inserts by itself ends (characters), else 0.

    Some templates (SmolLM2's, Qwen's) add a default system prompt when a dialog has
    none. Rendering the dialog once more with a marker system prompt gives the text
    that follows any system prompt; when the plain rendering ends with that same
    text, everything before it is the template's default.
    """
    if not messages or messages[0]["role"] == "system":
        return 0
    marked = render(
        tokenizer, [{"role": "system", "content": _SYSTEM_MARKER}, *messages], add_generation_prompt
    )
    if marked.count(_SYSTEM_MARKER) != 1:
        return 0
    after = marked.split(_SYSTEM_MARKER)[1]
    text = render(tokenizer, messages, add_generation_prompt)
    if not (text.endswith(after) and len(text) > len(after)):
        return 0
    # A masked system prompt's boundary also covers its turn's closing tokens (see
    # encode_dialog): skip the same closing text here.
    alone = render(tokenizer, [{"role": "system", "content": _SYSTEM_MARKER}], False)
    closing = alone.split(_SYSTEM_MARKER)[1] if alone.count(_SYSTEM_MARKER) == 1 else ""
    skip = len(closing) if marked.startswith(alone) and after.startswith(closing) else 0
    return len(text) - len(after) + skip


def encode_dialog(
    tokenizer: PreTrainedTokenizerBase,
    dialog: Sequence[Message],
    n_masked: int = 0,
    add_generation_prompt: bool | None = None,
    *,
    mask_default_system: bool = False,
) -> EncodedDialog:
    """Render and tokenize a dialog, and find where its read span starts.

    Args:
        tokenizer: A tokenizer with a chat template (fast, for character offsets).
        dialog: The messages.
        n_masked: How many leading messages (system prompt, control turn) the decoder
            must not see. Their tokens, and the template tokens before them, are
            excluded from the read span; later tokens still carry their influence
            through attention, which is what the decoder has to learn to read.
        add_generation_prompt: Append the assistant header; by default when the last
            message is not the assistant's.
        mask_default_system: With no system message, also leave out a default system
            prompt that the template inserts by itself (see :func:`default_system_end`),
            so that a dialog read without its system prompt has the same read span as
            one read with it masked.

    Returns:
        The token ids and the index of the first read token.
    """
    messages = validate_dialog(dialog)
    if not 0 <= n_masked < len(messages):
        raise LatentQAError(
            f"cannot mask {n_masked} messages of a {len(messages)}-message dialog: "
            "at least one message must remain readable"
        )
    if add_generation_prompt is None:
        add_generation_prompt = messages[-1]["role"] != "assistant"
    text = render(tokenizer, messages, add_generation_prompt)
    boundary = 0
    if n_masked:
        prefix = render(tokenizer, messages[:n_masked], add_generation_prompt=False)
        if text.startswith(prefix):
            boundary = len(prefix)
        # Some templates fold the system prompt into the next turn, so the rendered
        # prefix ends before the masked text: also mask through the end of the
        # last masked message's content as found in the full text.
        cursor = 0
        for message in messages[:n_masked]:
            found = text.find(message["content"], cursor)
            if found < 0:
                raise LatentQAError(
                    "the chat template changed a masked message's text, so its tokens "
                    "cannot be located; use a template that keeps message content verbatim"
                )
            cursor = found + len(message["content"])
        boundary = max(boundary, cursor)
    elif mask_default_system:
        boundary = default_system_end(tokenizer, messages, add_generation_prompt)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"]
    read_start = first_token_at(encoded["offset_mapping"], boundary) if boundary else 0
    if read_start >= len(input_ids):
        raise LatentQAError("the dialog has nothing left to read after the masked messages")
    return EncodedDialog(input_ids=list(input_ids), read_start=read_start, text=text)


def subject_span(
    tokenizer: PreTrainedTokenizerBase, dialog: Sequence[Message], read_text: str
) -> EncodedDialog:
    """Encode ``dialog`` with the read span on the tokens of ``read_text`` only.

    ``read_text`` is found in the last message containing it; the span is every token
    whose characters overlap it. The ids are cut after the span's last token, so the
    span runs to the end as :func:`latentqa.read.read_encoded` expects; a causal target
    gives these positions the same activations as in the whole dialog.

    Raises:
        LatentQAError: ``read_text`` is empty, in no message, or covers no token.
    """
    messages = validate_dialog(dialog)
    text = render(tokenizer, messages, messages[-1]["role"] != "assistant")
    holder = next((m["content"] for m in reversed(messages) if read_text in m["content"]), None)
    if not read_text or holder is None or text.rfind(holder) < 0:
        raise LatentQAError(f"read_text {read_text!r} is not in the dialog's messages")
    start = text.rfind(holder) + holder.rfind(read_text)
    end = start + len(read_text)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
    if not inside:
        raise LatentQAError(f"read_text {read_text!r} covers no token")
    last = inside[-1]
    ids = list(encoded["input_ids"][: last + 1])
    return EncodedDialog(input_ids=ids, read_start=inside[0], text=text[: offsets[last][1]])


Subjects = str | Sequence[str | None] | None
"""``subject`` of the reading methods: one text for every dialog, one per dialog, or none."""


def check_subject(dialog: Sequence[Message], subject: str) -> list[Message]:
    """Check that ``subject`` occurs in ``dialog``'s last user turn; the dialog up to that turn
    (later turns cannot change a causal target's activations on the subject).

    Args:
        dialog: ``{"role", "content"}`` messages with at least one user turn.
        subject: Text that occurs verbatim in the last user turn, e.g. ``"France"`` in
            ``"Tell me about France."``.

    Returns:
        The validated messages, through the last user turn.

    Raises:
        LatentQAError: A malformed dialog, an empty subject, or one that does not occur
            in the last user turn.
    """
    messages = validate_dialog(dialog)
    if not isinstance(subject, str) or not subject.strip():
        raise LatentQAError(
            f"the subject must be non-empty text from the dialog's last user turn, got {subject!r}"
        )
    last_user = max(i for i, message in enumerate(messages) if message["role"] == "user")
    turn = messages[last_user]["content"]
    if subject not in turn:
        raise LatentQAError(
            f"the subject {subject!r} does not occur in the dialog's last user turn "
            f"({turn!r:.80}); pass text that occurs in it verbatim (case and spaces "
            "included), or leave the subject out to read the whole dialog"
        )
    return messages[: last_user + 1]


def encode_subject(
    tokenizer: PreTrainedTokenizerBase, dialog: Sequence[Message], subject: str
) -> EncodedDialog:
    """Encode ``dialog`` with the read span on ``subject``'s last occurrence in its last user turn.

    :func:`check_subject` checks the subject and cuts the dialog after that turn;
    :func:`latentqa.chat.subject_span` finds the tokens that overlap its characters.

    Returns:
        The encoded dialog, cut after the subject's last token; its read span is the
        subject's tokens.

    Raises:
        LatentQAError: As :func:`check_subject`.
    """
    return subject_span(tokenizer, check_subject(dialog, subject), subject)
