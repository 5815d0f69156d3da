import matplotlib
import matplotlib.pyplot
import pytest
import torch

from bayespeft.metrics import accuracy_rejection_curve, aurac
from bayespeft.metrics.streaming import AURAC, AURC

matplotlib.use("Agg")

# The hand case of tests/metrics/test_selective.py: AURAC 19/24.
UNCERTAINTY = [0.1, 0.4, 0.3, 0.9]
CORRECT = [True, False, True, False]


def random_case(seed, n=90):
    g = torch.Generator().manual_seed(seed)
    uncertainty = (torch.rand(n, generator=g) * 10).floor()  # ties
    correct = torch.rand(n, generator=g) < 0.8 - 0.05 * uncertainty
    return uncertainty, correct


def test_hand_case_over_two_updates():
    aurac_metric, aurc_metric = AURAC(), AURC()
    for metric in (aurac_metric, aurc_metric):
        metric.update(UNCERTAINTY[:3], CORRECT[:3])
        metric.update(UNCERTAINTY[3:], CORRECT[3:])
    assert aurac_metric.compute().item() == pytest.approx(19 / 24, abs=1e-12)
    assert aurc_metric.compute().item() == pytest.approx(5 / 24, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_equal_aurac_function_over_several_updates(seed):
    uncertainty, correct = random_case(seed)
    aurac_metric, aurc_metric = AURAC(), AURC()
    for start in range(0, 90, 35):
        aurac_metric.update(uncertainty[start : start + 35], correct[start : start + 35])
        aurc_metric.update(uncertainty[start : start + 35], correct[start : start + 35])
    expected = aurac(uncertainty, correct)
    assert aurac_metric.compute().item() == pytest.approx(expected, abs=1e-12)
    assert aurc_metric.compute().item() == pytest.approx(1 - expected, abs=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="correct must be booleans"):
        AURAC().update([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="one-dimensional"):
        AURC().update(torch.zeros(2, 2), [True, False])


def test_plots_draw_the_curves_with_oracle_and_random():
    uncertainty, correct = random_case(3)
    rates, accuracy = accuracy_rejection_curve(uncertainty, correct)
    base = correct.double().mean().item()
    for metric, x, y, flat in ((AURAC(), rates, accuracy, base), (AURC(), 1 - rates, 1 - accuracy, 1 - base)):
        metric.update(uncertainty, correct)
        fig, ax = metric.plot()
        try:
            curve, oracle, random = ax.get_lines()
            assert curve.get_xdata()[:-1].tolist() == pytest.approx(x.tolist())
            assert curve.get_ydata()[:-1].tolist() == pytest.approx(y.tolist())
            assert curve.get_label() == f"Uncertainty ({metric.compute().item():.3f})"
            assert random.get_ydata().tolist() == pytest.approx([flat] * 91)
            # The oracle is never worse than the score (equal where nothing or everything is rejected).
            gain = oracle.get_ydata()[:-1] - y.numpy()
            assert (gain >= -1e-12).all() if metric.higher_is_better else (gain <= 1e-12).all()
        finally:
            matplotlib.pyplot.close(fig)


def test_forward_gives_the_batch_value_and_accumulates():
    uncertainty, correct = random_case(4)
    metric = AURAC()
    assert metric(uncertainty[:40], correct[:40]).item() == pytest.approx(aurac(uncertainty[:40], correct[:40]))
    metric(uncertainty[40:], correct[40:])
    assert metric.compute().item() == pytest.approx(aurac(uncertainty, correct), abs=1e-12)
