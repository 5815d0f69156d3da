"""Calibration and uncertainty metrics for classification and multiple-choice answers.

Every metric here scores *predictive probabilities*: ``probs`` of shape ``[N, C]`` whose
rows sum to one (the posterior predictive of :func:`bayespeft.predictive.posterior_predictive`),
integer ``labels`` of shape ``[N]``, and, for the epistemic part, the per-sample
probabilities ``sample_probs`` of shape ``[N, S, C]``. Questions with fewer choices than
``C`` are right-padded with probability exactly 0; a zero never changes an entropy
(``0 log 0 = 0``), the Brier score of an absent wrong choice, or the argmax.

All arithmetic is in float64 on the inputs' device. :class:`UncertaintyMetrics`
accumulates batches on the CPU and reports everything at once, and draws a reliability
diagram of what it has seen.

Binning (ECE and reliability diagram). ``n_bins`` equal-width bins on ``[0, 1]``; an
example goes in bin ``i`` when ``i/n <= confidence < (i+1)/n``, found with
``torch.bucketize(..., right=True) - 1`` on ``linspace(0, 1, n + 1)`` exactly as
torchmetrics' ``multiclass_calibration_error`` does. A confidence of exactly 1.0 goes in
the last bin, which is therefore closed, ``[(n-1)/n, 1]``. This is the one place where
we differ from torchmetrics 1.x, which gives 1.0 an extra bin of its own (so its ECE
differs from ours only when some confidence is exactly 1.0, which float32 softmax of a
very confident model does produce).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

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

_DTYPE = torch.float64
# Rows of a probability matrix must sum to 1 within this (float32 softmax is ~1e-7 off).
_SUM_TOL = 1e-3


# --------------------------------------------------------------------------- validation


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return n_bins


def _check_probs(probs: Tensor, name: str = "probs", dim: int = 2) -> Tensor:
    if not isinstance(probs, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(probs).__name__}")
    if probs.dim() != dim:
        want = "[N, C]" if dim == 2 else "[N, S, C]"
        raise ValueError(f"{name} must have shape {want}, got {tuple(probs.shape)}")
    if probs.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one class, got shape {tuple(probs.shape)}")
    if probs.shape[0] == 0:
        raise ValueError(f"{name} is empty (no examples), got shape {tuple(probs.shape)}")
    if dim == 3 and probs.shape[1] < 1:
        raise ValueError(f"{name} must have at least one sample, got shape {tuple(probs.shape)}")
    p = probs.detach().to(_DTYPE)
    if not torch.isfinite(p).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (p < 0).any() or (p > 1 + _SUM_TOL).any():
        raise ValueError(f"{name} must be probabilities in [0, 1] (pass softmax outputs, not logits)")
    sums = p.sum(dim=-1)
    if (sums - 1).abs().max().item() > _SUM_TOL:
        raise ValueError(
            f"{name} rows must sum to 1 (got sums from {sums.min().item():.4g} to "
            f"{sums.max().item():.4g}); pass probabilities, not logits"
        )
    return p


def _check_labels(labels: Tensor, n: int, n_classes: int) -> Tensor:
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape [N], got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.shape[0] != n:
        raise ValueError(f"labels has {labels.shape[0]} entries but the probabilities have {n} examples")
    if n and (labels.min().item() < 0 or labels.max().item() >= n_classes):
        raise ValueError(
            f"labels must lie in [0, {n_classes - 1}] for {n_classes} classes, got values from "
            f"{labels.min().item()} to {labels.max().item()}"
        )
    return labels.detach().long()


def _inputs(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    p = _check_probs(probs)
    y = _check_labels(labels, p.shape[0], p.shape[1]).to(p.device)
    return p, y


# --------------------------------------------------------------------------- functional


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Fraction of examples whose most probable class (first on ties) is the label."""
    p, y = _inputs(probs, labels)
    return p.argmax(dim=1).eq(y).to(_DTYPE).mean().item()


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of top-label confidence against accuracy.

    Attributes are float64 CPU tensors of length ``n_bins`` (``edges`` has ``n_bins + 1``).
    Empty bins have ``count == 0`` and ``confidence == accuracy == 0``.
    """

    edges: Tensor
    count: Tensor
    confidence: Tensor
    accuracy: Tensor

    @property
    def n_bins(self) -> int:
        return int(self.count.numel())

    @property
    def num_examples(self) -> int:
        return int(self.count.sum().item())

    @property
    def weight(self) -> Tensor:
        """Fraction of all examples in each bin."""
        return self.count / self.count.sum()

    @property
    def gap(self) -> Tensor:
        """``|accuracy - confidence|`` per bin (0 for empty bins)."""
        return (self.accuracy - self.confidence).abs()

    def ece(self) -> float:
        """Expected calibration error: bin gaps weighted by the fraction of examples in each bin."""
        return (self.weight * self.gap).sum().item()


def _bins_from(confidence: Tensor, correct: Tensor, n_bins: int) -> ReliabilityBins:
    confidence = confidence.to(_DTYPE)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=_DTYPE, device=confidence.device)
    # Same rule as torchmetrics: bin i holds edges[i] <= c < edges[i+1]; 1.0 joins the last bin.
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp_(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=_DTYPE, device=confidence.device)
    conf_sum = torch.zeros_like(count)
    acc_sum = torch.zeros_like(count)
    count.scatter_add_(0, index, torch.ones_like(confidence))
    conf_sum.scatter_add_(0, index, confidence)
    acc_sum.scatter_add_(0, index, correct.to(_DTYPE))
    safe = count.clamp(min=1)
    return ReliabilityBins(
        edges=edges.cpu(),
        count=count.cpu(),
        confidence=(conf_sum / safe).cpu(),
        accuracy=(acc_sum / safe).cpu(),
    )


def reliability_bins(probs: Tensor, labels: Tensor, n_bins: int = 15) -> ReliabilityBins:
    """Bin examples by top-label confidence (max probability); see the module doc for the edges."""
    _check_n_bins(n_bins)
    p, y = _inputs(probs, labels)
    confidence, prediction = p.max(dim=1)
    return _bins_from(confidence, prediction.eq(y), n_bins)


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Top-label ECE (L1, bins weighted by their example count), as a fraction in [0, 1]."""
    return reliability_bins(probs, labels, n_bins).ece()


