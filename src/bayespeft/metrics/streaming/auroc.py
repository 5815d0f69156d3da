"""Streaming AUROC of an uncertainty score for detecting positives (out-of-distribution inputs or wrong answers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_roc

from ..checks import FLOAT
from ..ood import auroc
from .ranked_examples import RankedExamples

__all__ = ["UncertaintyAUROC"]


class UncertaintyAUROC(RankedExamples):
    """Exact AUROC (ties count 1/2) of telling positives from negatives by uncertainty, over every example seen.

    ``update(uncertainty [N], positive [N])``: positives are out-of-distribution inputs
    (then it equals :func:`bayespeft.metrics.ood.auroc`) or wrong answers (pass
    ``~correct``; then it equals :func:`bayespeft.metrics.error_auroc`). Every example is
    kept and gathered across processes. The value is ours, in float64: torchmetrics'
    ``BinaryAUROC`` computes the same area in float32 (about 1e-8 off). ``plot`` draws the
    ROC curve, which torchmetrics' ``binary_roc`` gives.
    """

    higher_is_better = True
    flag_name = "positive"

    def update(self, uncertainty: Tensor | Sequence[float], positive: Tensor | Sequence[bool]) -> None:
        """Add a batch of scores (higher = more uncertain) and whether each example is a positive."""
        self.add_examples(uncertainty, positive)

    def compute(self) -> Tensor:
        """The AUROC as a float64 scalar; ValueError unless both positives and negatives were seen."""
        u, positive = self.examples()
        return torch.tensor(auroc(u[~positive], u[positive]), dtype=FLOAT)

    def plot(self, ax: Any = None) -> tuple[Any, Any]:
        """Draw the ROC curve of every example seen on ``ax`` (a new figure if None); returns (fig, ax)."""
        import matplotlib.pyplot as plt

        value = self.compute().item()
        with self.sync_context():
            u, positive = self.examples()
        fpr, tpr, _ = binary_roc(u, positive.long(), thresholds=None)
        fig, ax = plt.subplots() if ax is None else (ax.get_figure(), ax)
        ax.plot([0, 1], [0, 1], ls="--", color="0.35", lw=1.0, label="Chance (0.5)")
        ax.plot(fpr.numpy(), tpr.numpy(), lw=1.4, label=f"AUROC = {value:.3f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("False positive rate")
        ax.set_ylabel("True positive rate")
        ax.legend(loc="lower right", frameon=False)
        ax.set_title(f"ROC curve (n = {u.numel()}, {int(positive.sum())} positives)")
        return fig, ax
