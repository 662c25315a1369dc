"""The web app: a small page of its own and a JSON API over one :class:`~latentqa.reader.Reader`.

Routes (the OpenAPI schema is at ``/openapi.json``; FastAPI's own ``/docs`` and ``/redoc``
load scripts from a CDN, so they are replaced by a small page of our own):

- ``GET /``: the page (plain HTML / JS / CSS shipped in the package, no CDN).
- ``GET /docs``: the API reference, rendered from ``/openapi.json``.
- ``GET /api/health``: loading / ready / error, and what is running.
- ``GET /api/examples``: example dialogs to start from.
- ``POST /api/ask``: the decoder's answers to questions about a dialog, each with its
  evidence (read from the activations, or guessed from the question).
- ``POST /api/score``: log-likelihoods of candidate answers.
- ``POST /api/layer-scores``: the same at every target layer (the page's chart).
- ``POST /api/steer``, ``GET /api/steer/{id}``, ``POST /api/steer/{id}/stop``: steer the
  target toward control QA pairs in the background, one run at a time, and see its
  completions before and after (see :mod:`latentqa.server.steering`).

Each model endpoint takes an optional ``decoder`` (one of ``/api/health``'s ``decoders``;
another than the server's own loads on first use) and ``subject`` (read only that text's
tokens in the last user turn, as the shipped ``relations`` decoder expects).

Bounds (see :class:`~latentqa.server.host.ModelHost`): at most ``max_waiting`` requests
wait for the model (one more gets 503), each request has ``request_timeout`` seconds,
queueing included (then 504), a request whose client disconnects stops between model
calls, ``/api/layer-scores`` scores each distinct layer once (at most
:data:`~latentqa.server.schemas.MAX_LAYERS`), a server on a loopback address answers only
``Host: 127.0.0.1 / localhost / [::1]`` (DNS rebinding), and a 500 answer says only
``internal error; see the server log``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from latentqa.package_data import package_file
from latentqa.server.examples import EXAMPLES
from latentqa.server.host import (
    DEFAULT_MAX_WAITING,
    DEFAULT_REQUEST_TIMEOUT,
    ModelHost,
    Session,
)
from latentqa.server.host_api import ReaderLike, describe_reader
from latentqa.server.http_errors import (
    INTERNAL_ERROR,
    BodySizeLimit,
    InternalErrors,
    LoopbackHostGuard,
    install_error_handlers,
)
from latentqa.server.layer_choice import check_layer, distinct_layers, every_layer
from latentqa.server.schemas import (
    LIMITS,
    MAX_BODY_BYTES,
    AskRequest,
    AskResponse,
    ErrorBody,
    Example,
    Health,
    LayerScoresRequest,
    LayerScoresResponse,
    ScoreRequest,
    ScoreResponse,
)
from latentqa.server.steering import SteeringRunner, install_steering_routes, steer_target

STATIC_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "steer.js": "text/javascript; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
ERRORS = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Malformed JSON, input the reader rejects (e.g. a layer out of range), or a "
        "Host header a loopback server does not answer",
        413: f"Request body over {MAX_BODY_BYTES} bytes",
        422: "Body that breaks the schema (empty dialog, too long message, unknown role)",
        500: f"Unexpected error; the body says only {INTERNAL_ERROR!r}",
        503: "The model is still loading, failed to load, or too many requests wait for it",
        504: "The request ran past the server's deadline (queueing included)",
    }.items()
}


def _static(name: str) -> bytes:
    return package_file("latentqa.server", f"static/{name}").read_bytes()


async def _score(
    session: Session,
    reader: ReaderLike,
    request: ScoreRequest | LayerScoresRequest,
    dialog: list[dict[str, Any]],
    layer: int | None,
    subject: Mapping[str, Any],
) -> tuple[list[float], float]:
    """One model call: the request's candidate answers scored on ``dialog``.

    Args:
        session: The request's turn at the model.
        reader: The reader with the chosen decoder.
        request: The question, the answers and whether to normalize.
        dialog: The request's dialog as plain messages.
        layer: The target layer read; ``None``: the decoder's own.
        subject: ``{"subject": text}`` to read only that text's tokens, or empty.

    Returns:
        The scores (one per answer) and the seconds spent on the model.
    """
    return await session.call(
        reader.score,
        dialog,
        request.question,
        list(request.answers),
        normalize=request.normalize,
        layer=layer,
        **subject,
    )


def create_app(
    reader_factory: Callable[[], ReaderLike] | None = None,
    *,
    reader: ReaderLike | None = None,
    target: str | None = None,
    decoder: str | None = None,
    device: str | None = None,
    max_waiting: int = DEFAULT_MAX_WAITING,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    allowed_hosts: Sequence[str] = (),
    decoders: Mapping[str, Callable[[], ReaderLike]] | None = None,
    decoder_name: str = "default",
    steer_decoder: str | None = None,
    steer_factory: Callable[[], Any] | None = None,
) -> FastAPI:
    """Build the web app around one reader.

    The model loads in a background thread when the app starts (its lifespan), so the
    page and ``/api/health`` answer at once; model endpoints answer 503 until it is
    ready. Tests can pass an already loaded ``reader`` instead of a factory.

    Args:
        reader_factory: Builds the reader, e.g. ``lambda: Reader.load("smollm2-135m")``.
        reader: An already loaded reader (exclusive with ``reader_factory``).
        target: Target label shown while loading.
        decoder: Decoder label shown while loading.
        device: Device label shown while loading.
        max_waiting: Requests that may wait for the model at once; one more gets 503.
        request_timeout: Seconds a request may take, queueing included, before it gets 504
            (``None``: no limit). A model call already running finishes; the rest never run.
        allowed_hosts: ``Host`` names accepted on a loopback address besides 127.0.0.1,
            localhost and [::1] (``"*"``: any).
        decoders: Other decoders a request may choose, by name (e.g.
            ``{"shipped:relations": lambda: Reader.load(target, "shipped:relations")}``),
            each loaded on the first request that chooses it.
        decoder_name: The name of the server's own decoder (``"default"`` names it too).
        steer_decoder: The decoder folder (or ``shipped:NAME``) that steering reads with;
            ``None``: :func:`latentqa.steer.model.steering_decoder`'s choice for the target.
            Its model loads on the first ``/api/steer`` run, from ``target`` (else the
            reader's) on ``device`` (else the reader's).
        steer_factory: Builds the :class:`~latentqa.steer.model.SteerableModel` instead
            (e.g. with a dtype); ``steer_decoder`` is then unused.

    Returns:
        The FastAPI application; ``app.state.host`` is its :class:`ModelHost`,
        ``app.state.steering`` its :class:`~latentqa.server.steering.SteeringRunner`.
    """
    host = ModelHost(
        reader_factory,
        reader=reader,
        labels={"target": target, "decoder": decoder, "device": device},
        max_waiting=max_waiting,
        request_timeout=request_timeout,
        decoders=decoders,
        decoder_name=decoder_name,
    )
    page = {name: _static(name) for name in ("index.html", "docs.html", *STATIC_TYPES)}

    def load_steerable() -> Any:
        from latentqa.steer.model import SteerableModel  # here: it imports torch

        name, where = steer_target(host, target, device)
        return SteerableModel.load(name, steer_decoder, device=where)

    steering = SteeringRunner(steer_factory or load_steerable)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        host.bind_loop()
        host.start()
        yield
        steering.shutdown()

    app = FastAPI(
        title="latentqa",
        summary="Ask a decoder questions about a language model's activations.",
        description=(
            "A decoder (the target model with LoRA adapters) reads the frozen target's "
            "activations on a dialog and answers questions about them in plain English. "
            'Requests take turns on the single model. Errors are `{"error": message}`.'
        ),
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.host = host
    app.state.steering = steering
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(InternalErrors)
    app.add_middleware(LoopbackHostGuard, allowed=tuple(allowed_hosts))  # outermost: first
    install_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page["index.html"])

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(page["docs.html"])

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC_TYPES:
            raise HTTPException(404, f"no static file {name!r}")
        return Response(
            page[name], media_type=STATIC_TYPES[name], headers={"Cache-Control": "no-cache"}
        )

    @app.get("/api/health", response_model=Health, tags=["status"])
    async def health() -> Health:
        """Whether the model is loading, ready or failed, and what is running."""
        return Health(**host.info(), limits=LIMITS)

    @app.get("/api/examples", response_model=list[Example], tags=["status"])
    async def examples() -> list[Example]:
        """Example dialogs (with a hidden system prompt) and questions to start from.

        Examples for a decoder this server does not offer are left out.
        """
        names = host.decoders.names
        return [e for e in EXAMPLES if e.decoder is None or e.decoder in names]

    def _read_layers(layer: int | None, reader: ReaderLike) -> tuple[int | None, list[int]]:
        info = describe_reader(reader)
        if layer is None:
            return None, list(info["read_layers"] or [])
        checked = check_layer(layer, info["n_layers"])
        return checked, [checked]

    def _choice(request: Any) -> tuple[str, dict[str, Any]]:
        """The chosen decoder's name (checked; 503 while loading) and the subject keyword."""
        choice = host.decoders.choose(request.decoder)
        host.reader  # noqa: B018 - raises ModelUnavailable (503) until the model is ready
        subject = {} if request.subject is None else {"subject": request.subject}
        return choice or host.decoders.own, subject

    @app.post("/api/ask", response_model=AskResponse, responses=ERRORS, tags=["read"])
    async def ask(request: AskRequest, http: Request) -> AskResponse:
        """The decoder's answer to each question about the target's activations on the dialog.

        Each answer comes with its evidence: its mean log-likelihood per token with the
        dialog's activations minus its mean over 16 reference dialogs' (nats per token).
        Above `evidence_threshold` it was read from the activations; otherwise the
        decoder would have said it of any dialog.
        """
        name, subject = _choice(request)
        dialog = [message.model_dump() for message in request.dialog]
        layers: list[int] = []

        async def work(session: Session) -> tuple[list, float]:
            reader = await host.reader_for(session, request.decoder)
            layer, layers[:] = _read_layers(request.layer, reader)
            return await session.call(
                reader.ask,
                dialog,
                list(request.questions),
                evidence=True,
                max_new_tokens=request.max_new_tokens,
                temperature=request.temperature,
                layer=layer,
                **subject,
            )

        answers, seconds = await host.serve(work, is_disconnected=http.is_disconnected)
        return AskResponse(
            answers=[answer.text for answer in answers],
            evidence=[answer.evidence for answer in answers],
            logprob_real=[answer.logprob_real for answer in answers],
            logprob_zeroed=[answer.logprob_zeroed for answer in answers],
            logprob_reference=[answer.logprob_reference for answer in answers],
            evidence_threshold=answers[0].threshold if answers else 0.0,
            read_layers=layers,
            decoder=name,
            seconds=round(seconds, 3),
        )

    @app.post("/api/score", response_model=ScoreResponse, responses=ERRORS, tags=["read"])
    async def score(request: ScoreRequest, http: Request) -> ScoreResponse:
        """Log-likelihood of each candidate answer to the question (higher is likelier)."""
        _name, subject = _choice(request)
        dialog = [message.model_dump() for message in request.dialog]
        layers: list[int] = []

        async def work(session: Session) -> tuple[list[float], float]:
            reader = await host.reader_for(session, request.decoder)
            layer, layers[:] = _read_layers(request.layer, reader)
            return await _score(session, reader, request, dialog, layer, subject)

        scores, seconds = await host.serve(work, is_disconnected=http.is_disconnected)
        return ScoreResponse(scores=scores, read_layers=layers, seconds=round(seconds, 3))

    @app.post(
        "/api/layer-scores", response_model=LayerScoresResponse, responses=ERRORS, tags=["read"]
    )
    async def layer_scores(request: LayerScoresRequest, http: Request) -> LayerScoresResponse:
        """Score the candidate answers with each target layer read in turn.

        Without ``layers``: every layer the decoder reads alone (a decoder with a
        projector reads only its own read layers). Each distinct layer is one model call
        (at most 64 per request; duplicates are scored once); other requests may take
        their turn in between.
        """
        _name, subject = _choice(request)
        asked = request.layers
        chosen = None if asked is None else distinct_layers(asked, host.info()["n_layers"])
        dialog = [message.model_dump() for message in request.dialog]
        layers: list[int] = []
        read_layers: list[int] = []

        async def work(session: Session) -> tuple[list[list[float]], float]:
            reader = await host.reader_for(session, request.decoder)
            described = describe_reader(reader)
            read_layers[:] = described["read_layers"] or []
            layers[:] = every_layer(described) if chosen is None else chosen
            rows: list[list[float]] = []
            total = 0.0
            for layer in layers:  # a deadline or a disconnect stops it between calls
                row, seconds = await _score(session, reader, request, dialog, layer, subject)
                rows.append(row)
                total += seconds
            return rows, total

        rows, total = await host.serve(work, is_disconnected=http.is_disconnected)
        return LayerScoresResponse(
            layers=layers,
            scores=rows,
            read_layers=read_layers,
            seconds=round(total, 3),
        )

    def steer_check() -> None:
        # Steering needs the target's spec: without one of its own, the app waits for the reader.
        if steer_factory is None:
            steer_target(host, target, device)

    install_steering_routes(app, steering, steer_check)
    return app
