"""Evaluation metrics."""

from bayespeft.metrics.classification import (
    ReliabilityBins,
    UncertaintyMetrics,
    accuracy,
    brier_score,
    expected_calibration_error,
    expected_entropy,
    mutual_information,
    negative_log_likelihood,
    predictive_entropy,
    reliability_bins,
)

__all__ = [
    "ReliabilityBins",
    "UncertaintyMetrics",
    "accuracy",
    "brier_score",
    "expected_calibration_error",
    "expected_entropy",
    "mutual_information",
    "negative_log_likelihood",
    "predictive_entropy",
    "reliability_bins",
]
