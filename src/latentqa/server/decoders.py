"""The decoders a server offers besides its own, by name, each loaded on first use.

``latentqa serve`` offers the shipped ``relations`` decoder beside the default one (or
beside the user's ``--decoder``): a request names the decoder it wants, and
:class:`~latentqa.server.host.ModelHost` loads it on the first request that chooses it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from latentqa.errors import LatentQAError
from latentqa.server.host_api import ReaderLike

logger = logging.getLogger("latentqa.server")

DEFAULT_DECODER = "default"
"""The name that always chooses the server's own decoder."""


class DecoderChoices:
    """The server's own decoder's name and the other decoders' factories and readers.

    Args:
        own: The name of the server's own decoder (``"default"`` always names it too).
        others: Other decoders by name: each factory builds a reader (e.g. ``lambda:
            Reader.load(target, "shipped:relations")``), called on first use.
    """

    def __init__(
        self,
        own: str = DEFAULT_DECODER,
        others: Mapping[str, Callable[[], ReaderLike]] | None = None,
    ) -> None:
        self.own = own
        reserved = (own, DEFAULT_DECODER)
        self._factories = {k: v for k, v in (others or {}).items() if k not in reserved}
        self.loaded: dict[str, ReaderLike] = {}
        """The other decoders loaded so far, by name."""

    @property
    def names(self) -> list[str]:
        """The decoders a request may choose: the server's own first, then the others."""
        return [self.own, *self._factories]

    def choose(self, name: str | None) -> str | None:
        """``None`` for the server's own decoder (``name`` ``None``, ``"default"`` or its
        name), else ``name``, checked.

        Raises:
            LatentQAError: No decoder is called ``name``.
        """
        if name is None or name in (DEFAULT_DECODER, self.own):
            return None
        if name not in self._factories:
            raise LatentQAError(
                f"this server has no decoder {name!r}; choose one of " + ", ".join(self.names)
            )
        return name

    def load(self, name: str) -> ReaderLike:
        """The reader of the other decoder ``name``, built on first use and kept.

        Run it as a model call (under the model lock): loads never overlap model calls.
        """
        if name not in self.loaded:
            started = time.monotonic()
            logger.info("loading decoder %s", name)
            self.loaded[name] = self._factories[name]()
            logger.info("decoder %s ready after %.1f s", name, time.monotonic() - started)
        return self.loaded[name]
