"""Steering from the page: one background run at a time over a lazily loaded steerable model.

``POST /api/steer`` starts a run and answers at once with its id; the run goes on in a
daemon thread (completions of the prompts, then ``steps`` optimizer steps, then the
completions again: seconds to minutes), and ``GET /api/steer/{id}`` polls it: the step,
the losses, and the before / after completions.

The run does not go through :class:`~latentqa.server.host.ModelHost`'s queue: it trains
a copy of the target of its own (a :class:`~latentqa.steer.model.SteerableModel`: the
target, the frozen decoder adapter and a fresh steering adapter per run), not the
reader, so reading requests neither wait for it nor make it wait; and it lasts far
longer than a request may, so it cannot be one.

Bounds, in the spirit of the host's: one run at a time (starting another answers 409,
:class:`~latentqa.server.host_api.SteeringBusy`); each run is bounded by the request
schema (pairs, prompts, steps, tokens, see :class:`~latentqa.server.schemas.SteerRequest`);
a run stops at its next step when asked to (``POST /api/steer/{id}/stop``), when the app
shuts down, or when no client has polled it for :data:`ABANDON_SECONDS` (the page was
closed: like a request whose client disconnects); the server keeps only the last
:data:`KEEP_RUNS` runs. A failure the steering code reports (:class:`LatentQAError`, e.g.
a missing decoder folder) is the run's ``error``; any other is logged and reported as
``internal error; see the server log``, and the next run loads the model afresh.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi import Path as PathParam

from latentqa.errors import LatentQAError
from latentqa.server.host import ModelHost
from latentqa.server.host_api import SteeringBusy, describe_reader
from latentqa.server.http_errors import INTERNAL_ERROR
from latentqa.server.schemas import ErrorBody, SteerRequest, SteerStatus

logger = logging.getLogger("latentqa.server")

ABANDON_SECONDS = 120.0
"""A run that no client has polled for this long stops at its next step. Generous, as
browsers poll hidden tabs rarely."""
KEEP_RUNS = 16
"""Finished runs the server remembers (the oldest are forgotten)."""
BATCH_SIZE = 4
"""Prompts per steering step (fewer when the run has fewer prompts)."""
UNUSED_OUT = "(unused: the server keeps the steering adapter in memory)"
"""``SteerConfig.out``: ``train_steering`` writes nothing, but the config wants a folder."""


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class _Stopped(Exception):
    """Raised inside a run, between steps, to stop it; its message says why."""


class SteeringRun:
    """One steering run's request and progress, written by its thread, read by polls.

    Args:
        run_id: The run's id.
        request: What to steer toward, on which prompts, for how long.
        abandon_after: Seconds without a poll after which the run stops (``None``: never).
    """

    def __init__(
        self, run_id: str, request: SteerRequest, abandon_after: float | None = ABANDON_SECONDS
    ) -> None:
        self.id = run_id
        self.pairs = [(question, answer) for question, answer in request.pairs]
        self.prompts = list(request.prompts)
        self.steps = request.steps
        self.max_new_tokens = request.max_new_tokens
        self.abandon_after = abandon_after
        self.state = "running"
        self.phase = "loading"
        self.step = 0
        self.initial_loss: float | None = None
        self.losses: list[float] = []
        self.before: list[str] = []
        self.after: list[str] = []
        self.decoder: str | None = None
        self.error: str | None = None
        self.started = time.monotonic()
        self.ended: float | None = None
        self.seen = self.started
        self.stop_reason: str | None = None
        self._lock = threading.Lock()

    def status(self) -> SteerStatus:
        """A consistent snapshot of the run (taken under its lock)."""
        with self._lock:
            return SteerStatus(
                id=self.id,
                state=self.state,
                phase=self.phase,
                step=self.step,
                steps=self.steps,
                initial_loss=self.initial_loss,
                losses=list(self.losses),
                prompts=list(self.prompts),
                before=list(self.before),
                after=list(self.after),
                decoder=self.decoder,
                error=self.error,
                seconds=round((self.ended or time.monotonic()) - self.started, 3),
            )

    def update(self, **fields: Any) -> None:
        """Set progress fields together, so a poll never sees half an update."""
        with self._lock:
            for name, value in fields.items():
                setattr(self, name, value)

    def finish(self, state: str, error: str | None = None) -> None:
        """End the run: ``done``, ``failed`` or ``stopped``, with why for the last two."""
        self.update(state=state, phase="finished", error=error, ended=time.monotonic())
        logger.info("steering run %s %s%s", self.id, state, f": {error}" if error else "")

    def record(self, record: dict) -> None:
        """``train_steering``'s per-step log: keep the loss, then stop here if asked to."""
        with self._lock:
            if record.get("kind") == "initial":
                self.initial_loss = float(record["loss"])
            else:
                self.step = int(record["step"])
                self.losses.append(float(record["loss"]))
        self.check()

    def check(self) -> None:
        """Raise :class:`_Stopped` if the run was asked to stop, or nobody polls it anymore."""
        if self.stop_reason is not None:
            raise _Stopped(self.stop_reason)
        idle = time.monotonic() - self.seen
        if self.abandon_after is not None and idle > self.abandon_after:
            raise _Stopped(
                f"no client asked about this run for {idle:.0f} s (the page was closed?), "
                "so it stopped"
            )


