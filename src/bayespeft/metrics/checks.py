"""Input validation shared by the classification, OOD, selective and streaming metrics.

Every check raises ValueError with a message that names the argument, and returns the
input as the float64 (scores, probabilities) or int64 (labels) tensor the arithmetic uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["FLOAT", "check_correct", "check_labels", "check_n_bins", "check_probs", "check_scores", "probs_and_labels"]

#: The dtype all metric arithmetic is done in.
FLOAT = torch.float64
# Rows of a probability matrix must sum to 1 within this (float32 softmax is ~1e-7 off).
SUM_TOL = 1e-3


def check_n_bins(n_bins: int) -> int:
    """``n_bins`` if it is an integer >= 1 (bools are refused)."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return n_bins


def check_probs(probs: Tensor, name: str = "probs", dim: int = 2) -> Tensor:
    """Non-empty probabilities ``[N, C]`` (``dim=2``) or ``[N, S, C]`` (``dim=3``) whose rows sum to 1, as float64."""
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
    p = probs.detach().to(FLOAT)
    if not torch.isfinite(p).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (p < 0).any() or (p > 1 + SUM_TOL).any():
        raise ValueError(f"{name} must be probabilities in [0, 1] (pass softmax outputs, not logits)")
    sums = p.sum(dim=-1)
    if (sums - 1).abs().max().item() > SUM_TOL:
        raise ValueError(
            f"{name} rows must sum to 1 (got sums from {sums.min().item():.4g} to "
            f"{sums.max().item():.4g}); pass probabilities, not logits"
        )
    return p


def check_labels(labels: Tensor, n: int, n_classes: int) -> Tensor:
    """Integer class labels ``[n]`` in ``[0, n_classes)``, as int64."""
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


def probs_and_labels(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Checked ``probs`` [N, C] (float64) and ``labels`` [N] (int64, on the probabilities' device)."""
    p = check_probs(probs)
    y = check_labels(labels, p.shape[0], p.shape[1]).to(p.device)
    return p, y


def check_scores(values: Tensor | Sequence[float], name: str) -> Tensor:
    """A non-empty, finite, one-dimensional score per example as a float64 CPU tensor."""
    if isinstance(values, Tensor):
        t = values.detach().to(device="cpu", dtype=FLOAT)
    else:
        try:
            t = torch.as_tensor(list(values), dtype=FLOAT)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a sequence of numbers: {exc}") from None
    if t.dim() != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: AUROC needs at least one in- and one out-of-distribution score")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def check_correct(values: Tensor | Sequence[bool], n: int, name: str = "correct") -> Tensor:
    """One boolean per example (``n`` of them; booleans or 0/1), e.g. whether each answer is right, on the CPU."""
    t = values.detach().cpu() if isinstance(values, Tensor) else torch.as_tensor(list(values))
    if t.dim() != 1 or t.numel() != n:
        raise ValueError(f"{name} must have one entry per example ({n}), got shape {tuple(t.shape)}")
    as_float = t.to(FLOAT)
    if not ((as_float == 0) | (as_float == 1)).all():
        raise ValueError(f"{name} must be booleans (or 0/1)")
    return as_float.bool()