def negative_log_likelihood(probs: Tensor, labels: Tensor, eps: float = 0.0) -> float:
    """Mean of ``-log p(label)``.

    ``p(label)`` is first clamped to ``max(eps, smallest positive normal float64)``
    (about 2.2e-308), so a confidently wrong answer whose label probability underflowed to
    0 costs about 708 nats instead of making the mean infinite. Pass a larger ``eps`` to
    cap the cost of one example further.
    """
    if not math.isfinite(eps) or eps < 0 or eps >= 1:
        raise ValueError(f"eps must be in [0, 1), got {eps!r}")
    p, y = _inputs(probs, labels)
    floor = max(float(eps), torch.finfo(_DTYPE).tiny)
    p_y = p.gather(1, y[:, None]).squeeze(1).clamp(min=floor)
    return (-p_y.log()).mean().item()


def brier_score(probs: Tensor, labels: Tensor) -> float:
    """Mean over examples of ``sum_c (p_c - onehot_c)^2`` (0 is perfect, 2 is the worst)."""
    p, y = _inputs(probs, labels)
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(_DTYPE)
    return (p - onehot).pow(2).sum(dim=1).mean().item()


def _entropy(p: Tensor) -> Tensor:
    """Entropy over the last dim in nats, with ``0 log 0 = 0``."""
    return -torch.special.xlogy(p, p).sum(dim=-1)


def predictive_entropy(probs: Tensor) -> Tensor:
    """Per-example entropy ``-sum_c p_c log p_c`` in nats: [N, C] -> [N] float64."""
    return _entropy(_check_probs(probs)).clamp_(min=0.0)


def expected_entropy(sample_probs: Tensor) -> Tensor:
    """Per-example mean over samples of each sample's entropy (aleatoric part): [N, S, C] -> [N]."""
    return _entropy(_check_probs(sample_probs, "sample_probs", dim=3)).clamp_(min=0.0).mean(dim=1)


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
    return _decompose(_check_probs(sample_probs, "sample_probs", dim=3))[2]


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
        self.n_bins = _check_n_bins(n_bins)
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
        p = _check_probs(sample_probs, "sample_probs", dim=3).cpu()
        y = _check_labels(labels, p.shape[0], p.shape[2]).cpu()
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
        return _plot_reliability(bins, scores, os.fspath(path), title)


