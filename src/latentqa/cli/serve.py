"""``latentqa serve``: a local web page and JSON API to ask a decoder about activations."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from latentqa.errors import LatentQAError
from latentqa.models import EMBEDDED_MODEL

if TYPE_CHECKING:
    from latentqa.reader import Reader
    from latentqa.steer.model import SteerableModel

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_WAITING = 8  # as latentqa.server.host (not imported here: fastapi may be missing)
DEFAULT_REQUEST_TIMEOUT = 120.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a local web page and JSON API for asking a decoder about activations",
        description=(
            "Start a local web app: write a dialog, ask the decoder questions about the "
            "target's activations on it, pick the read layer, and chart how likely an answer "
            "is at each layer; in the Steer tab, steer the target toward control QA pairs and "
            "compare its completions before and after. The model loads in the background; the "
            "page shows its progress. "
            "The JSON API is documented at /docs. Binds 127.0.0.1 unless --host says otherwise."
        ),
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="interface to bind (default: %(default)s; anything else exposes the server)",
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument(
        "--target", default=EMBEDDED_MODEL, help="target model spec (default: %(default)s)"
    )
    parser.add_argument(
        "--decoder",
        default=None,
        help="decoder folder from `latentqa train`, or shipped:default (the default) or "
        "shipped:relations; the page also offers the other shipped decoders, loaded when "
        "first chosen, but this one stays its default",
    )
    parser.add_argument(
        "--steer-decoder",
        default=None,
        metavar="DECODER",
        help="decoder the Steer tab steers with: a folder from `latentqa train` or "
        "shipped:NAME (default: shipped:control for the embedded target); its model, a "
        "second copy of the target, loads on the first steering run",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--dtype",
        default="float32",
        help="weights' dtype: float32 (default), bfloat16, or auto (bfloat16 where this "
        "machine runs it at least as fast as float32: a CUDA device that supports it, or a "
        "CPU whose bfloat16 matmuls measure at least as fast; else float32)",
    )
    parser.add_argument(
        "--max-waiting",
        type=int,
        default=DEFAULT_MAX_WAITING,
        metavar="N",
        help="requests that may wait for the model at once; one more gets 503 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT,
        metavar="SECONDS",
        help="a request taking longer, queueing included, is stopped between model calls "
        "and gets 504 (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="on a loopback address, also answer requests with this Host name (repeatable; "
        "127.0.0.1, localhost and [::1] always work; others are refused against DNS "
        "rebinding)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level (default: %(default)s)",
    )
    parser.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def shipped_choices(target: str) -> list[str]:
    """The shipped decoders installed for ``target`` (``shipped:NAME``; none for other targets)."""
    from latentqa.decoder.folder import SHIPPED_NAMES, SHIPPED_PREFIX, shipped_decoder

    names = []
    for name in SHIPPED_NAMES:
        try:
            shipped_decoder(str(target), name)
        except LatentQAError:
            continue
        names.append(SHIPPED_PREFIX + name)
    return names


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from latentqa.server import create_app
    except ImportError as error:
        raise LatentQAError(
            f"`latentqa serve` needs fastapi and uvicorn ({error}); pip install fastapi uvicorn"
        ) from None
    if not 0 <= args.port <= 65535:
        raise LatentQAError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_waiting < 0:
        raise LatentQAError(f"--max-waiting must be 0 or more, got {args.max_waiting}")
    if not (math.isfinite(args.request_timeout) and args.request_timeout > 0):
        raise LatentQAError(
            f"--request-timeout must be a positive number of seconds, got {args.request_timeout}"
        )
    from latentqa.decoder.folder import preflight_decoder

    # Refuse to start rather than serve 503 "failed to load" forever.
    preflight_decoder(args.target, args.decoder, device=args.device, dtype=args.dtype)
    if args.steer_decoder is not None:  # the default one is checked by the first run
        preflight_decoder(args.target, args.steer_decoder, device=args.device, dtype=args.dtype)
    if not is_loopback(args.host):
        print(
            f"warning: serving on {args.host}, not only on this machine: anyone who can reach "
            f"port {args.port} can run the model. The server has no authentication.",
            file=sys.stderr,
        )

    logger = logging.getLogger("latentqa.server")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("latentqa: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

    def loader(decoder: str | None) -> Callable[[], Reader]:
        def load() -> Reader:
            from latentqa import reader  # imported here: torch is slow to import

            return reader.Reader.load(args.target, decoder, device=args.device, dtype=args.dtype)

        return load

    def load_steerable() -> SteerableModel:
        from latentqa.steer.model import SteerableModel

        return SteerableModel.load(
            args.target, args.steer_decoder, device=args.device, dtype=args.dtype
        )

    from latentqa.decoder.folder import SHIPPED_PREFIX

    own = args.decoder if args.decoder is not None else SHIPPED_PREFIX + "default"
    others = {name: loader(name) for name in shipped_choices(args.target) if name != own}
    app = create_app(
        loader(args.decoder),
        target=args.target,
        decoder=args.decoder or "shipped",
        device=args.device,
        max_waiting=args.max_waiting,
        request_timeout=args.request_timeout,
        allowed_hosts=args.allow_host,
        decoders=others,
        decoder_name=own,
        steer_factory=load_steerable,  # with --steer-decoder, --device and --dtype
    )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"latentqa: serving on http://{shown}:{args.port}/ (the model loads in the background; "
        "the page shows when it is ready; Ctrl+C stops)",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
