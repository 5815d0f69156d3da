import pytest
import torch

from bayespeft.metrics import mutual_information, predictive_entropy
from bayespeft.metrics.streaming import MutualInformation, PredictiveEntropy

SAMPLES = torch.tensor(
    [
        [[0.80, 0.10, 0.10], [0.64, 0.26, 0.10]],
        [[0.62, 0.38, 0.00], [0.62, 0.38, 0.00]],
        [[0.10, 0.70, 0.20], [0.00, 1.00, 0.00]],
        [[0.20, 0.20, 0.60], [0.30, 0.40, 0.30]],
    ],
    dtype=torch.float64,
)
# Hand-computed in tests/metrics/test_classification_metrics.py.
ENTROPY = [0.7754451545758172, 0.6640641265641081, 0.5181862130502128, 1.0670938948757507]
MI = [0.022868523024273002, 0.0, 0.11727693677854417, 0.04750863758652146]


def test_hand_case_over_two_updates():
    entropy, mi = PredictiveEntropy(), MutualInformation()
    for part in (SAMPLES[:3], SAMPLES[3:]):
        entropy.update(part.mean(dim=1))
        mi.update(part)
    assert entropy.compute().item() == pytest.approx(sum(ENTROPY) / 4, abs=1e-12)
    assert mi.compute().item() == pytest.approx(sum(MI) / 4, abs=1e-12)


def test_equal_functions_on_random_batches():
    g = torch.Generator().manual_seed(9)
    sample_probs = torch.softmax(torch.randn(70, 5, 4, generator=g) * 2, dim=-1)
    entropy, mi = PredictiveEntropy(), MutualInformation()
    for start in range(0, 70, 16):
        entropy.update(sample_probs[start : start + 16].mean(dim=1))
        mi.update(sample_probs[start : start + 16])
    expected_entropy = predictive_entropy(sample_probs.mean(dim=1)).mean().item()
    assert entropy.compute().item() == pytest.approx(expected_entropy, abs=1e-12)
    assert mi.compute().item() == pytest.approx(mutual_information(sample_probs).mean().item(), abs=1e-12)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"\[N, S, C\]"):
        MutualInformation().update(SAMPLES[:, 0])
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        PredictiveEntropy().update(SAMPLES)
