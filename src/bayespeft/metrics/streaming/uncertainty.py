"""Streaming mean predictive entropy (total uncertainty) and mutual information (its epistemic part)."""

from __future__ import annotations

from torch import Tensor

from ..classification import mutual_information, predictive_entropy
from .example_mean import ExampleMean

__all__ = ["MutualInformation", "PredictiveEntropy"]


class PredictiveEntropy(ExampleMean):
    """Mean over examples of :func:`bayespeft.metrics.predictive_entropy` (nats); ``update(probs [N, C])``."""

    higher_is_better = None

    def update(self, probs: Tensor) -> None:  # type: ignore[override]
        """Add a batch of predictive probabilities (for a sampled posterior, the mean over samples)."""
        self.add_scores(predictive_entropy(probs))


class MutualInformation(ExampleMean):
    """Mean over examples of :func:`bayespeft.metrics.mutual_information` (BALD, nats).

    ``update(sample_probs [N, S, C])`` with the per-sample probabilities of each example.
    """

    higher_is_better = None

    def update(self, sample_probs: Tensor) -> None:  # type: ignore[override]
        """Add a batch of per-sample probabilities."""
        self.add_scores(mutual_information(sample_probs))
