"""``latentqa eval all``: run every evaluation that exists, write one report.

Evaluations are found at run time. The known ones (:data:`KNOWN_TASKS`) are looked up
by module name and reported as skipped, with the reason, when their module is missing;
any other module of :mod:`latentqa.evals` with an entry point joins too.

Every task's entry point is its module's ``run_in_suite(ctx: SuiteContext) -> dict``
(the steering evaluations get theirs from
:class:`~latentqa.evals.steering.SteeringEvaluation`). The result object is like
the ``--json`` line of the task's own command (``task``, ``n``, ``methods``; optionally
``per_layer``, ``plots``: PNG names written into ``ctx.out``, and ``markdown``: extra
report text). A task raises :class:`SkipTask` (or a ``LatentQAError``) when it cannot
run, e.g. without its data.

Output: ``OUT/report.md`` (every table and plot) and ``OUT/results.json`` (every figure).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import pkgutil
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentqa.errors import LatentQAError
from latentqa.models import EMBEDDED_MODEL

ENTRY = "run_in_suite"
KNOWN_TASKS: dict[str, str] = {
    "system-prompt": "latentqa.evals.system_prompt",
    "relations": "latentqa.evals.relations",
    "control-reading": "latentqa.evals.control_reading",
    "sentiment": "latentqa.evals.sentiment",
    "crows-pairs": "latentqa.evals.crows_pairs",
    "audit": "latentqa.evals.audit",
}
"""Task name -> module; the report lists them in this order."""
TASK_DECODERS: dict[str, str] = {
    "relations": "shipped:relations",
    "control-reading": "shipped:control",
    "sentiment": "shipped:control",
    "crows-pairs": "shipped:control",
    "audit": "shipped:control",
}
"""A task's own default decoder for the embedded target (facts are read by a decoder
trained on them, steering uses the decoder that reads its controls); ``--task-decoder``
replaces it."""
HEADLINE_MEASURES: dict[str, str] = {
    "system-prompt": "mc_accuracy",
    "relations": "accuracy",
    "control-reading": "tone",
}
"""The measure of a reading task that the report's headline table shows."""
CONTROLS = ("lit_zeroed", "lit_shuffled", "no_system_prompt")
"""Methods that are the decoder with its activations taken away (or without the hidden
prompt): the headline shows them apart from the baselines."""
Runner = Callable[["SuiteContext"], dict[str, Any]]


class SkipTask(Exception):
    """Raised by an evaluation that cannot run in this suite (the message says why)."""


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
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr)
    _readers: dict[tuple[str, str | None], Any] = field(default_factory=dict, repr=False)

    def decoder_for(self, task: str) -> str | None:
        """``decoders[task]``, else the task's shipped decoder (:data:`TASK_DECODERS`, for
        the embedded target), else the default ``decoder``."""
        if task in self.decoders:
            return self.decoders[task]
        if task in TASK_DECODERS and str(self.target).strip().lower() == EMBEDDED_MODEL:
            return TASK_DECODERS[task]
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
            self._readers[key] = Reader.base(
                self.target,
                read_layers=spec.read_layers,
                write_layer=spec.write_layer,
                mode=spec.mode,
                max_read_tokens=spec.max_read_tokens,
                pool=spec.pool,
                device=self.device,
            )
        return self._readers[key]


