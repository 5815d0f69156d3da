"""How well an uncertainty score predicts wrong answers: AUROC, accuracy-rejection curves, bootstrap CIs.

Inputs are one uncertainty score per example (higher = more uncertain, the convention of
:mod:`bayespeft.metrics.ood` and :mod:`bayespeft.metrics.semantic`) and whether the
example's answer is correct.

AUROC of error
    :func:`bayespeft.metrics.ood.auroc` with the wrong answers as positives: the probability
    that a random wrong answer is more uncertain than a random correct one (ties count 1/2).
    1 is perfect, 0.5 chance. Undefined (ValueError) when every answer is right or every one
    wrong.

Accuracy-rejection curve (ARC)
    Reject the ``k`` most uncertain examples, ``k = 0 .. N-1``, and measure the accuracy of
    the ``N - k`` retained: point ``(k / N, accuracy_k)``. Ties in the score are broken at
    random *in expectation*: inside a group of tied scores each example counts as the group's
    mean correctness, so a constant score gives a flat curve at the overall accuracy rather
    than one that depends on the input order.

AURAC
    Area under the ARC taken as a step function (``accuracy_k`` on ``[k/N, (k+1)/N)``), i.e.
    the mean of the ``N`` accuracies. A constant (uninformative) score gets the overall
    accuracy; an oracle that rejects all wrong answers first gets the maximum.

Bootstrap CIs
    Percentile intervals over ``n_boot`` resamples of the examples with replacement, from a
    seeded ``torch.Generator`` (same seed, same interval). :func:`selective_prediction`
    uses the same resamples for every score, so their intervals are paired. Resamples on
    which a statistic is undefined (an AUROC when the resample is all right or all wrong)
    are dropped; ``BootstrapCI.n_boot`` says how many were used.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .checks import FLOAT, check_correct, check_scores
from .ood import auroc

__all__ = [
    "BootstrapCI",
    "accuracy_rejection_curve",
    "aurac",
    "bootstrap_ci",
    "error_auroc",
    "plot_accuracy_rejection",
    "selective_prediction",
]


def _uncertainty(values: Tensor | Sequence[float]) -> Tensor:
    """Per-example uncertainty as a finite, non-empty 1-D float64 tensor (the checks AUROC's scores get)."""
    return check_scores(values, "uncertainty")


def _inputs(uncertainty: Tensor | Sequence[float], correct: Tensor | Sequence[bool]) -> tuple[Tensor, Tensor]:
    u = _uncertainty(uncertainty)
    return u, check_correct(correct, u.numel())


def _error_auroc(u: Tensor, c: Tensor) -> float:
    """AUROC of validated inputs, NaN when only one outcome occurs."""
    if c.all() or not c.any():
        return math.nan
    return auroc(u[c], u[~c])


def _arc(u: Tensor, c: Tensor) -> Tensor:
    """Accuracies of validated inputs after rejecting 0, 1, ..., N-1 examples (tie groups averaged)."""
    order = torch.argsort(u, stable=True)  # most certain first
    sorted_u, sorted_c = u[order], c[order].to(FLOAT)
    _, group, group_size = torch.unique_consecutive(sorted_u, return_inverse=True, return_counts=True)
    group_correct = torch.zeros(group_size.numel(), dtype=FLOAT).scatter_add_(0, group, sorted_c)
    expected = (group_correct / group_size.to(FLOAT))[group]
    retained = torch.arange(1, u.numel() + 1, dtype=FLOAT)
    accuracy_retained = expected.cumsum(0) / retained  # accuracy of the m most certain, m = 1..N
    return accuracy_retained.flip(0)  # index k: k rejected, N - k retained


def error_auroc(uncertainty: Tensor | Sequence[float], correct: Tensor | Sequence[bool]) -> float:
    """AUROC of the uncertainty for telling wrong answers (positives) from right ones."""
    u, c = _inputs(uncertainty, correct)
    value = _error_auroc(u, c)
    if math.isnan(value):
        raise ValueError("error AUROC needs both correct and wrong answers")
    return value


def accuracy_rejection_curve(
    uncertainty: Tensor | Sequence[float], correct: Tensor | Sequence[bool]
) -> tuple[Tensor, Tensor]:
    """``(rejection_rate, accuracy)`` float64 tensors ``[N]``: rates ``k / N`` and the retained accuracy."""
    u, c = _inputs(uncertainty, correct)
    return torch.arange(u.numel(), dtype=FLOAT) / u.numel(), _arc(u, c)


def aurac(uncertainty: Tensor | Sequence[float], correct: Tensor | Sequence[bool]) -> float:
    """Area under the accuracy-rejection curve (the mean retained accuracy over rejection rates)."""
    u, c = _inputs(uncertainty, correct)
    return _arc(u, c).mean().item()


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with a percentile bootstrap interval ``[low, high]`` at level ``confidence``."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_boot: int  # resamples on which the statistic was defined

    def as_dict(self) -> dict[str, float | int]:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
            "n_boot": self.n_boot,
        }


