"""The report of ``latentqa eval relations``: per-relation table, summary and chart (the
evaluation is :mod:`latentqa.evals.relations`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from latentqa.evals.report import markdown_table, plot_grouped_bars

BASELINES = ("patchscope", "linear_probe")


def _margin(methods: dict[str, Any]) -> float | None:
    """LIT's exact-match accuracy minus the best baseline's, when all are measured."""
    scores = [methods.get(name, {}).get("accuracy") for name in ("lit", *BASELINES)]
    return None if None in scores else scores[0] - max(scores[1:])


def relations_markdown(result: dict[str, Any]) -> str:
    """Exact-match accuracy per relation with LIT's margin over the best baseline, then
    the methods' summary (exact, fuzzy, seen-answer accuracy), then the filter counts."""
    names = list(result["methods"])
    lines = [
        f"Held-out subjects, exact match; held-out relation `{result['heldout_relation']}` "
        f"(never trained on); decoder: {result['decoder']['trained_on']}.",
        "",
        "| relation | " + " | ".join(names) + " | LIT − best baseline |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for relation, methods in result["per_relation"].items():
        cells = [methods.get(name, {}).get("accuracy") for name in names]
        n = next(iter(methods.values()))["n"] if methods else 0
        held = " (held-out relation)" if relation == result["heldout_relation"] else ""
        margin = _margin(methods)
        row = ["–" if c is None else f"{c:.2f}" for c in cells]
        row.append("–" if margin is None else f"{margin:+.2f}")
        lines.append(f"| {relation}{held} (n={n}) | " + " | ".join(row) + " |")
    lines += [
        "",
        markdown_table(result),
        "",
        "The probe can only name answers some training subject has; `seen_accuracy` scores "
        "every method on those items alone.",
        "",
        "Facts the target knows (few-shot filter): "
        + ", ".join(f"{r} {c['known']}/{c['candidates']}" for r, c in result["filter"].items()),
    ]
    return "\n".join(lines)


def plot_per_relation(result: Mapping[str, Any], out: str | Path) -> str:
    """Write ``relations_per_relation.png`` (accuracy per relation and method) into ``out``;
    returns its file name."""
    name = "relations_per_relation.png"
    groups = {
        relation: {method: values["accuracy"] for method, values in methods.items()}
        for relation, methods in result["per_relation"].items()
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    plot_grouped_bars(groups, Path(out) / name, "exact-match accuracy", "Held-out subjects")
    return name
