"""The one model behind the server: loaded in a background thread, used by one request at a time.

:class:`ModelHost` owns the reader. Loading starts with :meth:`ModelHost.start` and
runs in a daemon thread, so the page and ``/api/health`` answer at once while the
weights load. Every model call goes through :meth:`ModelHost.call`: it waits its turn
without holding a worker thread (a capacity limiter of one, FIFO), then runs in a
worker thread under a lock, so the forward hooks that patch activations of two
requests never interleave and the event loop stays free.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import anyio
import anyio.to_thread

from latentqa.errors import LatentQAError

logger = logging.getLogger("latentqa.server")

T = TypeVar("T")


class ReaderLike(Protocol):
    """What the server needs from :class:`latentqa.reader.Reader`."""

    def ask(
        self,
        dialog: list[dict[str, str]],
        questions: list[str],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        layer: int | None = None,
    ) -> list[str]:
        """Answer each question about the target's activations on ``dialog``."""
        ...

    def score(
        self,
        dialog: list[dict[str, str]],
        question: str,
        answers: list[str],
        normalize: bool = False,
        layer: int | None = None,
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


def describe_reader(reader: Any) -> dict[str, Any]:
    """What is running, from a reader's public attributes (missing ones are ``None``).

    Reads ``target_name``, ``decoder_path``, ``device``, ``n_layers`` and
    ``spec.read_layers`` of a :class:`latentqa.reader.Reader`.
    """
    spec = getattr(reader, "spec", None)
    read_layers = getattr(spec, "read_layers", None)
    decoder = getattr(reader, "decoder_path", None)
    device = getattr(reader, "device", None)
    n_layers = getattr(reader, "n_layers", None)
    return {
        "target": _label(getattr(reader, "target_name", None)),
        "decoder": _label(decoder) if decoder is not None else "none (untrained base model)",
        "device": _label(device),
        "n_layers": int(n_layers) if n_layers is not None else None,
        "read_layers": [int(layer) for layer in read_layers] if read_layers else None,
    }


def _label(value: Any) -> str | None:
    return None if value is None else str(value)


class ModelHost:
    """Loads a reader in the background and runs model calls one at a time.

    Args:
        reader_factory: Builds the reader (e.g. ``lambda: Reader.load(...)``); called once,
            in a background thread, by :meth:`start`.
        reader: An already loaded reader (then the host is ready at once).
        labels: What to show while loading: ``target``, ``decoder``, ``device``.
    """

    def __init__(
        self,
        reader_factory: Callable[[], ReaderLike] | None = None,
        *,
        reader: ReaderLike | None = None,
        labels: dict[str, str | None] | None = None,
    ) -> None:
        if (reader_factory is None) == (reader is None):
            raise ValueError("pass exactly one of reader_factory and reader")
        self._factory = reader_factory
        self._reader = reader
        self._labels = dict(labels or {})
        self._status = "ready" if reader is not None else "loading"
        self._error = ""
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._started_at = time.monotonic()
        self._load_seconds: float | None = None
        if reader is not None:
            self._ready.set()

    # Loading.

    def start(self) -> None:
        """Start loading in a daemon thread (idempotent; nothing to do for a given reader)."""
        if self._factory is None or self._thread is not None:
            return
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._load, name="latentqa-load", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        assert self._factory is not None
        try:
            reader = self._factory()
        except LatentQAError as error:
            self._fail(str(error))
        except Exception as error:
            logger.exception("loading the model failed")
            self._fail(f"{type(error).__name__}: {error}")
        else:
            self._reader = reader
            self._load_seconds = time.monotonic() - self._started_at
            self._status = "ready"
            logger.info("model ready after %.1f s", self._load_seconds)
        finally:
            self._ready.set()

    def _fail(self, message: str) -> None:
        self._error = message.strip().splitlines()[0] if message.strip() else "unknown error"
        self._status = "error"
        logger.error("the model could not be loaded: %s", self._error)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until loading ends (ready or error); ``False`` on timeout."""
        return self._ready.wait(timeout)

    @property
    def status(self) -> str:
        """``loading``, ``ready`` or ``error``."""
        return self._status

    @property
    def reader(self) -> ReaderLike:
        """The loaded reader.

        Raises:
            ModelUnavailable: While loading, or after a failed load.
        """
        if self._status == "ready" and self._reader is not None:
            return self._reader
        if self._status == "error":
            raise ModelUnavailable("error", f"the model failed to load: {self._error}")
        waited = time.monotonic() - self._started_at
        raise ModelUnavailable(
            "loading",
            f"the model is still loading ({waited:.0f} s so far); try again in a few seconds",
        )

    def info(self) -> dict[str, Any]:
        """Health fields: status, message, target, decoder, device, n_layers, read layers."""
        info: dict[str, Any] = {"target": None, "decoder": None, "device": None,
                                "n_layers": None, "read_layers": None}  # fmt: skip
        info.update({k: v for k, v in self._labels.items() if k in info})
        if self._status == "ready":
            info.update({k: v for k, v in describe_reader(self._reader).items() if v is not None})
            seconds = f" (loaded in {self._load_seconds:.1f} s)" if self._load_seconds else ""
            message = f"ready{seconds}"
        elif self._status == "error":
            message = f"the model failed to load: {self._error}"
        else:
            waited = time.monotonic() - self._started_at
            message = f"loading the model ({waited:.0f} s so far)"
        layers = info["read_layers"]
        info.update(status=self._status, message=message,
                    read_layer=layers[0] if layers else None)  # fmt: skip
        return info

    # Model calls.

    def bind_loop(self) -> None:
        """Create the queue for the running event loop (called at application startup)."""
        self._limiter = anyio.CapacityLimiter(1)

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
        """Run ``function(*args, **kwargs)`` in a worker thread, alone on the model.

        Returns:
            The result and the seconds spent running it (queueing excluded).

        Raises:
            ModelUnavailable: The model is not loaded.
            LatentQAError: Bad input, reported by the reader.
            ModelFailure: Any other error inside the call (logged with its traceback).
        """
        if self._limiter is None:
            self.bind_loop()
        assert self._limiter is not None
        return await anyio.to_thread.run_sync(self._run, function, args, kwargs,
                                              limiter=self._limiter)  # fmt: skip

    def _run(self, function: Callable[..., T], args: tuple, kwargs: dict) -> tuple[T, float]:
        with self._lock:
            start = time.perf_counter()
            try:
                result = function(*args, **kwargs)
            except (LatentQAError, ModelUnavailable):
                raise
            except Exception as error:
                logger.exception("model call failed")
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                message = f"the model call failed: {type(error).__name__}: {first}"
                raise ModelFailure(message) from error
            return result, time.perf_counter() - start