def _check_bootstrap(n_boot: int, confidence: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _resamples(n: int, n_boot: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(n, (n_boot, n), generator=generator)


def _interval(estimate: float, replicates: list[float], confidence: float) -> BootstrapCI:
    values = torch.tensor([v for v in replicates if not math.isnan(v)], dtype=FLOAT)
    if values.numel() == 0:
        return BootstrapCI(estimate, math.nan, math.nan, confidence, 0)
    alpha = (1.0 - confidence) / 2
    low, high = torch.quantile(values, torch.tensor([alpha, 1.0 - alpha], dtype=FLOAT)).tolist()
    return BootstrapCI(estimate, low, high, confidence, values.numel())


def bootstrap_ci(
    statistic: Callable[[Tensor, Tensor], float],
    uncertainty: Tensor | Sequence[float],
    correct: Tensor | Sequence[bool],
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap interval of ``statistic(uncertainty, correct)``.

    ``statistic`` receives float64 uncertainties and boolean correctness of one resample and
    returns a float; NaN marks a resample on which it is undefined (dropped). The estimate is
    the statistic on the full data.
    """
    _check_bootstrap(n_boot, confidence)
    u, c = _inputs(uncertainty, correct)
    replicates = [statistic(u[idx], c[idx]) for idx in _resamples(u.numel(), n_boot, seed)]
    return _interval(statistic(u, c), replicates, confidence)


def selective_prediction(
    scores: Mapping[str, Tensor | Sequence[float]],
    correct: Tensor | Sequence[bool],
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, BootstrapCI]]:
    """``{score name: {"auroc": CI, "aurac": CI}}`` for each uncertainty score, on shared resamples.

    The AUROC estimate is NaN (with no interval) when all answers are right or all wrong.
    """
    _check_bootstrap(n_boot, confidence)
    if not scores:
        raise ValueError("scores is empty")
    validated = {name: _uncertainty(values) for name, values in scores.items()}
    n = next(iter(validated.values())).numel()
    c = check_correct(correct, n)
    resamples = _resamples(n, n_boot, seed)
    out: dict[str, dict[str, BootstrapCI]] = {}
    for name, u in validated.items():
        if u.numel() != n:
            raise ValueError(f"score {name!r} has {u.numel()} values but {n} examples are expected")
        out[name] = {
            "auroc": _interval(_error_auroc(u, c), [_error_auroc(u[i], c[i]) for i in resamples], confidence),
            "aurac": _interval(
                _arc(u, c).mean().item(), [_arc(u[i], c[i]).mean().item() for i in resamples], confidence
            ),
        }
    return out


# Colour-blind-safe palette (Okabe & Ito), for up to eight uncertainty scores.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def _step(rates: Tensor, accuracy: Tensor) -> tuple[Any, Any]:
    """The ARC as a closed step function on [0, 1] (each accuracy holds until the next rate)."""
    import numpy as np

    return np.append(rates.numpy(), 1.0), np.append(accuracy.numpy(), accuracy[-1].item())


def plot_accuracy_rejection(
    scores: Mapping[str, Tensor | Sequence[float]],
    correct: Tensor | Sequence[bool],
    path: str | os.PathLike,
    title: str | None = None,
    n_boot: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> str:
    """Write accuracy-rejection curves (PNG or PDF by extension, 200 dpi) and return the path.

    One curve per score, labelled with its AURAC, with the oracle (wrong answers rejected
    first) and random rejection (flat at the overall accuracy) for reference. With
    ``n_boot > 0`` each curve gets a shaded pointwise percentile bootstrap band (the axis
    range follows the curves, so a band may run off the bottom where few examples remain).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not scores:
        raise ValueError("scores is empty")
    if len(scores) > len(PALETTE):
        raise ValueError(f"at most {len(PALETTE)} scores fit in one figure, got {len(scores)}")
    if n_boot:
        _check_bootstrap(n_boot, confidence)
    validated = {name: _uncertainty(values) for name, values in scores.items()}
    n = next(iter(validated.values())).numel()
    c = check_correct(correct, n)
    rates = torch.arange(n, dtype=FLOAT) / n
    base_accuracy = c.to(FLOAT).mean().item()
    oracle = _arc((~c).to(FLOAT), c)
    resamples = _resamples(n, n_boot, seed) if n_boot else None
    path = os.fspath(path)

    with plt.rc_context(
        {
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.labelsize": 9,
            "legend.fontsize": 7.5,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    ):
        fig, ax = plt.subplots(figsize=(4.6, 3.6))
        try:
            lowest = min(base_accuracy, oracle.min().item())
            x, y = _step(rates, oracle)
            ax.plot(x, y, drawstyle="steps-post", color="0.35", ls="--", lw=1.0, label=f"Oracle ({oracle.mean():.3f})")
            ax.axhline(base_accuracy, color="0.55", ls=":", lw=1.0, label=f"Random ({base_accuracy:.3f})")
            for colour, (name, u) in zip(PALETTE, validated.items(), strict=False):
                if u.numel() != n:
                    raise ValueError(f"score {name!r} has {u.numel()} values but {n} examples are expected")
                curve = _arc(u, c)
                lowest = min(lowest, curve.min().item())
                if resamples is not None:
                    replicates = torch.stack([_arc(u[i], c[i]) for i in resamples])
                    alpha = (1.0 - confidence) / 2
                    band = torch.quantile(replicates, torch.tensor([alpha, 1.0 - alpha], dtype=FLOAT), dim=0)
                    _, band_low = _step(rates, band[0])
                    _, band_high = _step(rates, band[1])
                    ax.fill_between(x, band_low, band_high, step="post", color=colour, alpha=0.18, lw=0)
                _, y = _step(rates, curve)
                ax.plot(x, y, drawstyle="steps-post", color=colour, lw=1.4, label=f"{name} ({curve.mean():.3f})")
            ax.set_xlim(0, 1)
            ax.set_ylim(max(0.0, lowest - 0.05), 1.01)
            ax.set_xlabel("Fraction of most uncertain examples rejected")
            ax.set_ylabel("Accuracy of retained examples")
            ax.grid(alpha=0.25, lw=0.5)
            ax.set_axisbelow(True)
            ax.legend(loc="best", frameon=False, title="AURAC", title_fontsize=7.5, handlelength=1.8)
            ax.set_title(title if title is not None else "Accuracy-rejection curves")
            note = f"n = {n}" + (f", {100 * confidence:g}% bootstrap bands ({n_boot} resamples)" if n_boot else "")
            ax.annotate(
                note,
                xy=(1.0, 0.0),
                xycoords="axes fraction",
                xytext=(0, -30),
                textcoords="offset points",
                ha="right",
                va="top",
                fontsize=7,
                color="0.4",
            )
            fig.savefig(path, dpi=200, bbox_inches="tight")
        finally:
            plt.close(fig)
    return path
