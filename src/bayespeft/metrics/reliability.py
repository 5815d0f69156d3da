"""Reliability bins of top-label confidence against accuracy, and the reliability diagram drawn from them.

Binning: ``n_bins`` equal-width bins on ``[0, 1]``; an example goes in bin ``i`` when
``i/n <= confidence < (i+1)/n``, found with ``torch.bucketize(..., right=True) - 1`` on
``linspace(0, 1, n + 1)`` exactly as torchmetrics' calibration error does. A confidence of
exactly 1.0 goes in the last bin, which is therefore closed, ``[(n-1)/n, 1]``. This is the
one place where we differ from torchmetrics 1.x, which gives 1.0 an extra bin of its own
(so its ECE differs from ours only when some confidence is exactly 1.0, which float32
softmax of a very confident model does produce). The bins are kept as per-bin sums, so
that a streaming metric can add them up over batches and processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .checks import FLOAT

__all__ = [
    "ReliabilityBins",
    "bin_confidences",
    "bin_sums",
    "draw_diagonal",
    "draw_reliability_bars",
    "plot_reliability",
    "reliability_legend_handles",
]


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of top-label confidence against accuracy.

    Attributes are float64 CPU tensors of length ``n_bins`` (``edges`` has ``n_bins + 1``).
    Empty bins have ``count == 0`` and ``confidence == accuracy == 0``.
    """

    edges: Tensor
    count: Tensor
    confidence: Tensor
    accuracy: Tensor

    @classmethod
    def from_sums(cls, count: Tensor, confidence_sum: Tensor, accuracy_sum: Tensor) -> ReliabilityBins:
        """Bins from per-bin example counts and sums of confidence and correctness (see :func:`bin_sums`)."""
        count, confidence_sum, accuracy_sum = (
            t.detach().to(device="cpu", dtype=FLOAT) for t in (count, confidence_sum, accuracy_sum)
        )
        safe = count.clamp(min=1)
        return cls(
            edges=torch.linspace(0.0, 1.0, count.numel() + 1, dtype=FLOAT),
            count=count,
            confidence=confidence_sum / safe,
            accuracy=accuracy_sum / safe,
        )

    @property
    def n_bins(self) -> int:
        return int(self.count.numel())

    @property
    def num_examples(self) -> int:
        return int(self.count.sum().item())

    @property
    def weight(self) -> Tensor:
        """Fraction of all examples in each bin."""
        return self.count / self.count.sum()

    @property
    def gap(self) -> Tensor:
        """``|accuracy - confidence|`` per bin (0 for empty bins)."""
        return (self.accuracy - self.confidence).abs()

    def ece(self) -> float:
        """Expected calibration error: bin gaps weighted by the fraction of examples in each bin."""
        return (self.weight * self.gap).sum().item()


def bin_sums(confidence: Tensor, correct: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin (example count, sum of confidence, number correct), float64 on the inputs' device."""
    confidence = confidence.to(FLOAT)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=FLOAT, device=confidence.device)
    # Same rule as torchmetrics: bin i holds edges[i] <= c < edges[i+1]; 1.0 joins the last bin.
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp_(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=FLOAT, device=confidence.device)
    confidence_sum = torch.zeros_like(count)
    accuracy_sum = torch.zeros_like(count)
    count.scatter_add_(0, index, torch.ones_like(confidence))
    confidence_sum.scatter_add_(0, index, confidence)
    accuracy_sum.scatter_add_(0, index, correct.to(FLOAT))
    return count, confidence_sum, accuracy_sum


def bin_confidences(confidence: Tensor, correct: Tensor, n_bins: int) -> ReliabilityBins:
    """Reliability bins of per-example top-label ``confidence`` [N] and ``correct`` [N] (bool)."""
    return ReliabilityBins.from_sums(*bin_sums(confidence, correct, n_bins))


_ACCURACY_COLOR = "#4C72B0"
_GAP_STYLE = {"facecolor": (0.84, 0.15, 0.16, 0.25), "edgecolor": (0.84, 0.15, 0.16, 0.9), "hatch": "///"}


