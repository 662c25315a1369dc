"""The loss-curve PNG written at the end of training."""

from __future__ import annotations

import json
from pathlib import Path

from latentqa.plots import line_chart


def plot_losses(metrics_path: Path, png_path: Path) -> None:
    """Plot training loss and held-out losses (real / zeroed / shuffled) against steps."""
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    with line_chart(
        png_path,
        xlabel="optimizer step",
        ylabel="answer loss (nats/token)",
        title="Latent Interpretation Tuning",
    ) as axis:
        _draw(axis, train, evals)


def _draw(axis, train: list[tuple[int, float]], evals: list[dict]) -> None:
    if train:
        steps, losses = zip(*train, strict=True)
        axis.plot(steps, losses, color="0.75", lw=0.8, label="train (per step)")
        window = max(1, len(losses) // 30)
        smooth = [
            sum(losses[max(0, i - window) : i + 1]) / len(losses[max(0, i - window) : i + 1])
            for i in range(len(losses))
        ]
        axis.plot(steps, smooth, color="0.3", lw=1.2, label="train (smoothed)")
    styles = {"loss_real": "tab:blue", "loss_zeroed": "tab:red", "loss_shuffled": "tab:orange"}
    for key, color in styles.items():
        points = [(r["step"], r[key]) for r in evals if key in r]
        if points:
            xs, ys = zip(*points, strict=True)
            name = key.removeprefix("loss_")
            axis.plot(xs, ys, "o-", color=color, label=f"held-out, {name} activations")
