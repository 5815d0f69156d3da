"""Streaming selective prediction: area under the accuracy-rejection (AURAC) and risk-coverage (AURC) curves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..checks import FLOAT
from ..selective import accuracy_rejection_curve
from .ranked_examples import RankedExamples

__all__ = ["AURAC", "AURC"]


class AURAC(RankedExamples):
    """Area under the accuracy-rejection curve of every example seen; equals :func:`bayespeft.metrics.aurac`.

    ``update(uncertainty [N], correct [N])``. The curve needs the ranking of all examples,
    so every example is kept and gathered across processes. torchmetrics has no such metric.
    ``plot`` draws the curve with the oracle (wrong answers rejected first) and random
    rejection for reference.
    """

    higher_is_better: bool | None = True
    flag_name = "correct"
    x_label = "Fraction of most uncertain examples rejected"
    y_label = "Accuracy of retained examples"

    def update(self, uncertainty: Tensor | Sequence[float], correct: Tensor | Sequence[bool]) -> None:
        """Add a batch of scores (higher = more uncertain) and whether each answer is right."""
        self.add_examples(uncertainty, correct)

    def curve_of(self, uncertainty: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
        """The step curve ``(x, y)`` [N] this metric integrates: rejection rate against retained accuracy."""
        return accuracy_rejection_curve(uncertainty, correct)

    def _curves(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The curve of every example seen, with the oracle's and random rejection's (a constant score), on the CPU."""
        u, correct = self.examples()
        return {
            "Uncertainty": self.curve_of(u, correct),
            "Oracle": self.curve_of((~correct).to(FLOAT), correct),
            "Random": self.curve_of(torch.zeros_like(u), correct),
        }

    def compute(self) -> Tensor:
        """The area (the mean of the step curve) as a float64 scalar."""
        return self.curve_of(*self.examples())[1].mean()

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
