"""The one posterior-predictive rule every method shares.

Bayesian model averaging in probability space: p(y|x) = 1/S sum_s p(y|x, theta_s).
Every method (BLoB samples, MC dropout passes, ensemble members, a single MLE pass)
hands per-sample class logits of shape [batch, samples, classes] to these functions, so
all methods are scored by exactly the same rule.
"""

from __future__ import annotations

import torch


def sample_probabilities(sample_logits: torch.Tensor) -> torch.Tensor:
    """Softmax per sample in float32; ``-inf`` logits (absent choices) get probability 0."""
    return torch.softmax(sample_logits.float(), dim=-1)


def posterior_predictive(sample_logits: torch.Tensor) -> torch.Tensor:
    """Average the per-sample class probabilities: [B, S, C] logits -> [B, C] probabilities."""
    if sample_logits.dim() != 3:
        raise ValueError(f"expected logits of shape [batch, samples, classes], got {tuple(sample_logits.shape)}")
    return sample_probabilities(sample_logits).mean(dim=1)


def posterior_predictive_from_probs(sample_probs: torch.Tensor) -> torch.Tensor:
    """The same rule for per-sample probabilities already computed: [B, S, C] -> [B, C]."""
    if sample_probs.dim() != 3:
        raise ValueError(f"expected probabilities of shape [batch, samples, classes], got {tuple(sample_probs.shape)}")
    return sample_probs.mean(dim=1)
