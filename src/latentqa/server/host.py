"""The one model behind the server: loaded in a background thread, used by one request at a time.

:class:`ModelHost` owns the reader. Loading starts with :meth:`ModelHost.start` and
runs in a daemon thread, so the page and ``/api/health`` answer at once while the
weights load. Every model call goes through :meth:`ModelHost.call`: it waits its turn
without holding a worker thread (a capacity limiter of one, FIFO), then runs in a
worker thread under a lock, so the forward hooks that patch activations of two
requests never interleave and the event loop stays free.

A request's model calls run inside :meth:`ModelHost.serve`, which bounds them: at most
``max_waiting`` requests wait for the model (one more is refused with
:class:`QueueFull`), a request answers :class:`DeadlineExceeded` once
``request_timeout`` seconds have passed since it arrived, and its work stops when the
client disconnects (:class:`ClientGone`). A model call that is already running cannot
be interrupted: it finishes, alone on the model, and its result is dropped; the calls
the request had not started yet never run.

Besides its own decoder, the host may offer others by name (the shipped ``relations``
decoder beside the default one, see :mod:`latentqa.server.decoders`): each loads on the
first request that chooses it, as one of that request's model calls (in turn, under the
same lock and bounds), and stays loaded.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.to_thread

from latentqa.errors import LatentQAError
from latentqa.server.decoders import DEFAULT_DECODER, DecoderChoices
from latentqa.server.host_api import (
    ClientGone,
    DeadlineExceeded,
    ModelFailure,
    ModelUnavailable,
    QueueFull,
    ReaderLike,
    _Abandoned,
    describe_reader,
)

logger = logging.getLogger("latentqa.server")

T = TypeVar("T")

DEFAULT_MAX_WAITING = 8
"""Requests that may wait for the model at once; one more is answered 503."""
DEFAULT_REQUEST_TIMEOUT = 120.0
"""Seconds a request may take, queueing included, before it is answered 504."""
DISCONNECT_POLL_SECONDS = 0.1
"""How often a request checks whether its client is still connected."""


class ModelHost:
    """Loads a reader in the background and runs model calls one at a time.

    Args:
        reader_factory: Builds the reader (e.g. ``lambda: Reader.load(...)``); called once,
            in a background thread, by :meth:`start`.
        reader: An already loaded reader (then the host is ready at once).
        labels: What to show while loading: ``target``, ``decoder``, ``device``.
        max_waiting: Requests that may wait for the model at once (see :meth:`serve`).
        request_timeout: Seconds a request may take, queueing included (``None``: no
            limit).
        decoders: Other decoders a request may choose, by name: each factory builds a
            reader (e.g. ``lambda: Reader.load(target, "shipped:relations")``), called
            once, on the first request that chooses it.
        decoder_name: The name of the host's own decoder (``"default"`` always names it
            too).
    """

    def __init__(
        self,
        reader_factory: Callable[[], ReaderLike] | None = None,
        *,
        reader: ReaderLike | None = None,
        labels: dict[str, str | None] | None = None,
        max_waiting: int = DEFAULT_MAX_WAITING,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        decoders: Mapping[str, Callable[[], ReaderLike]] | None = None,
        decoder_name: str = DEFAULT_DECODER,
    ) -> None:
        if (reader_factory is None) == (reader is None):
            raise ValueError("pass exactly one of reader_factory and reader")
        if isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or max_waiting < 0:
            raise ValueError(f"max_waiting must be an integer >= 0, got {max_waiting!r}")
        if request_timeout is not None and not (
            isinstance(request_timeout, int | float)
            and math.isfinite(request_timeout)
            and request_timeout > 0
        ):
            raise ValueError(f"request_timeout must be a positive number, got {request_timeout!r}")
        self.max_waiting = max_waiting
        self.request_timeout = None if request_timeout is None else float(request_timeout)
        self._in_flight = 0
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
        self.decoders = DecoderChoices(decoder_name, decoders)
        """The decoders a request may choose (see :meth:`reader_for`)."""
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
        """Health fields: status, message, target, decoder, device, n_layers, read layers,
        the decoders and the layers each loaded one reads."""
        info: dict[str, Any] = {
            "target": None,
            "decoder": None,
            "device": None,
            "n_layers": None,
            "read_layers": None,
        }
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
        info.update(status=self._status, message=message, read_layer=layers[0] if layers else None)
        info["decoders"] = self.decoders.names
        info["readable_layers"] = self._readable_layers()
        return info

    def _readable_layers(self) -> dict[str, list[int]]:
        """The layers each loaded decoder reads one at a time, by name (own one first)."""
        readers = [(self.decoders.own, self._reader)] if self._status == "ready" else []
        readers += list(self.decoders.loaded.items())  # a copy: loads run in another thread
        layers = {name: describe_reader(reader)["readable_layers"] for name, reader in readers}
        return {name: value for name, value in layers.items() if value is not None}

    # Decoders.

    async def reader_for(self, session: Session, name: str | None) -> ReaderLike:
        """The reader of the decoder called ``name`` (see :meth:`DecoderChoices.choose`).

        Another decoder than the host's own loads on first use, as a model call of
        ``session`` (in turn, under the model lock), and stays loaded; a load that fails
        is tried again by the next request.

        Raises:
            ModelUnavailable: The host's own model is not loaded.
            LatentQAError: No such decoder, or it cannot be loaded.
        """
        choice = self.decoders.choose(name)
        reader = self.reader
        if choice is None:
            return reader
        if choice in self.decoders.loaded:
            return self.decoders.loaded[choice]
        loaded, _seconds = await session.call(self.decoders.load, choice)
        return loaded

    # Model calls.

    @property
    def waiting(self) -> int:
        """Requests admitted by :meth:`serve` and not finished (the one running included)."""
        return self._in_flight

    def bind_loop(self) -> None:
        """Create the queue for the running event loop (called at application startup)."""
        self._limiter = anyio.CapacityLimiter(1)

    async def serve(
        self,
        work: Callable[[Session], Awaitable[T]],
        *,
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> T:
        """Run one request's model calls (``work`` makes them with ``session.call``), bounded.

        Args:
            work: Makes the request's model calls through the :class:`Session` it is given.
            is_disconnected: Polled while the request runs (e.g. Starlette's
                ``request.is_disconnected``); when it turns true the request stops.

        Raises:
            QueueFull: ``max_waiting`` requests already wait for the model.
            DeadlineExceeded: ``request_timeout`` seconds passed before the work ended.
            ClientGone: The client disconnected before the work ended.
        """
        if self._in_flight > self.max_waiting:
            raise QueueFull(
                f"the server is busy: {self.max_waiting} requests already wait for the model "
                "(its limit, `latentqa serve --max-waiting`); try again in a few seconds"
            )
        self._in_flight += 1
        session = Session(self)
        outcome: list[tuple[bool, Any]] = []

        async def body() -> None:
            try:
                outcome.append((True, await work(session)))
            except Exception as error:  # cancellation is a BaseException and passes
                outcome.append((False, error))

        async def watch(group: anyio.abc.TaskGroup) -> None:
            assert is_disconnected is not None
            while True:
                await anyio.sleep(DISCONNECT_POLL_SECONDS)
                try:
                    gone = await is_disconnected()
                except Exception:  # the check itself failed: keep serving, stop watching
                    logger.debug("disconnect check failed", exc_info=True)
                    return
                if gone:
                    session.gone = True
                    group.cancel_scope.cancel()
                    return

        try:
            async with anyio.create_task_group() as group:
                if is_disconnected is not None:
                    group.start_soon(watch, group)
                with anyio.move_on_after(self.request_timeout) as timer:
                    await body()
                group.cancel_scope.cancel()
        finally:
            session.abandoned.set()  # calls of this request not yet started never run
            self._in_flight -= 1
        if outcome:
            done, value = outcome[0]
            if not done:
                raise value
            return value
        if session.gone:
            logger.info("client disconnected: stopped after %d model call(s)", session.calls)
            raise ClientGone("the client disconnected")
        if timer.cancelled_caught:
            logger.warning(
                "request stopped at its deadline (%g s) after %d model call(s)",
                self.request_timeout,
                session.calls,
            )
            raise DeadlineExceeded(
                f"the request took longer than the server's limit of {self.request_timeout:g} s "
                "(queueing included) and was stopped; ask for less at once (fewer layers, "
                "questions or tokens) or try again when the server is less busy"
            )
        raise RuntimeError("the request ended without a result")  # pragma: no cover

    async def call(
        self,
        function: Callable[..., T],
        *args: Any,
        _abandoned: threading.Event | None = None,
        **kwargs: Any,
    ) -> tuple[T, float]:
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
        abandoned = _abandoned if _abandoned is not None else threading.Event()
        # Cancelled (deadline, disconnect), the await returns at once and the thread is
        # left to finish a call already running; a call not yet started is skipped.
        try:
            return await anyio.to_thread.run_sync(
                self._run,
                function,
                args,
                kwargs,
                abandoned,
                abandon_on_cancel=True,
                limiter=self._limiter,
            )
        except anyio.get_cancelled_exc_class():
            abandoned.set()
            raise

    def _run(
        self, function: Callable[..., T], args: tuple, kwargs: dict, abandoned: threading.Event
    ) -> tuple[T, float]:
        with self._lock:
            if abandoned.is_set():
                raise _Abandoned
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


class Session:
    """One request's way to the model inside :meth:`ModelHost.serve`."""

    def __init__(self, host: ModelHost) -> None:
        self._host = host
        self.abandoned = threading.Event()
        """Set when the request ends: its calls not yet started are skipped."""
        self.gone = False
        """Whether the client disconnected."""
        self.calls = 0
        """Model calls started so far."""

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
        """As :meth:`ModelHost.call`; the call is skipped if the request has already ended."""
        self.calls += 1
        return await self._host.call(function, *args, _abandoned=self.abandoned, **kwargs)
