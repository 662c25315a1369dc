"""Request and response bodies of the JSON API, with the documented input limits.

The limits keep one request from tying up the single model for minutes or from
filling memory: a message holds at most :data:`MAX_MESSAGE_CHARS` characters and a
request body at most :data:`MAX_BODY_BYTES` bytes. Breaking a limit is a 4xx answer
with a one-line message, never a crash.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

MAX_MESSAGE_CHARS = 20_000
"""Characters in one dialog message."""
MAX_MESSAGES = 16
"""Messages in one dialog."""
MAX_QUESTIONS = 8
"""Questions in one ``/api/ask`` request."""
MAX_QUESTION_CHARS = 1_000
"""Characters in one question or candidate answer."""
MAX_ANSWERS = 8
"""Candidate answers in one ``/api/score`` or ``/api/layer-scores`` request."""
MAX_NEW_TOKENS = 256
"""Upper bound on an answer's length in tokens."""
MAX_BODY_BYTES = 2 * 1024 * 1024
"""Bytes in one request body (a larger one gets 413)."""
MAX_LAYERS = 64
"""Distinct layers in one ``/api/layer-scores`` request (each is one model call)."""
MAX_LAYER_ITEMS = 512
"""Items in ``/api/layer-scores``'s ``layers`` list, duplicates included."""
MAX_STEER_PAIRS = 8
"""Control pairs in one ``/api/steer`` run (each is asked about every prompt, every step)."""
MAX_STEER_PROMPTS = 8
"""Prompts in one ``/api/steer`` run (read while steering, completed before and after)."""
MAX_STEER_STEPS = 200
"""Optimizer steps of one ``/api/steer`` run."""
MAX_STEER_TOKENS = 128
"""Length of the before / after completions of one ``/api/steer`` run, in tokens."""
DEFAULT_STEER_STEPS = 20

Role = Literal["system", "user", "assistant"]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


Text = Annotated[str, Field(max_length=MAX_QUESTION_CHARS), AfterValidator(_not_blank)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Strict):
    """One turn of a dialog."""

    role: Role = Field(description="system, user or assistant")
    content: str = Field(max_length=MAX_MESSAGE_CHARS, description="the message text")


Dialog = Annotated[
    list[Message],
    Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description=(
            "the dialog the target model reads; a leading system prompt is hidden from the "
            "decoder (it must infer it from the activations of the later turns)"
        ),
    ),
]
Layer = Annotated[
    int | None,
    Field(description="read this target layer instead of the decoder's own read layer(s)"),
]
Subject = Annotated[
    str | None,
    Field(
        max_length=MAX_QUESTION_CHARS,
        description=(
            "read only the tokens of this text (its last occurrence in the dialog's last "
            "user turn) instead of the whole dialog: for decoders trained on subject tokens, "
            'such as shipped:relations (e.g. "Japan" in "Tell me about Japan.")'
        ),
    ),
    AfterValidator(lambda value: value if value is None else _not_blank(value)),
]
DecoderName = Annotated[
    str | None,
    Field(
        max_length=200,
        description=(
            "which of the server's decoders reads (one of /api/health's `decoders`); "
            "default: the server's own"
        ),
    ),
]


class _Read(_Strict):
    """What to read and with which decoder (shared by the model endpoints)."""

    dialog: Dialog
    decoder: DecoderName = None
    subject: Subject = None


