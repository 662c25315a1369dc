"""What the server's model host deals in: the reader it needs, the errors it raises.

:class:`ReaderLike` is the part of :class:`latentqa.reader.Reader` the server uses (tests
serve fakes through it); the exceptions are how :class:`latentqa.server.host.ModelHost`
tells the HTTP layer why a call did not run (see :mod:`latentqa.server.http_errors`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from latentqa.answering import AskOptions
    from latentqa.scoring import Answer


class ReaderLike(Protocol):
    """What the server needs from :class:`latentqa.reader.Reader`.

    The server passes ``subject`` only when a request gives one.
    """

    def ask(
        self,
        dialog: list[dict[str, str]],
        questions: list[str],
        *,
        subject: str | None = None,
        evidence: bool = False,
        **options: Unpack[AskOptions],
    ) -> list[str] | list[Answer]:
        """Answer each question about the target's activations on ``dialog``; with
        ``evidence``, each answer with its evidence (real vs zeroed activations)."""
        ...

    def score(
        self,
        dialog: list[dict[str, str]],
        question: str,
        answers: list[str],
        normalize: bool = False,
        layer: int | None = None,
        *,
        subject: str | None = None,
    ) -> list[float]:
        """Log-likelihood of each candidate answer."""
        ...


class ModelUnavailable(Exception):
    """The model is still loading, or failed to load (answered with 503)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ModelFailure(Exception):
    """An unexpected error inside a model call (answered with 500; the server keeps serving)."""


class QueueFull(Exception):
    """Too many requests already wait for the model (answered with 503)."""


class DeadlineExceeded(Exception):
    """The request ran past its deadline (answered with 504); its remaining calls never run."""


class ClientGone(Exception):
    """The client disconnected; the request's remaining calls never run."""


class SteeringBusy(Exception):
    """A steering run is already in progress (answered with 409); one runs at a time."""

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class _Abandoned(Exception):
    """Raised in a worker thread for a call whose request gave up before it started."""


def describe_reader(reader: Any) -> dict[str, Any]:
    """What is running, from a reader's public attributes (missing ones are ``None``).

    Reads ``target_name``, ``decoder_path``, ``device``, ``n_layers``,
    ``spec.read_layers`` and ``readable_layers`` of a :class:`latentqa.reader.Reader`.
    """
    spec = getattr(reader, "spec", None)
    read_layers = getattr(spec, "read_layers", None)
    decoder = getattr(reader, "decoder_path", None)
    device = getattr(reader, "device", None)
    n_layers = getattr(reader, "n_layers", None)
    readable = getattr(reader, "readable_layers", None)
    return {
        "target": _label(getattr(reader, "target_name", None)),
        "decoder": _label(decoder) if decoder is not None else "none (untrained base model)",
        "device": _label(device),
        "n_layers": int(n_layers) if n_layers is not None else None,
        "read_layers": [int(layer) for layer in read_layers] if read_layers else None,
        "readable_layers": [int(layer) for layer in readable] if readable is not None else None,
    }


def _label(value: Any) -> str | None:
    return None if value is None else str(value)
