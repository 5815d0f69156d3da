"""Calibration and uncertainty metrics for classification and multiple-choice answers.

Every metric here scores *predictive probabilities*: ``probs`` of shape ``[N, C]`` whose
rows sum to one (the posterior predictive of :func:`bayespeft.predictive.posterior_predictive`),
integer ``labels`` of shape ``[N]``, and, for the epistemic part, the per-sample
probabilities ``sample_probs`` of shape ``[N, S, C]``. Questions with fewer choices than
``C`` are right-padded with probability exactly 0; a zero never changes an entropy
(``0 log 0 = 0``), the Brier score of an absent wrong choice, or the argmax.

All arithmetic is in float64 on the inputs' device, except accuracy, which is torchmetrics'
``multiclass_accuracy`` (a count ratio, rounded to float32). :class:`UncertaintyMetrics`
accumulates batches on the CPU and reports everything at once, and draws a reliability
diagram of what it has seen; the streaming, process-synchronised torchmetrics versions of
each score are in :mod:`bayespeft.metrics.streaming`. ECE binning is described in
:mod:`bayespeft.metrics.reliability`.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_accuracy

from .checks import FLOAT, check_labels, check_n_bins, check_probs, probs_and_labels
from .reliability import ReliabilityBins, bin_confidences, plot_reliability

__all__ = [
    "ReliabilityBins",
    "UncertaintyMetrics",
    "accuracy",
    "brier_score",
    "check_eps",
    "expected_calibration_error",
    "expected_entropy",
    "mutual_information",
    "negative_log_likelihood",
    "per_example_brier",
    "per_example_nll",
    "predictive_entropy",
    "reliability_bins",
]


# --------------------------------------------------------------------------- functional


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Fraction of examples whose most probable class (first on ties) is the label (torchmetrics)."""
    p, y = probs_and_labels(probs, labels)
    return multiclass_accuracy(p, y, num_classes=p.shape[1], average="micro", validate_args=False).item()


def reliability_bins(probs: Tensor, labels: Tensor, n_bins: int = 15) -> ReliabilityBins:
    """Bin examples by top-label confidence (max probability); see :mod:`bayespeft.metrics.reliability`."""
    check_n_bins(n_bins)
    p, y = probs_and_labels(probs, labels)
    confidence, prediction = p.max(dim=1)
    return bin_confidences(confidence, prediction.eq(y), n_bins)


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Top-label ECE (L1, bins weighted by their example count), as a fraction in [0, 1]."""
    return reliability_bins(probs, labels, n_bins).ece()


def check_eps(eps: float) -> float:
    """``eps`` if it is a valid NLL probability floor, in ``[0, 1)``."""
    if not math.isfinite(eps) or eps < 0 or eps >= 1:
        raise ValueError(f"eps must be in [0, 1), got {eps!r}")
    return float(eps)


def per_example_nll(probs: Tensor, labels: Tensor, eps: float = 0.0) -> Tensor:
    """``-log p(label)`` per example, [N] float64, with the floor of :func:`negative_log_likelihood`."""
    check_eps(eps)
    p, y = probs_and_labels(probs, labels)
    floor = max(eps, torch.finfo(FLOAT).tiny)
    return -p.gather(1, y[:, None]).squeeze(1).clamp(min=floor).log()


def negative_log_likelihood(probs: Tensor, labels: Tensor, eps: float = 0.0) -> float:
    """Mean of ``-log p(label)``.

    ``p(label)`` is first clamped to ``max(eps, smallest positive normal float64)``
    (about 2.2e-308), so a confidently wrong answer whose label probability underflowed to
    0 costs about 708 nats instead of making the mean infinite. Pass a larger ``eps`` to
    cap the cost of one example further.
    """
    return per_example_nll(probs, labels, eps).mean().item()


def per_example_brier(probs: Tensor, labels: Tensor) -> Tensor:
    """``sum_c (p_c - onehot_c)^2`` per example, [N] float64."""
    p, y = probs_and_labels(probs, labels)
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(FLOAT)
    return (p - onehot).pow(2).sum(dim=1)


def brier_score(probs: Tensor, labels: Tensor) -> float:
    """Mean over examples of ``sum_c (p_c - onehot_c)^2`` (0 is perfect, 2 is the worst)."""
    return per_example_brier(probs, labels).mean().item()


def _entropy(p: Tensor) -> Tensor:
    """Entropy over the last dim in nats, with ``0 log 0 = 0``."""
    return -torch.special.xlogy(p, p).sum(dim=-1)


def predictive_entropy(probs: Tensor) -> Tensor:
    """Per-example entropy ``-sum_c p_c log p_c`` in nats: [N, C] -> [N] float64."""
    return _entropy(check_probs(probs)).clamp_(min=0.0)


def expected_entropy(sample_probs: Tensor) -> Tensor:
    """Per-example mean over samples of each sample's entropy (aleatoric part): [N, S, C] -> [N]."""
    return _entropy(check_probs(sample_probs, "sample_probs", dim=3)).clamp_(min=0.0).mean(dim=1)