class AskRequest(_Read):
    """Questions about the target's activations on one dialog."""

    questions: list[Text] = Field(min_length=1, max_length=MAX_QUESTIONS)
    layer: Layer = None
    max_new_tokens: int = Field(default=64, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 for greedy decoding")


class AskResponse(BaseModel):
    """The decoder's answers, one per question, in order, each with its evidence.

    ``evidence[i]`` says whether ``answers[i]`` was read from the activations or would
    be said of any dialog: the answer's mean log-likelihood per token with this dialog's
    activations minus its mean over 16 reference dialogs' (nats per token). Above
    ``evidence_threshold`` (the decoder's calibrated one) the answer counts as read.
    """

    answers: list[str]
    evidence: list[float] = Field(
        description=(
            "per answer: how much more likely it is with this dialog's activations than with "
            "other dialogs' on average, in nats per answer token (above 0: this dialog's "
            "activations support it)"
        )
    )
    logprob_real: list[float] = Field(
        description="per answer: mean log-likelihood per token with the real activations"
    )
    logprob_zeroed: list[float] = Field(
        description="per answer: mean log-likelihood per token with zeroed activations"
    )
    logprob_reference: list[float | None] = Field(
        description=(
            "per answer: mean log-likelihood per token, averaged over the reference dialogs' "
            "activations (what evidence subtracts)"
        )
    )
    evidence_threshold: float = Field(
        description="evidence above which an answer counts as read (else guessed)"
    )
    read_layers: list[int] = Field(description="the target layers that were read")
    decoder: str = Field(description="the decoder that read (a name from /api/health)")
    seconds: float = Field(
        description="time spent on the model, queueing (and loading a decoder) excluded"
    )


class ScoreRequest(_Read):
    """Candidate answers to score for one question about one dialog."""

    question: Text
    answers: list[Text] = Field(min_length=1, max_length=MAX_ANSWERS)
    layer: Layer = None
    normalize: bool = Field(default=False, description="divide by the answer's token count")


class ScoreResponse(BaseModel):
    """Log-likelihood of each candidate answer (sum of token log-probs, or mean if normalized)."""

    scores: list[float]
    read_layers: list[int]
    seconds: float


class LayerScoresRequest(_Read):
    """Candidate answers to score at every target layer (the page's chart)."""

    question: Text
    answers: list[Text] = Field(min_length=1, max_length=MAX_ANSWERS)
    normalize: bool = Field(default=True, description="mean log-prob per answer token")
    layers: list[int] | None = Field(
        default=None,
        max_length=MAX_LAYER_ITEMS,
        description=(
            f"layers to score (duplicates are scored once; at most {MAX_LAYERS} distinct); "
            "default: every layer"
        ),
    )


class LayerScoresResponse(BaseModel):
    """``scores[i][j]``: log-likelihood of answer ``j`` when layer ``layers[i]`` is read."""

    layers: list[int]
    scores: list[list[float]]
    read_layers: list[int] = Field(description="the decoder's own (trained) read layers")
    seconds: float


class Health(BaseModel):
    """What is running, and whether the model is ready."""

    status: Literal["loading", "ready", "error"]
    message: str = Field(description="a human-readable line about the status")
    target: str | None = Field(description="the target model spec")
    decoder: str | None = Field(description="the decoder folder (LoRA adapters)")
    device: str | None = Field(description="where the model runs")
    n_layers: int | None = Field(description="the target's number of decoder layers")
    read_layer: int | None = Field(description="the decoder's (first) trained read layer")
    read_layers: list[int] | None = Field(description="all the decoder's trained read layers")
    limits: dict[str, int] = Field(description="input limits: characters, items, tokens, bytes")
    decoders: list[str] = Field(
        description="decoders a request may choose (`decoder`): the server's own first"
    )
    readable_layers: dict[str, list[int]] = Field(
        default_factory=dict,
        description="per decoder loaded so far: the target layers it reads one at a time "
        "(`layer`, the chart); a decoder with a projector reads only its own read layers. "
        "A decoder not listed is not loaded yet",
    )


class Example(BaseModel):
    """A dialog to start from, with questions and a candidate answer to chart."""

    title: str
    dialog: list[Message]
    questions: list[str]
    answer: str
    decoder: str | None = Field(
        default=None, description="the decoder to read with (default: the server's own)"
    )
    subject: str | None = Field(default=None, description="the text whose tokens are read")


def _pair(value: Any) -> Any:
    """Accept ``[question, answer]`` or ``{"question", "answer"}``; say which shape is wanted."""
    if isinstance(value, dict) and set(value) == {"question", "answer"}:
        return (value["question"], value["answer"])
    if not isinstance(value, list | tuple) or len(value) != 2:
        if isinstance(value, list | tuple):
            size = f"{len(value)} item" + ("" if len(value) == 1 else "s")
        else:
            size = f"a {type(value).__name__}"
        raise ValueError(f"must be a [question, answer] pair of two strings, got {size}")
    return value


ControlPair = Annotated[tuple[Text, Text], BeforeValidator(_pair)]


class SteerRequest(_Strict):
    """A steering run: control pairs, the prompts to steer on and complete, and its length."""

    pairs: list[ControlPair] = Field(
        min_length=1,
        max_length=MAX_STEER_PAIRS,
        description=(
            "the control: [question, answer] pairs the decoder should answer about the "
            "steered target (e.g. [\"What is the emotional tone of the assistant's "
            'replies?", "Its replies are cheerful."])'
        ),
    )
    prompts: list[Text] = Field(
        min_length=1,
        max_length=MAX_STEER_PROMPTS,
        description="user prompts: read while steering, and completed before and after",
    )
    steps: int = Field(
        default=DEFAULT_STEER_STEPS,
        ge=1,
        le=MAX_STEER_STEPS,
        strict=True,
        description="optimizer steps of the steering adapter",
    )
    max_new_tokens: int = Field(
        default=32,
        ge=1,
        le=MAX_STEER_TOKENS,
        strict=True,
        description="length of each before / after completion, in tokens",
    )


class SteerStatus(BaseModel):
    """Where a steering run stands; ``before`` / ``after`` fill in as it goes."""

    id: str = Field(description="the run's id, for GET /api/steer/{id}")
    state: Literal["running", "done", "failed", "stopped"] = Field(
        description=(
            "running, done, failed (see `error`) or stopped (by POST /api/steer/{id}/stop, "
            "by the server's shutdown, or because no client asked about it for a while)"
        )
    )
    phase: Literal["loading", "before", "steering", "after", "finished"] = Field(
        description=(
            "what the run is doing: loading the steering model (first run only), completing "
            "the prompts before steering, steering, completing them after"
        )
    )
    step: int = Field(description="optimizer steps finished")
    steps: int = Field(description="optimizer steps asked for")
    initial_loss: float | None = Field(
        description="the decoder's loss on the control before steering (nats per token)"
    )
    losses: list[float] = Field(description="the control loss of each finished step")
    prompts: list[str]
    before: list[str] = Field(description="the unsteered target's completion of each prompt")
    after: list[str] = Field(description="the steered target's completion of each prompt")
    decoder: str | None = Field(description="the decoder folder that steering reads with")
    error: str | None = Field(description="why the run failed or stopped")
    seconds: float = Field(description="time since the run started")


class ErrorBody(BaseModel):
    """Every error: a one-line message, plus the status for 503 and 409 answers."""

    error: str
    status: str | None = Field(
        default=None,
        description="503: loading, error (failed to load) or busy; 409: steering (a run is "
        "in progress)",
    )
    id: str | None = Field(default=None, description="409 only: the steering run in progress")


LIMITS = {
    "max_message_chars": MAX_MESSAGE_CHARS,
    "max_messages": MAX_MESSAGES,
    "max_questions": MAX_QUESTIONS,
    "max_question_chars": MAX_QUESTION_CHARS,
    "max_answers": MAX_ANSWERS,
    "max_new_tokens": MAX_NEW_TOKENS,
    "max_body_bytes": MAX_BODY_BYTES,
    "max_layers": MAX_LAYERS,
    "max_steer_pairs": MAX_STEER_PAIRS,
    "max_steer_prompts": MAX_STEER_PROMPTS,
    "max_steer_steps": MAX_STEER_STEPS,
    "max_steer_tokens": MAX_STEER_TOKENS,
}
