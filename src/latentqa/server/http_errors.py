"""Every failure as a JSON ``{"error": "<one line>"}`` answer, and the request guards.

Status codes: 400 malformed JSON, input the reader rejects (:class:`LatentQAError`), or
a ``Host`` header a loopback server does not answer (:class:`LoopbackHostGuard`), 404 /
405 unknown route or method, 413 a body over :data:`MAX_BODY_BYTES`, 422 a body that
breaks the schema (empty dialog, message too long, unknown role, empty question), 499
(logged only) the client disconnected, 500 an unexpected error (the body says only
:data:`INTERNAL_ERROR`; the detail goes to the server log), 503 while the model loads,
after it failed to load, or when too many requests already wait for it, 504 a request
that ran past its deadline, 409 a steering run started while another one runs
(:class:`SteeringBusy`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from latentqa.errors import LatentQAError
from latentqa.server.host_api import (
    ClientGone,
    DeadlineExceeded,
    ModelFailure,
    ModelUnavailable,
    QueueFull,
    SteeringBusy,
)
from latentqa.server.schemas import MAX_BODY_BYTES

logger = logging.getLogger("latentqa.server")

MAX_LISTED_ERRORS = 3
INTERNAL_ERROR = "internal error; see the server log"
"""The whole message of every 500 answer (no exception text or paths reach the client)."""
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
"""``Host`` names a loopback server answers (with any port)."""
CLIENT_CLOSED_REQUEST = 499


def error_response(status_code: int, message: str, **extra: Any) -> JSONResponse:
    """A JSON error answer ``{"error": message, ...}``."""
    headers = {"Retry-After": "5"} if status_code == 503 else None
    return JSONResponse({"error": message, **extra}, status_code=status_code, headers=headers)


def _location(loc: Sequence[Any]) -> str:
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the request body"


def _describe(error: dict[str, Any]) -> str:
    kind, ctx, value = error.get("type", ""), error.get("ctx") or {}, error.get("input")
    where = _location(error.get("loc", ()))
    if kind == "string_too_long":
        size = len(value) if isinstance(value, str) else "?"
        return f"{where} is too long: {size} characters (the limit is {ctx.get('max_length')})"
    if kind == "too_short" and where == "dialog":
        return "the dialog is empty: add at least one message (a user turn)"
    if kind == "too_short" and ctx.get("min_length") == 1:
        return f"{where} must not be empty"
    if kind == "too_short":
        return f"{where} needs at least {ctx.get('min_length')} items"
    if kind == "too_long":
        return f"{where} has too many items (at most {ctx.get('max_length')})"
    if kind in ("greater_than_equal", "less_than_equal"):
        bound = ctx.get("ge", ctx.get("le"))
        side = "at least" if kind == "greater_than_equal" else "at most"
        return f"{where} must be {side} {bound}, got {value!r:.40}"
    if kind == "literal_error":
        return f"{where} must be one of {ctx.get('expected')}, got {value!r:.40}"
    if where == "the request body" and kind in ("model_attributes_type", "dict_type"):
        return "the request body must be a JSON object (send Content-Type: application/json)"
    if kind == "missing":
        return f"{where} is required"
    if kind == "extra_forbidden":
        return f"{where} is not a known field"
    if kind == "value_error":
        return f"{where} {str(error.get('msg', '')).removeprefix('Value error, ')}"
    return f"{where}: {error.get('msg', 'is invalid')}"


def validation_message(errors: Sequence[dict[str, Any]]) -> tuple[int, str]:
    """Status code and one-line message for pydantic / FastAPI validation errors."""
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "invalid JSON")
            loc = error.get("loc", ())
            where = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
            return 400, f"malformed JSON{where}: {reason}"
    listed = [_describe(error) for error in errors[:MAX_LISTED_ERRORS]]
    more = len(errors) - len(listed)
    message = "; ".join(listed) + (f" (and {more} more)" if more > 0 else "")
    return 422, message or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Turn every error into a JSON ``{"error": ...}`` answer (see the module docstring)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        status_code, message = validation_message(list(exc.errors()))
        return error_response(status_code, message)

    @app.exception_handler(LatentQAError)
    async def _rejected(_request: Request, exc: LatentQAError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(ModelUnavailable)
    async def _unavailable(_request: Request, exc: ModelUnavailable) -> JSONResponse:
        return error_response(503, exc.message, status=exc.status)

    @app.exception_handler(ModelFailure)
    async def _failed(_request: Request, exc: ModelFailure) -> JSONResponse:
        # The traceback was logged where the call failed; the client gets no detail.
        return error_response(500, INTERNAL_ERROR)

    @app.exception_handler(QueueFull)
    async def _busy(_request: Request, exc: QueueFull) -> JSONResponse:
        return error_response(503, str(exc), status="busy")

    @app.exception_handler(SteeringBusy)
    async def _steering(_request: Request, exc: SteeringBusy) -> JSONResponse:
        return error_response(409, str(exc), status="steering", id=exc.run_id)

    @app.exception_handler(DeadlineExceeded)
    async def _late(_request: Request, exc: DeadlineExceeded) -> JSONResponse:
        return error_response(504, str(exc))

    @app.exception_handler(ClientGone)
    async def _gone(_request: Request, exc: ClientGone) -> JSONResponse:
        return error_response(CLIENT_CLOSED_REQUEST, str(exc))  # nobody reads it

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))


class BodyTooLarge(StarletteHTTPException):
    """Raised while a streamed body passes the limit (FastAPI re-raises HTTP exceptions)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is too large (the limit is {max_bytes} bytes)")


