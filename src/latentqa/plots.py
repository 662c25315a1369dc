"""The one plot setup: a headless matplotlib backend and the house line-chart style."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed: servers, CI, ssh)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def line_chart(path: Path, *, xlabel: str, ylabel: str, title: str) -> Iterator[Any]:
    """Draw on the yielded axis; on exit the chart is labelled, styled and saved to ``path``.

    Args:
        path: The PNG to write.
        xlabel: The x axis label.
        ylabel: The y axis label.
        title: The chart title.

    Yields:
        The matplotlib axis to plot on.
    """
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    try:
        yield axis
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)