def _decompose(sample_probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(mean probs [N, C], predictive entropy [N], mutual information [N]) of validated float64 input."""
    mean = sample_probs.mean(dim=1)
    total = _entropy(mean).clamp(min=0.0)
    aleatoric = _entropy(sample_probs).clamp(min=0.0).mean(dim=1)
    return mean, total, (total - aleatoric).clamp(min=0.0)


def mutual_information(sample_probs: Tensor) -> Tensor:
    """Per-example epistemic uncertainty (BALD): entropy of the mean minus the mean entropy.

    ``[N, S, C] -> [N]`` in nats, clamped at 0 against rounding; exactly 0 when ``S == 1``
    or all samples agree, and never above the predictive entropy.
    """
    return _decompose(check_probs(sample_probs, "sample_probs", dim=3))[2]


# --------------------------------------------------------------------------- streaming


class UncertaintyMetrics:
    """Streaming accuracy, calibration and uncertainty of a sampled posterior predictive.

    Feed it per-sample probabilities batch by batch (from one process, or the tensors
    gathered from all of them); it keeps only the mean probabilities, the per-example
    entropy and mutual information, and the labels, on the CPU in float64. Batches may
    have different numbers of choices: the stored probabilities are right-padded with zeros
    to the widest batch seen.

    Example::

        metrics = UncertaintyMetrics(n_bins=15)
        for batch in loader:
            metrics.update(sample_probabilities(model_sample_logits(batch)), batch.labels)
        scores = metrics.compute()
        metrics.plot_reliability("reliability.png")
    """

    def __init__(self, n_bins: int = 15) -> None:
        self.n_bins = check_n_bins(n_bins)
        self.reset()

    def reset(self) -> None:
        """Forget every example seen."""
        self._probs: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._entropy: list[Tensor] = []
        self._mi: list[Tensor] = []
        self._num_samples: int | None = None
        self._num_classes = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_bins={self.n_bins}, num_examples={self._count}, num_samples={self._num_samples})"
        )

    def update(self, sample_probs: Tensor, labels: Tensor) -> None:
        """Add a batch: ``sample_probs`` [B, S, C] per-sample probabilities, ``labels`` [B] ints."""
        p = check_probs(sample_probs, "sample_probs", dim=3).cpu()
        y = check_labels(labels, p.shape[0], p.shape[2]).cpu()
        if self._num_samples is not None and p.shape[1] != self._num_samples:
            raise ValueError(
                f"sample_probs has {p.shape[1]} samples per example but earlier batches had "
                f"{self._num_samples}; use the same number of posterior samples throughout"
            )
        mean, entropy, mi = _decompose(p)
        self._probs.append(mean)
        self._labels.append(y)
        self._entropy.append(entropy)
        self._mi.append(mi)
        self._num_samples = p.shape[1]
        self._num_classes = max(self._num_classes, p.shape[2])
        self._count += p.shape[0]

    def merge(self, other: UncertaintyMetrics) -> None:
        """Add every example another instance has seen (e.g. from another process)."""
        if not isinstance(other, UncertaintyMetrics):
            raise ValueError(f"can only merge another UncertaintyMetrics, got {type(other).__name__}")
        if other._count == 0:
            return
        if self._num_samples is not None and other._num_samples != self._num_samples:
            raise ValueError(
                f"cannot merge metrics with {other._num_samples} samples per example into one with {self._num_samples}"
            )
        self._probs += other._probs
        self._labels += other._labels
        self._entropy += other._entropy
        self._mi += other._mi
        self._num_samples = other._num_samples
        self._num_classes = max(self._num_classes, other._num_classes)
        self._count += other._count

    def _require_data(self) -> None:
        if self._count == 0:
            raise ValueError(f"{type(self).__name__} has no data: call update() before compute()")

    def _state(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(probs [N, Cmax], labels [N], entropy [N], mutual information [N])."""
        self._require_data()
        width = self._num_classes
        probs = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in self._probs])
        return probs, torch.cat(self._labels), torch.cat(self._entropy), torch.cat(self._mi)

    def bins(self) -> ReliabilityBins:
        """Reliability bins of everything seen so far."""
        probs, labels, _, _ = self._state()
        return reliability_bins(probs, labels, self.n_bins)

    def compute(self) -> dict[str, float]:
        """Scores over all examples seen; raises ValueError if there are none."""
        probs, labels, entropy, mi = self._state()
        return {
            "acc": accuracy(probs, labels),
            "ece": reliability_bins(probs, labels, self.n_bins).ece(),
            "nll": negative_log_likelihood(probs, labels),
            "brier": brier_score(probs, labels),
            "entropy": entropy.mean().item(),
            "mutual_information": mi.mean().item(),
            "num_examples": self._count,
            "num_samples": self._num_samples,
            "n_bins": self.n_bins,
        }

    def per_example(self) -> list[dict]:
        """One dict per example in the order seen.

        ``probs`` has the width of the example's own batch (padding added for wider
        batches is not included).
        """
        self._require_data()
        rows = []
        for probs, labels, entropy, mi in zip(self._probs, self._labels, self._entropy, self._mi, strict=True):
            confidence, prediction = probs.max(dim=1)
            for i in range(probs.shape[0]):
                rows.append(
                    {
                        "label": int(labels[i]),
                        "prediction": int(prediction[i]),
                        "confidence": float(confidence[i]),
                        "probs": probs[i].tolist(),
                        "entropy": float(entropy[i]),
                        "mutual_information": float(mi[i]),
                        "correct": bool(prediction[i] == labels[i]),
                    }
                )
        return rows

    def plot_reliability(self, path: str | os.PathLike, title: str | None = None) -> str:
        """Write a reliability diagram (PNG, 150 dpi) of everything seen and return its path."""
        bins = self.bins()
        scores = self.compute()
        return plot_reliability(bins, scores, os.fspath(path), title)
