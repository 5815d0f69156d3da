"""Streaming selective prediction: area under the accuracy-rejection (AURAC) and risk-coverage (AURC) curves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..checks import FLOAT, check_correct, check_scores
from ..selective import accuracy_rejection_curve

__all__ = ["AURAC", "AURC"]


class AURAC(Metric):
    """Area under the accuracy-rejection curve of every example seen; equals :func:`bayespeft.metrics.aurac`.

    ``update(uncertainty [N], correct [N])``. The curve needs the ranking of all examples,
    so every example is kept and gathered across processes. torchmetrics has no such metric.
    ``plot`` draws the curve with the oracle (wrong answers rejected first) and random
    rejection for reference.
    """

    is_differentiable = False
    higher_is_better: bool | None = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0
    x_label = "Fraction of most uncertain examples rejected"
    y_label = "Accuracy of retained examples"

    uncertainty: list[Tensor]
    correct: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("uncertainty", default=[], dist_reduce_fx="cat")
        self.add_state("correct", default=[], dist_reduce_fx="cat")

    def update(self, uncertainty: Tensor | Sequence[float], correct: Tensor | Sequence[bool]) -> None:
        """Add a batch of scores (higher = more uncertain) and whether each answer is right."""
        u = check_scores(uncertainty, "uncertainty")
        self.uncertainty.append(u.to(self.device))
        self.correct.append(check_correct(correct, u.numel()).to(self.device, FLOAT))

    def curve_of(self, uncertainty: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
        """The step curve ``(x, y)`` [N] this metric integrates: rejection rate against retained accuracy."""
        return accuracy_rejection_curve(uncertainty, correct)

    def _curves(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The curve of every example seen, with the oracle's and random rejection's (a constant score), on the CPU."""
        u, correct = dim_zero_cat(self.uncertainty).cpu(), dim_zero_cat(self.correct).cpu().bool()
        return {
            "Uncertainty": self.curve_of(u, correct),
            "Oracle": self.curve_of((~correct).to(FLOAT), correct),
            "Random": self.curve_of(torch.zeros_like(u), correct),
        }

    def compute(self) -> Tensor:
        """The area (the mean of the step curve) as a float64 scalar."""
        return self._curves()["Uncertainty"][1].mean()

    def plot(self, ax: Any = None) -> tuple[Any, Any]:
        """Draw the curves of every example seen on ``ax`` (a new figure if None); returns (fig, ax)."""
        import matplotlib.pyplot as plt
        import numpy as np

        with self.sync_context():
            curves = self._curves()
        fig, ax = plt.subplots() if ax is None else (ax.get_figure(), ax)
        styles = {
            "Uncertainty": {"lw": 1.4},
            "Oracle": {"color": "0.35", "ls": "--"},
            "Random": {"color": "0.55", "ls": ":"},
        }
        for name, (x, y) in curves.items():
            # Each value holds until the next x; the last until 1 (rejection rate) or 0 (coverage).
            steps_x = np.append(x.numpy(), 1.0 - x[0].item())
            label = f"{name} ({y.mean().item():.3f})"
            ax.plot(steps_x, np.append(y.numpy(), y[-1].item()), drawstyle="steps-post", label=label, **styles[name])
        ax.set_xlim(0, 1)
        ax.set_xlabel(self.x_label)
        ax.set_ylabel(self.y_label)
        ax.legend(loc="best", frameon=False, title=type(self).__name__)
        ax.set_title(f"{type(self).__name__} (n = {curves['Uncertainty'][0].numel()})")
        return fig, ax


class AURC(AURAC):
    """Area under the risk-coverage curve (risk = error rate of the retained examples), lower is better.

    The same step curve as :class:`AURAC` read the other way round (coverage ``1 - rate``,
    risk ``1 - accuracy``), so AURC = 1 - AURAC exactly.
    """

    higher_is_better = False
    x_label = "Coverage (fraction of most certain examples retained)"
    y_label = "Risk (error rate of retained examples)"

    def curve_of(self, uncertainty: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
        """Coverage against the risk of the retained examples."""
        rates, accuracy = accuracy_rejection_curve(uncertainty, correct)
        return 1.0 - rates, 1.0 - accuracy
