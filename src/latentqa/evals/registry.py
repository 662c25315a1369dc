"""The evaluations, in one place: what an evaluation is and which ones exist.

Every evaluation module exports ``EVALUATION``, an :class:`Evaluation`: its name (``latentqa
eval NAME``), help text, options dataclass, the command's run and report, the runner that
``latentqa eval all`` calls with a :class:`SuiteContext`, its default decoder for the
embedded target and its headline measure. :data:`EVALUATION_MODULES` lists the modules,
in the order the CLI and the report show them; each is imported only when asked for (they
import torch-heavy code). The CLI's ``eval`` subcommands and ``eval all`` are generated
from them.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentqa.errors import LatentQAError
from latentqa.models import EMBEDDED_MODEL

EVALUATION_MODULES: tuple[str, ...] = (
    "system_prompt_task",
    "relations_task",
    "control_reading",
    "sentiment",
    "crows_pairs",
    "audit",
)
"""Modules of :mod:`latentqa.evals` that export ``EVALUATION``, in report order."""

Log = Callable[[str], None]
Result = dict[str, Any]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _succeeded(_result: Result) -> int:
    return 0


class SkipTask(Exception):
    """Raised by an evaluation that cannot run in this suite (the message says why)."""


@dataclass(frozen=True)
class Evaluation:
    """One evaluation as the CLI and ``latentqa eval all`` see it.

    Attributes:
        name: Task name: ``latentqa eval NAME`` and its key in the suite's results.
        help: One line for ``latentqa eval --help``.
        description: The paragraph of ``latentqa eval NAME --help``.
        config: Options dataclass: one command-line option per field.
        run: ``run(config, log) -> result``: the command's checks (before any model
            loads), the evaluation, the result object (the ``--json`` line).
        report: ``report(result, config, log) -> text``: writes the result's files
            under the config's output folder, if any, and returns the markdown the
            command prints.
        suite: ``suite(ctx) -> result``: the runner of ``latentqa eval all`` (``None``:
            not part of the suite). It may add ``plots`` (PNG names written into
            ``ctx.out``) and ``markdown`` (the report's text instead of the table).
        default_decoder: The task's own decoder for the embedded target in the suite
            (``None``: the suite's default decoder); ``--task-decoder`` replaces it.
        headline: The measure of a reading task that the report's headline table shows.
        json_help: Help text of the command's ``--json`` option.
        status: The command's exit status from its result.
    """

    name: str
    help: str
    description: str
    config: type
    run: Callable[[Any, Log], Result]
    report: Callable[[Result, Any, Log], str]
    suite: Callable[[SuiteContext], Result] | None = None
    default_decoder: str | None = None
    headline: str | None = None
    json_help: str = "print the result as one JSON line last"
    status: Callable[[Result], int] = _succeeded


def fallback_name(module: str) -> str:
    """The task name of a module that cannot be loaded: ``relations_task`` -> ``relations``."""
    return module.removesuffix("_task").replace("_", "-")


def load_evaluation(module: str) -> Evaluation:
    """The ``EVALUATION`` of ``latentqa.evals.<module>``, imported now.

    Raises:
        SkipTask: The module does not exist, or exports no :class:`Evaluation`.
    """
    full = f"{__package__}.{module}"
    try:
        loaded = importlib.import_module(full)
    except ModuleNotFoundError as error:
        if error.name != full:
            raise
        raise SkipTask(f"not available (no module {full})") from None
    evaluation = getattr(loaded, "EVALUATION", None)
    if not isinstance(evaluation, Evaluation):
        raise SkipTask(f"{full} has no EVALUATION (an Evaluation)")
    return evaluation


def discover() -> dict[str, Evaluation | Exception]:
    """Task name -> evaluation, in report order; a module that cannot be loaded maps its
    :func:`fallback_name` to the exception (:class:`SkipTask` when it is missing).

    Raises:
        LatentQAError: Two modules export evaluations of the same name.
    """
    found: dict[str, Evaluation | Exception] = {}
    for module in EVALUATION_MODULES:
        try:
            entry: Evaluation | Exception = load_evaluation(module)
            name = entry.name
        except Exception as error:  # reported by the suite, raised by evaluations()
            entry, name = error, fallback_name(module)
        if name in found:
            raise LatentQAError(f"two evaluations are named {name!r}")
        found[name] = entry
    return found


def evaluations() -> list[Evaluation]:
    """Every evaluation whose module exists, in report order (a module that fails to
    import raises its error)."""
    loaded = []
    for entry in discover().values():
        if isinstance(entry, Evaluation):
            loaded.append(entry)
        elif not isinstance(entry, SkipTask):
            raise entry
    return loaded


def find_evaluation(name: str) -> Evaluation | None:
    """The evaluation called ``name``; ``None`` when there is none (or it cannot load)."""
    entry = discover().get(name)
    return entry if isinstance(entry, Evaluation) else None


@dataclass
class SuiteContext:
    """What every evaluation of the suite shares: models, data folders, options.

    Attributes:
        out: Output folder (plots go here).
        target: Target model spec.
        decoder: Default decoder folder (``None``: the shipped decoder).
        decoders: Per-task decoder folders, e.g. ``{"relations": "runs/rel"}``.
        data: Per-task data folders, e.g. ``{"system-prompt": "data/", ...}``; a task
            without one uses its own default (system-prompt: the shipped held-out set;
            relations: the facts beside its decoder).
        device: Device for every model.
        n: Item cap passed to each evaluation.
        seed: Seed passed to each evaluation.
        layers: Read layers to sweep (``None``: no sweep).
        log: Progress messages.
    """

    out: Path
    target: str = EMBEDDED_MODEL
    decoder: str | None = None
    decoders: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    n: int | None = None
    seed: int = 0
    layers: list[int] | None = None
    log: Log = _stderr
    _readers: dict[tuple[str, str | None], Any] = field(default_factory=dict, repr=False)

    def decoder_for(self, task: str) -> str | None:
        """``decoders[task]``, else the task's own decoder (its evaluation's
        ``default_decoder``, for the embedded target), else the default ``decoder``."""
        if task in self.decoders:
            return self.decoders[task]
        evaluation = find_evaluation(task)
        own = evaluation.default_decoder if evaluation else None
        if own is not None and str(self.target).strip().lower() == EMBEDDED_MODEL:
            return own
        return self.decoder

    def reader(self, task: str) -> Any:
        """The task's decoder as a :class:`~latentqa.reader.Reader`, loaded once per folder."""
        from latentqa.reader import Reader

        key = ("decoder", self.decoder_for(task))
        if key not in self._readers:
            self._readers[key] = Reader.load(self.target, key[1], device=self.device)
        return self._readers[key]

    def base(self, task: str) -> Any:
        """The untrained target reading like the task's decoder (no adapter)."""
        from latentqa.reader import Reader

        spec = self.reader(task).spec
        key = ("base", json.dumps([spec.read_layers, spec.write_layer, spec.mode, spec.pool]))
        if key not in self._readers:
            self._readers[key] = Reader.base_like(spec, self.target, device=self.device)
        return self._readers[key]