def draw_diagonal(ax: Any, lw: float) -> None:
    """The dashed perfect-calibration line of a reliability panel."""
    ax.plot([0, 1], [0, 1], ls="--", color="0.35", lw=lw, zorder=3)


def draw_reliability_bars(ax: Any, bins: ReliabilityBins, lw: float) -> None:
    """Accuracy bars of the non-empty bins, with hatched bars spanning the gap to their mean confidence."""
    import numpy as np

    edges = bins.edges.numpy()
    acc = bins.accuracy.numpy()
    conf = bins.confidence.numpy()
    left, width = edges[:-1], edges[1:] - edges[:-1]
    filled = bins.count.numpy() > 0
    ax.bar(
        left[filled],
        acc[filled],
        width=width[filled],
        align="edge",
        color=_ACCURACY_COLOR,
        edgecolor="white",
        linewidth=lw,
        zorder=1,
    )
    ax.bar(
        left[filled],
        np.abs(acc[filled] - conf[filled]),
        bottom=np.minimum(acc[filled], conf[filled]),
        width=width[filled],
        align="edge",
        linewidth=lw,
        zorder=2,
        **_GAP_STYLE,
    )


def reliability_legend_handles(diagonal_lw: float) -> list[Any]:
    """Legend entries for :func:`draw_reliability_bars` and :func:`draw_diagonal`."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=_ACCURACY_COLOR, label="Accuracy"),
        Patch(label="Gap to confidence", **_GAP_STYLE),
        plt.Line2D([], [], ls="--", color="0.35", lw=diagonal_lw, label="Perfect calibration"),
    ]


def plot_reliability(bins: ReliabilityBins, scores: dict[str, float], path: str, title: str | None) -> str:
    """Write the two-panel reliability figure (diagram over a confidence histogram) as a 150-dpi PNG.

    ``scores`` needs ``ece``, ``acc``, ``num_examples`` and ``num_samples`` (from ``UncertaintyMetrics.compute``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    edges = bins.edges.numpy()
    count = bins.count.numpy()
    width = edges[1:] - edges[:-1]
    left = edges[:-1]

    with plt.rc_context(
        {
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.labelsize": 9,
            "legend.fontsize": 8,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    ):
        fig, (ax, hist) = plt.subplots(
            2,
            1,
            sharex=True,
            figsize=(4.2, 4.8),
            gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08},
            constrained_layout=False,
        )
        try:
            draw_diagonal(ax, lw=1.0)
            draw_reliability_bars(ax, bins, lw=0.6)
            handles = [
                *reliability_legend_handles(diagonal_lw=1.0),
                Patch(color="none", label=f"ECE = {100 * scores['ece']:.2f}%"),
            ]
            ax.legend(handles=handles, loc="upper left", frameon=False, handlelength=1.6)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_ylabel("Accuracy")
            ax.set_aspect("auto")
            ax.grid(alpha=0.25, lw=0.5)
            ax.set_axisbelow(True)
            ax.set_title(title if title is not None else "Reliability diagram")

            frac = 100 * count / count.sum()
            hist.bar(left, frac, width=width, align="edge", color="0.55", edgecolor="white", linewidth=0.6)
            hist.axvline(scores["acc"], color="#4C72B0", lw=1.2, label=f"Accuracy ({scores['acc']:.2f})")
            mean_conf = float((bins.count * bins.confidence).sum() / bins.count.sum())
            hist.axvline(mean_conf, color="#C44E52", lw=1.2, ls="--", label=f"Avg. confidence ({mean_conf:.2f})")
            hist.set_ylabel("% of examples")
            hist.set_xlabel("Confidence")
            hist.set_ylim(0, max(frac.max() * 1.15, 1.0))
            hist.grid(alpha=0.25, lw=0.5)
            hist.set_axisbelow(True)
            hist.legend(loc="upper left", frameon=False, fontsize=7, handlelength=1.4)
            fig.text(
                0.99,
                0.005,
                f"n = {scores['num_examples']}, S = {scores['num_samples']}, {bins.n_bins} bins",
                ha="right",
                va="bottom",
                fontsize=7,
                color="0.4",
            )
            fig.savefig(path, dpi=150, bbox_inches="tight")
        finally:
            plt.close(fig)
    return path
