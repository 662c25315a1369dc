"""``latentqa serve``: a local web page and JSON API for asking a decoder about activations.

Build the app with :func:`create_app` (a reader factory loads the model in the
background) and serve it with uvicorn, or with :class:`BackgroundServer` in a thread.
"""

from latentqa.server.app import create_app
from latentqa.server.background import BackgroundServer
from latentqa.server.host import ModelHost
from latentqa.server.host_api import describe_reader
from latentqa.server.schemas import LIMITS, MAX_BODY_BYTES, MAX_MESSAGE_CHARS

__all__ = [
    "LIMITS",
    "MAX_BODY_BYTES",
    "MAX_MESSAGE_CHARS",
    "BackgroundServer",
    "ModelHost",
    "create_app",
    "describe_reader",
]
