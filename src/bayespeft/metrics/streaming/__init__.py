"""Streaming, process-synchronised torchmetrics ``Metric`` versions of the classification and selective metrics.

Each equals its function in :mod:`bayespeft.metrics` on the same examples, whether they come
in one ``update`` or many, on one process or spread over several (``compute`` gathers them).
``CalibrationError``, ``UncertaintyAUROC``, ``AURAC`` and ``AURC`` draw their own figure with ``plot``.
"""

from .auroc import UncertaintyAUROC
from .calibration_error import CalibrationError
from .proper_scores import BrierScore, NegativeLogLikelihood
from .risk_coverage import AURAC, AURC
from .uncertainty import MutualInformation, PredictiveEntropy

__all__ = [
    "AURAC",
    "AURC",
    "BrierScore",
    "CalibrationError",
    "MutualInformation",
    "NegativeLogLikelihood",
    "PredictiveEntropy",
    "UncertaintyAUROC",
]
