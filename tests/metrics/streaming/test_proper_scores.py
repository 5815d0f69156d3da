import math

import pytest
import torch

from bayespeft.metrics import brier_score, negative_log_likelihood
from bayespeft.metrics.streaming import BrierScore, NegativeLogLikelihood

# The hand case of tests/metrics/test_classification_metrics.py (means over two samples).
PROBS = torch.tensor(
    [[0.72, 0.18, 0.10], [0.62, 0.38, 0.00], [0.05, 0.85, 0.10], [0.25, 0.30, 0.45]], dtype=torch.float64
)
LABELS = torch.tensor([0, 1, 1, 2])
NLL = 0.564278679737322
BRIER = 0.3449


def test_hand_case_over_two_updates():
    nll, brier = NegativeLogLikelihood(), BrierScore()
    for metric in (nll, brier):
        metric.update(PROBS[:1], LABELS[:1])
        metric.update(PROBS[1:], LABELS[1:])
    assert nll.compute().dtype == torch.float64 and brier.compute().dtype == torch.float64
    assert nll.compute().item() == pytest.approx(NLL, abs=1e-12)
    assert brier.compute().item() == pytest.approx(BRIER, abs=1e-12)


@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_equal_functions_on_random_batches(eps):
    g = torch.Generator().manual_seed(4)
    probs = torch.softmax(torch.randn(90, 6, generator=g) * 4, dim=-1)
    labels = torch.randint(0, 6, (90,), generator=g)
    nll, brier = NegativeLogLikelihood(eps=eps), BrierScore()
    for start in range(0, 90, 25):
        nll.update(probs[start : start + 25], labels[start : start + 25])
        brier.update(probs[start : start + 25], labels[start : start + 25])
    assert nll.compute().item() == pytest.approx(negative_log_likelihood(probs, labels, eps=eps), abs=1e-12)
    assert brier.compute().item() == pytest.approx(brier_score(probs, labels), abs=1e-12)


def test_confident_wrong_answer_is_finite_and_eps_is_checked():
    metric = NegativeLogLikelihood()
    metric.update(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert metric.compute().item() == pytest.approx(-math.log(torch.finfo(torch.float64).tiny))
    with pytest.raises(ValueError, match="eps"):
        NegativeLogLikelihood(eps=1.0)
    with pytest.raises(ValueError, match="labels must lie"):
        BrierScore().update(PROBS, torch.tensor([0, 1, 2, 3]))
