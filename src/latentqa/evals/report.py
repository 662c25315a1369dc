"""Markdown tables and plots for evaluation results."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from latentqa.plots import line_chart

SECONDS = "seconds"
"""A method's wall time, if an evaluation records it: shown to a tenth of a second."""


def _cell(value: object, metric: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}" if metric == SECONDS else f"{value:.3f}"
    return str(value)


def _set_name(result: Mapping) -> str:
    """`` set A: user turn`` style suffix for results that name their held-out set."""
    names = {"user": "set A, the user turn", "replies": "set B, user turn + the target's reply"}
    return f" ({names[result['set']]})" if result.get("set") in names else ""


def markdown_table(result: Mapping, chance: Mapping[str, float] | None = None) -> str:
    """One row per method, one column per metric (``–`` where a method has none; a
    ``seconds`` column, a method's wall time, comes last).

    ``chance`` (metric -> score of a method that knows nothing) adds a last ``chance`` row.
    """
    methods: Mapping[str, Mapping[str, object]] = result["methods"]
    metrics: list[str] = []
    for values in methods.values():
        metrics += [m for m in values if m not in metrics]
    metrics.sort(key=lambda m: m == SECONDS)  # stable: the measures keep their order
    lines = [
        f"**{result['task']}**{_set_name(result)} (n = {result.get('n', '?')})"
        + (f"; the decoder's pick: {result['headline']}" if result.get("headline") else ""),
        "",
        "| method | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for name, values in methods.items():
        cells = " | ".join(_cell(values.get(m), m) for m in metrics)
        lines.append(f"| {name} | {cells} |")
    if chance:
        cells = " | ".join(_cell(chance.get(m), m) for m in metrics)
        lines.append(f"| *chance* | {cells} |")
    return "\n".join(lines)


def plot_per_layer(
    per_layer: Mapping[int, Mapping[str, Mapping[str, float]]],
    metric: str,
    path: Path,
    title: str,
    chance: float | None = None,
) -> None:
    """Line plot of ``metric`` per read layer, one line per method."""
    layers = sorted(per_layer)
    names: list[str] = []
    for methods in per_layer.values():
        names += [n for n in methods if n not in names and metric in methods[n]]
    with line_chart(
        path, xlabel="read layer", ylabel=metric.replace("_", " "), title=title
    ) as axis:
        for name in names:
            ys = [per_layer[layer].get(name, {}).get(metric) for layer in layers]
            axis.plot(layers, ys, "o-", label=name)
        if chance is not None:
            axis.axhline(chance, color="0.6", ls="--", lw=1, label="chance")


def plot_grouped_bars(
    groups: Mapping[str, Mapping[str, float | None]], path: Path, ylabel: str, title: str
) -> None:
    """Bar chart: one cluster per group (e.g. a relation), one bar per method inside it.

    ``groups[group][method]`` is the bar's height; missing or ``None`` values leave a gap.
    """
    names: list[str] = []
    for methods in groups.values():
        names += [n for n in methods if n not in names]
    width = 0.8 / max(len(names), 1)
    with line_chart(path, xlabel="", ylabel=ylabel, title=title) as axis:
        for k, name in enumerate(names):
            xs = [g + (k - (len(names) - 1) / 2) * width for g in range(len(groups))]
            heights = [groups[group].get(name) for group in groups]
            axis.bar(xs, [h if h is not None else 0.0 for h in heights], width, label=name)
        axis.set_xticks(range(len(groups)), [group.replace("_", " ") for group in groups])
