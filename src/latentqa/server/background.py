"""Run the app with uvicorn in a background thread (tests, notebooks, screenshots)."""

from __future__ import annotations

import threading
import time
from types import TracebackType

from fastapi import FastAPI


class BackgroundServer:
    """A uvicorn server in a daemon thread; a context manager that starts and stops it.

    Args:
        app: The application, e.g. from :func:`latentqa.server.create_app`.
        host: Interface to bind (loopback by default).
        port: Port to bind; 0 picks a free one (see :attr:`url`).
        log_level: uvicorn's log level.

    Example:
        >>> with BackgroundServer(create_app(reader=reader)) as server:  # doctest: +SKIP
        ...     print(server.url)
    """

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ) -> None:
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="latentqa-serve", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:8123``."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        """Start serving and wait until the socket is bound.

        Raises:
            RuntimeError: The server did not start within ``timeout`` seconds.
        """
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.host}:{self.port} did not start")
            time.sleep(0.02)
        sockets = [s for server in self._server.servers for s in server.sockets]
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