class SteeringRunner:
    """Runs steering in a daemon thread, one run at a time, on a model loaded on first use.

    Args:
        factory: Builds the :class:`~latentqa.steer.model.SteerableModel` (called once, in
            the first run's thread; again after a run failed unexpectedly).
        abandon_after: Seconds without a poll after which a run stops (``None``: never).
        keep: Runs remembered for polling (the oldest finished ones are forgotten).
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        *,
        abandon_after: float | None = ABANDON_SECONDS,
        keep: int = KEEP_RUNS,
    ) -> None:
        self._factory = factory
        self._steerable: Any = None
        self._runs: OrderedDict[str, SteeringRun] = OrderedDict()
        self._current: SteeringRun | None = None
        self._lock = threading.Lock()
        self.abandon_after = abandon_after
        self.keep = keep
        self.thread: threading.Thread | None = None
        """The latest run's thread."""

    def start(self, request: SteerRequest) -> SteeringRun:
        """Start a run in a daemon thread and return it at once.

        Raises:
            SteeringBusy: Another run is in progress.
        """
        with self._lock:
            current = self._current
            if current is not None and current.state == "running":
                where = (
                    f"step {current.step} of {current.steps}"
                    if current.phase == "steering"
                    else current.phase
                )
                raise SteeringBusy(
                    f"a steering run is in progress (id {current.id}, {where}); one runs at a "
                    "time: wait for it to finish, or stop it with "
                    f"POST /api/steer/{current.id}/stop",
                    current.id,
                )
            run = SteeringRun(secrets.token_hex(8), request, self.abandon_after)
            self._runs[run.id] = run
            while len(self._runs) > self.keep:  # only the newest one can be running
                self._runs.popitem(last=False)
            self._current = run
            self.thread = threading.Thread(
                target=self._run, args=(run,), name="latentqa-steer", daemon=True
            )
            self.thread.start()
        logger.info(
            "steering run %s: %d pair(s), %d prompt(s), %d step(s)",
            run.id,
            len(run.pairs),
            len(run.prompts),
            run.steps,
        )
        return run

    def get(self, run_id: str) -> SteeringRun | None:
        """The run called ``run_id`` (``None`` if unknown); asking counts as a poll."""
        run = self._runs.get(run_id)
        if run is not None:
            run.seen = time.monotonic()
        return run

    def stop(self, run_id: str, reason: str = "stopped on request") -> SteeringRun | None:
        """Ask the run to stop at its next step (a running generation or step finishes)."""
        run = self.get(run_id)
        if run is not None and run.state == "running":
            run.stop_reason = reason
        return run

    def shutdown(self) -> None:
        """Stop the current run at its next step (the app is exiting)."""
        current = self._current
        if current is not None and current.state == "running":
            current.stop_reason = "the server shut down"

    def _model(self, run: SteeringRun) -> Any:
        if self._steerable is None:
            started = time.monotonic()
            logger.info("loading the steering model")
            self._steerable = self._factory()
            logger.info("steering model ready after %.1f s", time.monotonic() - started)
        run.update(decoder=str(getattr(self._steerable, "decoder_path", None) or "") or None)
        return self._steerable

    def _run(self, run: SteeringRun) -> None:
        try:
            self._steer(self._model(run), run)
        except _Stopped as stopped:
            run.finish("stopped", str(stopped))
        except LatentQAError as error:
            run.finish("failed", _first_line(error))
        except Exception:
            logger.exception("steering run %s failed", run.id)
            self._steerable = None  # it may be half-changed: the next run loads it afresh
            run.finish("failed", INTERNAL_ERROR)

    def _steer(self, steerable: Any, run: SteeringRun) -> None:
        from latentqa.generation import generate_texts  # here: they import torch
        from latentqa.steer.config import SteerConfig
        from latentqa.steer.trainer import train_steering

        run.check()
        steerable.remove_steering()  # a fresh adapter per run: the last run's goes
        run.update(phase="before")
        with steerable.unsteered() as model:
            before = generate_texts(
                model, steerable.tokenizer, run.prompts, max_new_tokens=run.max_new_tokens
            )
        run.update(before=before, phase="steering")
        run.check()
        config = SteerConfig(
            out=UNUSED_OUT, steps=run.steps, batch_size=min(BATCH_SIZE, len(run.prompts))
        )
        # A decoder that reads replies reads these unsteered ones: no second generation.
        train_steering(
            steerable,
            run.pairs,
            run.prompts,
            config,
            progress=False,
            log=run.record,
            replies=before,
        )
        run.update(phase="after")
        with steerable.steered() as model:
            after = generate_texts(
                model, steerable.tokenizer, run.prompts, max_new_tokens=run.max_new_tokens
            )
        run.update(after=after)
        run.finish("done")