def _runner(task: str, module_name: str) -> Runner:
    """The task's runner; :class:`SkipTask` when its module or entry point is missing."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise SkipTask(f"not available (no module {module_name})") from None
    runner = getattr(module, ENTRY, None)
    if not callable(runner):
        raise SkipTask(f"{module_name} has no {ENTRY}(ctx) entry point")
    return runner


def discover() -> dict[str, str]:
    """Task name -> module: the known tasks, then other evals modules with an entry point."""
    import latentqa.evals as package

    tasks = dict(KNOWN_TASKS)
    known_modules = set(tasks.values()) | {__name__}
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name in known_modules:
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:
            continue
        task = info.name.rsplit(".", 1)[1].replace("_", "-")
        if callable(getattr(module, ENTRY, None)):
            tasks[task] = info.name
    return tasks


def run_suite(
    ctx: SuiteContext,
    tasks: Sequence[str] | None = None,
    runners: Mapping[str, Runner] | None = None,
) -> dict[str, Any]:
    """Run every evaluation found (or ``tasks``), then write the report and the JSON.

    Args:
        ctx: Shared models, data and options.
        tasks: Only these task names (default: all discovered).
        runners: Replacement runners by task name (tests use stubs).

    Returns:
        ``{"tasks": {task: result}, "skipped": {task: reason}, "failed": {task: error}}``,
        also written to ``ctx.out/results.json``.
    """
    found = discover()
    chosen = list(found) if tasks is None else list(tasks)
    unknown = [t for t in chosen if t not in found and t not in (runners or {})]
    if unknown:
        raise LatentQAError(f"unknown evaluation(s) {unknown}; known: {', '.join(found)}")
    ctx.out.mkdir(parents=True, exist_ok=True)
    suite: dict[str, Any] = {"tasks": {}, "skipped": {}, "failed": {}}
    for task in chosen:
        try:
            runner = (runners or {}).get(task) or _runner(task, found[task])
            ctx.log(f"== {task}")
            suite["tasks"][task] = runner(ctx)
        except (SkipTask, LatentQAError) as reason:
            suite["skipped"][task] = str(reason)
            ctx.log(f"{task}: skipped: {reason}")
        except Exception as error:  # one failing evaluation must not lose the others
            suite["failed"][task] = f"{type(error).__name__}: {error}"
            ctx.log(f"{task}: failed:\n{traceback.format_exc()}")
    (ctx.out / "results.json").write_text(json.dumps(suite, indent=2, default=str) + "\n")
    (ctx.out / "report.md").write_text(report_markdown(suite, ctx))
    return suite


def _cells(methods: Mapping[str, Mapping[str, Any]], names: Sequence[str], measure: str) -> str:
    """``name value`` of each of ``names`` that has ``measure``, joined; ``–`` for none."""
    found = [(n, methods[n].get(measure)) for n in names if n in methods]
    return " · ".join(f"{n} {v:.3f}" for n, v in found if v is not None) or "–"


def headline_table(suite: Mapping[str, Any]) -> list[str]:
    """Markdown lines: per reading task, LIT's headline measure beside the same decoder with
    its activations taken away and beside every baseline (empty without such a task)."""
    rows = []
    for task, result in suite["tasks"].items():
        measure = HEADLINE_MEASURES.get(task)
        methods = result.get("methods", {})
        if measure is None or measure not in methods.get("lit", {}):
            continue

        baselines = [n for n in methods if n != "lit" and n not in CONTROLS]
        rows.append(
            f"| {task} (n = {result.get('n', '?')}) | {measure} | "
            f"**{methods['lit'][measure]:.3f}** | {_cells(methods, CONTROLS, measure)} | "
            f"{_cells(methods, baselines, measure)} |"
        )
    if not rows:
        return []
    return [
        "",
        "| task | measure | LIT | activations taken away | baselines |",
        "|---|---|---:|---|---|",
        *rows,
    ]


def report_markdown(suite: Mapping[str, Any], ctx: SuiteContext) -> str:
    """One markdown report: a section per evaluation (tables, plots), then skips and failures."""
    from latentqa.evals.report import markdown_table

    lines = [
        "# latentqa evaluation report",
        "",
        f"Target `{ctx.target}`; decoder `{ctx.decoder or 'shipped'}`"
        + "".join(
            f"; {task} decoder `{ctx.decoder_for(task)}`"
            for task in suite["tasks"]
            if ctx.decoder_for(task) != ctx.decoder
        )
        + f"; seed {ctx.seed}. Figures: `results.json`.",
    ]
    lines += headline_table(suite)
    for task, result in suite["tasks"].items():
        lines += ["", f"## {task}", ""]
        lines.append(result["markdown"] if "markdown" in result else markdown_table(result))
        if result.get("checks") is not None:  # the steering evaluations' targets
            lines += ["", f"Checks: `{json.dumps(result['checks'])}`"]
        for plot in result.get("plots", []):
            lines += ["", f"![{task}: {Path(plot).stem}]({plot})"]
    for title, key in (("Skipped", "skipped"), ("Failed", "failed")):
        if suite[key]:
            lines += ["", f"## {title}", ""]
            lines += [f"- **{task}**: {why}" for task, why in suite[key].items()]
    return "\n".join(lines) + "\n"