_ACCURACY_COLOR = "#4C72B0"
_GAP_STYLE = {"facecolor": (0.84, 0.15, 0.16, 0.25), "edgecolor": (0.84, 0.15, 0.16, 0.9), "hatch": "///"}


def _draw_diagonal(ax: Any, lw: float) -> None:
    """The dashed perfect-calibration line of a reliability panel."""
    ax.plot([0, 1], [0, 1], ls="--", color="0.35", lw=lw, zorder=3)


def _draw_reliability_bars(ax: Any, bins: ReliabilityBins, lw: float) -> None:
    """Accuracy bars of the non-empty bins, with hatched bars spanning the gap to their mean confidence."""
    import numpy as np

    edges = bins.edges.numpy()
    acc = bins.accuracy.numpy()
    conf = bins.confidence.numpy()
    left, width = edges[:-1], edges[1:] - edges[:-1]
    filled = bins.count.numpy() > 0
    ax.bar(
        left[filled],
        acc[filled],
        width=width[filled],
        align="edge",
        color=_ACCURACY_COLOR,
        edgecolor="white",
        linewidth=lw,
        zorder=1,
    )
    ax.bar(
        left[filled],
        np.abs(acc[filled] - conf[filled]),
        bottom=np.minimum(acc[filled], conf[filled]),
        width=width[filled],
        align="edge",
        linewidth=lw,
        zorder=2,
        **_GAP_STYLE,
    )


def _reliability_legend_handles(diagonal_lw: float) -> list[Any]:
    """Legend entries for :func:`_draw_reliability_bars` and :func:`_draw_diagonal`."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=_ACCURACY_COLOR, label="Accuracy"),
        Patch(label="Gap to confidence", **_GAP_STYLE),
        plt.Line2D([], [], ls="--", color="0.35", lw=diagonal_lw, label="Perfect calibration"),
    ]


def _plot_reliability(bins: ReliabilityBins, scores: dict[str, float], path: str, title: str | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    edges = bins.edges.numpy()
    count = bins.count.numpy()
    width = edges[1:] - edges[:-1]
    left = edges[:-1]

    with plt.rc_context(
        {
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.labelsize": 9,
            "legend.fontsize": 8,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    ):
        fig, (ax, hist) = plt.subplots(
            2,
            1,
            sharex=True,
            figsize=(4.2, 4.8),
            gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08},
            constrained_layout=False,
        )
        try:
            _draw_diagonal(ax, lw=1.0)
            _draw_reliability_bars(ax, bins, lw=0.6)
            handles = [
                *_reliability_legend_handles(diagonal_lw=1.0),
                Patch(color="none", label=f"ECE = {100 * scores['ece']:.2f}%"),
            ]
            ax.legend(handles=handles, loc="upper left", frameon=False, handlelength=1.6)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_ylabel("Accuracy")
            ax.set_aspect("auto")
            ax.grid(alpha=0.25, lw=0.5)
            ax.set_axisbelow(True)
            ax.set_title(title if title is not None else "Reliability diagram")

            frac = 100 * count / count.sum()
            hist.bar(left, frac, width=width, align="edge", color="0.55", edgecolor="white", linewidth=0.6)
            hist.axvline(scores["acc"], color="#4C72B0", lw=1.2, label=f"Accuracy ({scores['acc']:.2f})")
            mean_conf = float((bins.count * bins.confidence).sum() / bins.count.sum())
            hist.axvline(mean_conf, color="#C44E52", lw=1.2, ls="--", label=f"Avg. confidence ({mean_conf:.2f})")
            hist.set_ylabel("% of examples")
            hist.set_xlabel("Confidence")
            hist.set_ylim(0, max(frac.max() * 1.15, 1.0))
            hist.grid(alpha=0.25, lw=0.5)
            hist.set_axisbelow(True)
            hist.legend(loc="upper left", frameon=False, fontsize=7, handlelength=1.4)
            fig.text(
                0.99,
                0.005,
                f"n = {scores['num_examples']}, S = {scores['num_samples']}, {bins.n_bins} bins",
                ha="right",
                va="bottom",
                fontsize=7,
                color="0.4",
            )
            fig.savefig(path, dpi=150, bbox_inches="tight")
        finally:
            plt.close(fig)
    return path