def steer_target(host: ModelHost, target: str | None, device: str | None) -> tuple[str, str]:
    """The target to steer and its device: the app's, else those of the loaded reader.

    Raises:
        ModelUnavailable: No target was given and the reader is not loaded yet (503).
        LatentQAError: Neither the app nor its reader names the target.
    """
    if target is not None:
        return target, device or "auto"
    info = describe_reader(host.reader)
    if info["target"] is None:
        raise LatentQAError(
            "this server does not know its target's model spec, so it cannot steer; "
            "start it with a target"
        )
    return info["target"], device or info["device"] or "auto"


STEER_ERRORS = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Malformed JSON, or a Host header a loopback server does not answer",
        404: "No run with this id (the server keeps its last runs, in memory only)",
        409: "A steering run is in progress (one runs at a time); the body names its `id`",
        413: "Request body over the size limit",
        422: "Body that breaks the schema (no pairs, empty prompt, steps out of 1..200)",
        503: "The target is not known yet: the reader is still loading",
    }.items()
}


def install_steering_routes(
    app: FastAPI, runner: SteeringRunner, check: Callable[[], object]
) -> None:
    """Add ``POST /api/steer``, ``GET /api/steer/{id}`` and ``POST /api/steer/{id}/stop``.

    Args:
        app: The application.
        runner: Runs the steering.
        check: Called before a run starts; raises to refuse it (e.g. 503 while the
            target is unknown).
    """
    run_id_param = PathParam(max_length=64, description="the id POST /api/steer answered")

    def found(run_id: str, run: SteeringRun | None) -> SteerStatus:
        if run is None:
            raise HTTPException(
                404,
                f"no steering run {run_id!r}: the server keeps its last {runner.keep} runs, "
                "in memory only (was it restarted?)",
            )
        return run.status()

    @app.post(
        "/api/steer",
        status_code=202,
        response_model=SteerStatus,
        responses=STEER_ERRORS,
        tags=["steer"],
    )
    async def start(request: SteerRequest) -> SteerStatus:
        """Start steering the target toward the control; poll `GET /api/steer/{id}`.

        Trains a fresh steering LoRA on the target so that the frozen decoder, reading the
        target's activations on the prompts, gives the control's answers; the prompts are
        completed before and after. Runs in the background, one at a time (another start
        gets 409); a run nobody polls for 120 s stops. The first run loads the model.
        """
        check()
        return runner.start(request).status()

    @app.get(
        "/api/steer/{run_id}",
        response_model=SteerStatus,
        responses={404: STEER_ERRORS[404]},
        tags=["steer"],
    )
    async def poll(run_id: str = run_id_param) -> SteerStatus:
        """Where a steering run stands: step, losses, completions before and after."""
        return found(run_id, runner.get(run_id))

    @app.post(
        "/api/steer/{run_id}/stop",
        response_model=SteerStatus,
        responses={404: STEER_ERRORS[404]},
        tags=["steer"],
    )
    async def stop(run_id: str = run_id_param) -> SteerStatus:
        """Stop a steering run at its next step (a finished run is left as it is)."""
        return found(run_id, runner.stop(run_id))
