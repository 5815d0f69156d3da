"""Base of the streaming metrics that average a per-example score over every example seen."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchmetrics import MeanMetric

from ..checks import FLOAT

__all__ = ["ExampleMean"]


class ExampleMean(MeanMetric):
    """torchmetrics' ``MeanMetric`` kept in float64, fed one score per example by the subclass's ``update``.

    The states are a running sum and a count, both reduced by summation, so the mean over
    batches and processes equals the mean over all examples at once.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(nan_strategy="error", **kwargs)
        self.set_dtype(FLOAT)

    def add_scores(self, scores: Tensor) -> None:
        """Add per-example scores ``[N]`` to the running mean."""
        super().update(scores.to(device=self.device, dtype=FLOAT))
