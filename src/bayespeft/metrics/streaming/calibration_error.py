"""Streaming top-label expected calibration error that draws its own reliability diagram."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from ..checks import FLOAT, check_n_bins, probs_and_labels
from ..reliability import ReliabilityBins, bin_sums, draw_diagonal, draw_reliability_bars, reliability_legend_handles

__all__ = ["CalibrationError"]


class CalibrationError(Metric):
    """Top-label ECE (L1) over every example seen; equals :func:`bayespeft.metrics.expected_calibration_error`.

    ``update(probs [N, C], labels [N])``. The states are per-bin sums (example count,
    confidence, number correct), reduced by summation across processes, so memory does not
    grow with the data. Binning as in :mod:`bayespeft.metrics.reliability`; our own rather
    than torchmetrics' ``CalibrationError``, which gives a confidence of exactly 1.0 a bin
    of its own, and which keeps every example.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    count: Tensor
    confidence_sum: Tensor
    accuracy_sum: Tensor

    def __init__(self, n_bins: int = 15, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_bins = check_n_bins(n_bins)
        for name in ("count", "confidence_sum", "accuracy_sum"):
            self.add_state(name, default=torch.zeros(n_bins, dtype=FLOAT), dist_reduce_fx="sum")

    def update(self, probs: Tensor, labels: Tensor) -> None:
        """Add a batch of predictive probabilities and their integer labels."""
        p, y = probs_and_labels(probs, labels)
        confidence, prediction = p.max(dim=1)
        count, confidence_sum, accuracy_sum = bin_sums(confidence, prediction.eq(y), self.n_bins)
        self.count += count.to(self.count.device)
        self.confidence_sum += confidence_sum.to(self.count.device)
        self.accuracy_sum += accuracy_sum.to(self.count.device)

    def bins(self) -> ReliabilityBins:
        """Reliability bins of every example seen, summed over processes (a collective call, like ``compute``)."""
        with self.sync_context():
            return ReliabilityBins.from_sums(self.count, self.confidence_sum, self.accuracy_sum)

    def compute(self) -> Tensor:
        """The ECE as a float64 scalar (NaN before any update)."""
        return torch.tensor(
            ReliabilityBins.from_sums(self.count, self.confidence_sum, self.accuracy_sum).ece(), dtype=FLOAT
        )

    def plot(self, ax: Any = None) -> tuple[Any, Any]:
        """Draw the reliability diagram of every example seen on ``ax`` (a new figure if None); returns (fig, ax)."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch

        bins = self.bins()
        fig, ax = plt.subplots() if ax is None else (ax.get_figure(), ax)
        draw_diagonal(ax, lw=1.0)
        draw_reliability_bars(ax, bins, lw=0.6)
        handles = [
            *reliability_legend_handles(diagonal_lw=1.0),
            Patch(color="none", label=f"ECE = {100 * bins.ece():.2f}%"),
        ]
        ax.legend(handles=handles, loc="upper left", frameon=False)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("Confidence")
        ax.set_ylabel("Accuracy")
        ax.set_title(f"Reliability diagram (n = {bins.num_examples}, {bins.n_bins} bins)")
        return fig, ax
