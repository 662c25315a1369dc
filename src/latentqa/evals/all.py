"""``latentqa eval all``: run every evaluation that exists, write one report.

The evaluations are those of :mod:`latentqa.evals.registry`, in its order; one whose
module is missing is reported as skipped, with the reason. Every task's entry point is
its evaluation's ``suite(ctx: SuiteContext) -> dict``. The result object is like the
``--json`` line of the task's own command (``task``, ``n``, ``methods``; optionally
``per_layer``, ``plots``: PNG names written into ``ctx.out``, and ``markdown``: extra
report text). A task raises :class:`SkipTask` (or a ``LatentQAError``) when it cannot
run, e.g. without its data.

Output: ``OUT/report.md`` (every table and plot) and ``OUT/results.json`` (every figure).
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from latentqa.errors import LatentQAError
from latentqa.evals.registry import (
    Evaluation,
    Log,
    SkipTask,
    SuiteContext,
    discover,
    find_evaluation,
)
from latentqa.models import EMBEDDED_MODEL

__all__ = ["ALL", "EvalAllConfig", "SkipTask", "SuiteContext", "run_all", "run_suite"]

CONTROLS = ("lit_zeroed", "lit_shuffled", "no_system_prompt")
"""Methods that are the decoder with its activations taken away (or without the hidden
prompt): the headline shows them apart from the baselines."""
Runner = Callable[[SuiteContext], dict[str, Any]]


@dataclasses.dataclass
class EvalAllConfig:
    """Options of ``latentqa eval all``."""

    out: str
    """report folder"""
    target: str = EMBEDDED_MODEL
    """target model"""
    decoder: str | None = None
    """default decoder folder or shipped:NAME (default: shipped)"""
    task_decoder: list[str] = dataclasses.field(
        default_factory=list, metadata={"repeatable": True, "metavar": "TASK=DIR"}
    )
    """decoder for one task, e.g. relations=runs/rel (repeatable; for the embedded target,
    relations reads with shipped:relations unless given)"""
    data: list[str] = dataclasses.field(
        default_factory=list, metadata={"repeatable": True, "metavar": "TASK=DIR"}
    )
    """data folder for one task, e.g. system-prompt=data/ (repeatable)"""
    tasks: list[str] | None = dataclasses.field(default=None, metadata={"metavar": "TASKS"})
    """only these evaluations"""
    layers: list[int] | None = dataclasses.field(default=None, metadata={"metavar": "LAYERS"})
    """also sweep these layers"""
    n: int | None = None
    """item cap for each evaluation"""
    seed: int = 0
    """random seed"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N"""


def _runner(entry: Evaluation | Exception) -> Runner:
    """The evaluation's suite runner; raises what stopped its module from loading."""
    if isinstance(entry, Exception):
        raise entry
    if entry.suite is None:
        raise SkipTask(f"{entry.name} has no suite runner")
    return entry.suite


def run_suite(
    ctx: SuiteContext,
    tasks: Sequence[str] | None = None,
    runners: Mapping[str, Runner] | None = None,
) -> dict[str, Any]:
    """Run every evaluation found (or ``tasks``), then write the report and the JSON.

    Args:
        ctx: Shared models, data and options.
        tasks: Only these task names (default: all registered).
        runners: Replacement runners by task name (tests use stubs).

    Returns:
        ``{"tasks": {task: result}, "skipped": {task: reason}, "failed": {task: error},
        "seconds": {task: wall time}}``, also written to ``ctx.out/results.json``.

    Raises:
        LatentQAError: A name in ``tasks`` is no evaluation's.
    """
    found = discover()
    chosen = list(found) if tasks is None else list(tasks)
    unknown = [t for t in chosen if t not in found and t not in (runners or {})]
    if unknown:
        raise LatentQAError(f"unknown evaluation(s) {unknown}; known: {', '.join(found)}")
    ctx.out.mkdir(parents=True, exist_ok=True)
    suite: dict[str, Any] = {"tasks": {}, "skipped": {}, "failed": {}, "seconds": {}}
    for task in chosen:
        started = time.perf_counter()
        try:
            runner = (runners or {}).get(task) or _runner(found[task])
            ctx.log(f"== {task}")
            suite["tasks"][task] = runner(ctx)
        except (SkipTask, LatentQAError) as reason:
            suite["skipped"][task] = str(reason)
            ctx.log(f"{task}: skipped: {reason}")
        except Exception as error:  # one failing evaluation must not lose the others
            suite["failed"][task] = f"{type(error).__name__}: {error}"
            ctx.log(f"{task}: failed:\n{traceback.format_exc()}")
        suite["seconds"][task] = round(time.perf_counter() - started, 1)
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
        evaluation = find_evaluation(task)
        # A result may name its own headline (e.g. a yes/no decoder's MC by yes/no).
        measure = result.get("headline") or (evaluation.headline if evaluation else None)
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
    if suite.get("seconds"):
        total = sum(suite["seconds"].values())
        times = " · ".join(f"{task} {s:.0f} s" for task, s in suite["seconds"].items())
        lines += ["", f"Wall time: {times} ({total / 60:.1f} min in all)."]
    for title, key in (("Skipped", "skipped"), ("Failed", "failed")):
        if suite[key]:
            lines += ["", f"## {title}", ""]
            lines += [f"- **{task}**: {why}" for task, why in suite[key].items()]
    return "\n".join(lines) + "\n"


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in items]
    if any(len(pair) != 2 or not all(pair) for pair in pairs):
        raise LatentQAError(f"{flag} takes TASK=DIR, e.g. relations=runs/rel")
    return dict(pairs)


def run_all(config: EvalAllConfig, log: Log) -> dict[str, Any]:
    """Run ``latentqa eval all``: check the options before any model loads, then
    :func:`run_suite` into ``config.out``."""
    from latentqa.layers import check_layers
    from latentqa.models import model_shape, resolve_device
    from latentqa.outdir import check_output_folder

    out = Path(config.out)
    # Before any model loads: a bad --layers would otherwise fail after each main evaluation.
    resolve_device(config.device)
    check_output_folder(out, "--out")
    shape = model_shape(config.target)
    check_layers(config.layers, shape[0] if shape else None, "read layer")
    ctx = SuiteContext(
        out=out,
        target=config.target,
        decoder=config.decoder,
        decoders=_pairs(config.task_decoder, "--task-decoder"),
        data=_pairs(config.data, "--data"),
        device=config.device,
        n=config.n,
        seed=config.seed,
        layers=config.layers,
        log=log,
    )
    return run_suite(ctx, config.tasks)


def _all_report(suite: Mapping[str, Any], config: EvalAllConfig, _log: Log) -> str:
    ran, skipped = ", ".join(suite["tasks"]) or "none", ", ".join(suite["skipped"]) or "none"
    return (
        f"wrote {Path(config.out) / 'report.md'} and results.json (ran: {ran}; skipped: {skipped})"
    )


ALL = Evaluation(
    name="all",
    help="run every available evaluation; write report.md and results.json",
    description="Run every evaluation that exists (missing ones are listed as skipped) "
    "and write OUT/report.md with all tables and plots and OUT/results.json.",
    config=EvalAllConfig,
    run=run_all,
    report=_all_report,
    json_help="print results.json as one line last",
    status=lambda suite: 1 if suite["failed"] else 0,
)
"""``latentqa eval all`` itself (not part of the suite): exit status 1 when an evaluation
failed."""
