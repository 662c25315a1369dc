"""What a steering evaluation writes to ``--out``: its table, its JSON and a PNG.

The PNG shows each method's effect, not only its mean: for ``sentiment`` the
distribution of the replies' VADER compound per method (a box per method); for
``crows-pairs`` the stereotypical share per bias type; for ``audit`` each behaviour's
success rate per method.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from latentqa.evals.report import markdown_table, plot_grouped_bars
from latentqa.plots import line_chart


def plot_distributions(
    values: Mapping[str, list[float]], path: Path, ylabel: str, title: str
) -> None:
    """One box per method (median, quartiles, whiskers) with its mean as a dot."""
    names = list(values)
    with line_chart(path, xlabel="", ylabel=ylabel, title=title) as axis:
        axis.boxplot([values[n] for n in names], showfliers=False)
        means = [sum(values[n]) / len(values[n]) if values[n] else 0.0 for n in names]
        axis.plot(range(1, len(names) + 1), means, "o", color="tab:red", label="mean")
        axis.axhline(0.0, color="0.6", lw=0.8)
        axis.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)


def steering_plot(result: Mapping[str, Any], path: Path) -> bool:
    """Draw ``result``'s PNG (see the module docstring); ``False`` if it has nothing to show."""
    task = result["task"]
    if task == "sentiment" and result.get("per_item"):
        plot_distributions(
            result["per_item"],
            path,
            "VADER compound of each reply",
            f"Sentiment of {result['n']} held-out replies, before and after steering",
        )
        return True
    if task == "crows-pairs" and result.get("by_bias_type"):
        by_method: Mapping[str, Mapping[str, float]] = result["by_bias_type"]
        types = sorted({t for shares in by_method.values() for t in shares})
        groups = {t: {m: by_method[m].get(t) for m in by_method} for t in types}
        groups["all"] = {m: v["stereo_share"] for m, v in result["methods"].items()}
        plot_grouped_bars(
            groups, path, "stereotypical share (lower is better)", "CrowS-Pairs per bias type"
        )
        return True
    if task == "audit" and result.get("methods"):
        methods: Mapping[str, Mapping[str, float]] = result["methods"]
        behaviours = list(next(iter(methods.values())))
        groups = {b: {m: methods[m].get(b) for m in methods} for b in behaviours}
        plot_grouped_bars(groups, path, "share of replies showing it", "Auditing: elicitation")
        return True
    return False


def write_steering_outputs(result: Mapping[str, Any], out: str | Path) -> list[str]:
    """Write ``<task>.md`` (table and checks), ``<task>.json`` and ``<task>.png`` into ``out``.

    Returns:
        The names of the files written.
    """
    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    name = result["task"]
    table = markdown_table(result)
    if result.get("checks") is not None:
        table += f"\n\nchecks: `{json.dumps(result['checks'])}`"
    (folder / f"{name}.md").write_text(table + "\n", encoding="utf-8")
    (folder / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    written = [f"{name}.md", f"{name}.json"]
    if steering_plot(result, folder / f"{name}.png"):
        written.append(f"{name}.png")
    return written


def command_report(result: Mapping[str, Any], out: str | Path | None) -> str:
    """What ``latentqa eval <steering task>`` prints: the table, the checks and, with
    ``out``, the files written there (:func:`write_steering_outputs`)."""
    text = markdown_table(result)
    checks = result.get("checks")
    if checks is not None:
        text += f"\n\nchecks: {json.dumps(checks)}"
    if out:
        written = write_steering_outputs(result, out)
        text += f"\n\nwrote {', '.join(written)} and the LIT adapters to {out}"
    return text
