"""Streaming negative log-likelihood and Brier score of predictive probabilities (proper scoring rules)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..classification import check_eps, per_example_brier, per_example_nll
from .example_mean import ExampleMean

__all__ = ["BrierScore", "NegativeLogLikelihood"]


class NegativeLogLikelihood(ExampleMean):
    """Mean ``-log p(label)`` over every example seen; equals :func:`bayespeft.metrics.negative_log_likelihood`.

    ``update(probs [N, C], labels [N])``; ``eps`` floors ``p(label)`` as the function does.
    """

    higher_is_better = False

    def __init__(self, eps: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eps = check_eps(eps)

    def update(self, probs: Tensor, labels: Tensor) -> None:  # type: ignore[override]
        """Add a batch of predictive probabilities and their integer labels."""
        self.add_scores(per_example_nll(probs, labels, self.eps))


class BrierScore(ExampleMean):
    """Mean ``sum_c (p_c - onehot_c)^2`` over every example seen; equals :func:`bayespeft.metrics.brier_score`."""

    higher_is_better = False

    def update(self, probs: Tensor, labels: Tensor) -> None:  # type: ignore[override]
        """Add a batch of predictive probabilities [N, C] and their integer labels [N]."""
        self.add_scores(per_example_brier(probs, labels))
