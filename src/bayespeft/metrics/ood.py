"""Out-of-distribution detection with predictive uncertainty.

A model fine-tuned on one dataset (in-distribution, ID) is evaluated on another
(out-of-distribution, OOD); a good uncertainty estimate is higher on the OOD examples.
Each score below is oriented so that **higher means more uncertain**:

``entropy``
    predictive entropy ``-sum_c p_c log p_c`` of the posterior predictive (nats);
``max_prob``
    ``1 - max_c p_c`` (one minus the confidence, the maximum-softmax-probability
    baseline turned around so that higher means more uncertain);
``mutual_information``
    BALD, the epistemic part of the entropy; needs per-sample probabilities.

Detection quality is the AUROC of telling OOD (positive, label 1) from ID (label 0)
by the score, computed exactly as the Mann-Whitney statistic::

    AUROC = P(s_out > s_in) + 1/2 P(s_out == s_in)

over all (ID, OOD) pairs. 1 is perfect separation, 0.5 chance (or a constant score),
0 perfectly reversed. This equals ``sklearn.metrics.roc_auc_score`` with ties handled
the same way, without depending on scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .checks import FLOAT, check_probs, check_scores
from .classification import mutual_information, predictive_entropy

__all__ = ["OOD_SCORES", "auroc", "ood_detection", "ood_scores"]

#: Score names, in the order :func:`ood_detection` reports them.
OOD_SCORES = ("entropy", "max_prob", "mutual_information")


def ood_scores(probs: Tensor | None = None, sample_probs: Tensor | None = None) -> dict[str, Tensor]:
    """Per-example uncertainty scores (higher = more uncertain), float64 tensors of shape ``[N]``.

    ``probs`` [N, C] are the predictive probabilities; ``sample_probs`` [N, S, C] the
    per-sample probabilities of a Bayesian method. Give either or both: with only
    ``sample_probs`` the predictive is their mean over samples. ``mutual_information``
    is in the result only when ``sample_probs`` is given (a point estimate has none).
    """
    if probs is None and sample_probs is None:
        raise ValueError("ood_scores needs probs [N, C] or sample_probs [N, S, C]")
    if sample_probs is None:
        p = check_probs(probs)
    else:
        sp = check_probs(sample_probs, "sample_probs", dim=3)
        p = sp.mean(dim=1) if probs is None else check_probs(probs)
        if p.shape[0] != sp.shape[0] or p.shape[1] != sp.shape[2]:
            raise ValueError(
                f"probs has shape {tuple(p.shape)} but sample_probs has {tuple(sp.shape)}; "
                "expected [N, C] and [N, S, C] with the same N and C"
            )
    scores = {"entropy": predictive_entropy(p), "max_prob": 1.0 - p.max(dim=1).values}
    if sample_probs is not None:
        scores["mutual_information"] = mutual_information(sp)
    return scores


def auroc(scores_in: Tensor | Sequence[float], scores_out: Tensor | Sequence[float]) -> float:
    """Area under the ROC curve for detecting OOD (positives) by a score, ties counted 1/2.

    Exact: ``(#pairs with s_out > s_in + 1/2 #pairs with s_out == s_in) / (n_in * n_out)``,
    computed in ``O(n log n)`` by grouping equal values. Raises ValueError for an empty,
    non-1-D or non-finite input.
    """
    s_in = check_scores(scores_in, "scores_in")
    s_out = check_scores(scores_out, "scores_out")
    n_in, n_out = s_in.numel(), s_out.numel()
    values, inverse = torch.unique(torch.cat([s_in, s_out]), sorted=True, return_inverse=True)
    k = values.numel()
    count_in = torch.bincount(inverse[:n_in], minlength=k).to(FLOAT)
    count_out = torch.bincount(inverse[n_in:], minlength=k).to(FLOAT)
    # For each distinct value: ID scores strictly below it, plus half of the ID scores equal to it.
    below_in = torch.cumsum(count_in, 0) - count_in
    wins = (count_out * (below_in + 0.5 * count_in)).sum().item()
    return wins / (n_in * n_out)


def _record_scores(records: Sequence[Mapping], name: str) -> dict[str, list[float]]:
    if len(records) == 0:
        raise ValueError(f"{name} is empty: OOD detection needs prediction records on both datasets")
    out: dict[str, list[float]] = {key: [] for key in OOD_SCORES}
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"{name}[{i}] must be a prediction record (dict), got {type(record).__name__}")
        values = {}
        for field in ("entropy", "confidence", "mutual_information"):
            value = record.get(field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}[{i}]: field {field!r} must be a finite number, got {value!r}")
            values[field] = float(value)
        out["entropy"].append(values["entropy"])
        out["max_prob"].append(1.0 - values["confidence"])
        out["mutual_information"].append(values["mutual_information"])
    return out


def ood_detection(in_records: Sequence[Mapping], out_records: Sequence[Mapping]) -> dict[str, float]:
    """AUROC of each uncertainty score for telling ``out_records`` (OOD) from ``in_records`` (ID).

    Records are the lines of ``predictions.jsonl`` (fields ``entropy``, ``confidence``,
    ``mutual_information``). Returns ``{"auroc_entropy", "auroc_max_prob",
    "auroc_mutual_information"}``; a method without posterior samples has mutual
    information 0 everywhere and so ``auroc_mutual_information == 0.5``.
    """
    s_in = _record_scores(in_records, "in_records")
    s_out = _record_scores(out_records, "out_records")
    return {f"auroc_{key}": auroc(s_in[key], s_out[key]) for key in OOD_SCORES}
