"""Training-curve figure from a run's per-step log."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

CURVES = (
    ("nll", "NLL (batch)"),
    ("eval_acc", "held-out ACC and ECE"),
    ("weighted_kl", "pi * KL"),
    ("kl", "KL"),
    ("lr", "learning rate"),
)


def plot_training_log(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """One panel per logged quantity against the step; returns None when there is nothing to plot.

    Held-out evaluations during training (``eval_*``) join the NLL panel, so that a held-out NLL rising
    while the training NLL falls (over-fitting) shows in one picture, and get a panel of ACC and ECE.
    """
    panels = [(key, label) for key, label in CURVES if any(key in r for r in records)]
    if not records or not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    steps = [r["step"] for r in records]
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        if key == "eval_acc":
            _plot_heldout(ax, records, ("eval_acc", "eval_ece"), ("ACC", "ECE"))
            ax.set_xlabel("step")
            ax.set_title(label, fontsize=10)
            continue
        values = [r.get(key, float("nan")) for r in records]
        ax.plot(steps, values, lw=0.8, color="tab:blue", alpha=0.5 if key == "nll" else 1.0)
        if key == "nll" and len(values) >= 10:  # running mean for the noisy batch NLL
            window = max(5, len(values) // 20)
            smooth = [
                sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
                for i in range(len(values))
            ]
            ax.plot(steps, smooth, lw=1.5, color="tab:red", label=f"train, mean of {window}")
        if key == "nll":
            _plot_heldout(ax, records, ("eval_nll",), ("held-out",))
            if ax.get_legend_handles_labels()[0]:
                ax.legend(frameon=False, fontsize=8)
        if key == "kl":
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def _plot_heldout(ax: Any, records: Sequence[dict[str, Any]], keys: Sequence[str], labels: Sequence[str]) -> None:
    """The held-out evaluations of ``keys`` as lines with markers (only the steps that have them)."""
    colors = ("black", "tab:orange")
    for key, label, color in zip(keys, labels, colors, strict=False):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", ms=3, lw=1.2, color=color, label=label)
    if len(keys) > 1:
        ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