class BodySizeLimit:
    """ASGI middleware: answer 413 to a request body over ``max_bytes`` without reading it all.

    Checks ``Content-Length`` first, then counts the bytes of a streamed body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _response(self) -> JSONResponse:
        return error_response(413, str(BodyTooLarge(self.max_bytes).detail))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._response()(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await self._response()(scope, receive, send)


class InternalErrors:
    """ASGI middleware: any unexpected exception becomes a 500 :data:`INTERNAL_ERROR` answer.

    The exception, with its traceback, goes to the ``latentqa.server`` log only.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception:
            logger.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await error_response(500, INTERNAL_ERROR)(scope, receive, send)


def host_name(header: str) -> str:
    """The name in a ``Host`` header, port removed, lower-case: ``[::1]:80`` -> ``[::1]``."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end > 0 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.removesuffix(".")


def is_loopback_address(address: str) -> bool:
    """Whether ``address`` is a loopback IP (``127.0.0.0/8``, ``::1``)."""
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


class LoopbackHostGuard:
    """ASGI middleware: on a loopback socket, answer only requests addressed to this machine.

    A web page can point its own host name at 127.0.0.1 (DNS rebinding) and then call a
    local server from the browser as if same-origin; its requests still carry that name
    in ``Host``. So when the connection arrived on a loopback address, a ``Host`` other
    than :data:`LOOPBACK_HOSTS` (any port) or ``allowed`` is answered 400. Connections on
    other addresses (a server bound to a public interface) are not checked.

    Args:
        app: The application.
        allowed: More host names to accept (e.g. the machine's name); ``"*"`` accepts all.
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = ()) -> None:
        self.app = app
        extra = [host_name(name) for name in allowed]
        self.any = "*" in extra
        self.allowed = frozenset([*LOOPBACK_HOSTS, *extra])

    def _refusal(self, header: str) -> JSONResponse:
        shown = header if len(header) <= 100 else header[:100] + "..."
        return error_response(
            400,
            f"Host header {shown!r} is not accepted: this server listens on a loopback "
            "address and answers only requests addressed to 127.0.0.1, localhost or [::1] "
            "(a guard against DNS rebinding); open it at http://127.0.0.1:<port>/, or "
            "start it with `latentqa serve --allow-host NAME`",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if (
            self.any
            or scope["type"] != "http"
            or not server
            or not is_loopback_address(str(server[0]))
        ):
            await self.app(scope, receive, send)
            return
        headers = [value for key, value in scope.get("headers") or [] if key == b"host"]
        header = headers[0].decode("latin-1") if headers else ""
        if len(headers) > 1 or (headers and host_name(header) not in self.allowed):
            await self._refusal(header)(scope, receive, send)
            return
        await self.app(scope, receive, send)
