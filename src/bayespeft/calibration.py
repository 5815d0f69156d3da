"""Post-hoc temperature scaling for any method, fitted on held-out data.

For one sample, softmax(z / T) = softmax(log softmax(z) / T), so a temperature can be applied to
the per-sample probabilities every method produces: p_T ∝ p^(1/T), then averaged over samples
by the shared posterior-predictive rule. T is fitted by minimising the held-out NLL over log T.
"""

from __future__ import annotations

import torch

from .predictive import sample_probabilities


def apply_temperature(sample_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Rescale per-sample probabilities [N, S, C] by 1/T in log space; zeros (absent choices) stay 0."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    log_probs = sample_probs.double().log()  # log 0 = -inf keeps absent choices at probability 0
    return sample_probabilities(log_probs / temperature).to(sample_probs.dtype)


def _nll(sample_probs: torch.Tensor, labels: torch.Tensor, log_temperature: torch.Tensor) -> torch.Tensor:
    present = sample_probs > 0  # absent choices: scaling -inf would give NaN gradients
    log_probs = torch.where(present, sample_probs.double().log(), 0.0) / log_temperature.exp()
    scaled = torch.softmax(log_probs.masked_fill(~present, float("-inf")), dim=-1).mean(dim=1)
    return -scaled.gather(1, labels.view(-1, 1)).clamp_min(1e-300).log().mean()


def fit_temperature(sample_probs: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The temperature minimising the NLL of the sample-averaged scaled probabilities."""
    if sample_probs.dim() != 3 or sample_probs.shape[0] != labels.shape[0] or labels.numel() == 0:
        raise ValueError("expected non-empty sample probabilities [N, S, C] and labels [N]")
    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _nll(sample_probs, labels, log_temperature)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_temperature.detach().exp())
