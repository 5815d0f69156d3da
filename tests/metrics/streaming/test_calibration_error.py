import matplotlib
import matplotlib.pyplot
import pytest
import torch

from bayespeft.metrics import expected_calibration_error, reliability_bins
from bayespeft.metrics.streaming import CalibrationError

matplotlib.use("Agg")


def case(seed, n=157, s=3, c=5):
    g = torch.Generator().manual_seed(seed)
    sample_probs = torch.softmax(torch.randn(n, s, c, generator=g) * 2.5, dim=-1)
    return sample_probs.double().mean(dim=1), torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("n_bins", [15, 7, 2])
def test_equals_function_in_one_and_several_updates(n_bins):
    probs, labels = case(n_bins)
    whole = CalibrationError(n_bins=n_bins)
    whole.update(probs, labels)
    streamed = CalibrationError(n_bins=n_bins)
    for start in range(0, len(labels), 40):
        streamed.update(probs[start : start + 40], labels[start : start + 40])
    expected = expected_calibration_error(probs, labels, n_bins)
    assert whole.compute().dtype == torch.float64
    assert whole.compute().item() == pytest.approx(expected, abs=1e-12)
    assert streamed.compute().item() == pytest.approx(expected, abs=1e-12)
    bins, ref = streamed.bins(), reliability_bins(probs, labels, n_bins)
    for field in ("edges", "count", "confidence", "accuracy"):
        torch.testing.assert_close(getattr(bins, field), getattr(ref, field), rtol=0, atol=1e-12)


def test_confidence_one_joins_the_last_bin_and_reset_forgets():
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.75, 0.25]], dtype=torch.float64)
    metric = CalibrationError(n_bins=4)
    metric.update(probs, torch.tensor([0, 0, 1]))
    assert metric.bins().count.tolist() == [0.0, 0.0, 1.0, 2.0]
    assert metric.compute().item() == pytest.approx(0.375 * 2 / 3 + 0.5 * 1 / 3)
    metric.reset()
    assert metric.count.sum().item() == 0


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="n_bins"):
        CalibrationError(n_bins=0)
    with pytest.raises(ValueError, match="sum to 1"):
        CalibrationError().update(torch.full((2, 3), 0.5), torch.tensor([0, 1]))


def test_plot_draws_the_reliability_diagram():
    probs, labels = case(3)
    metric = CalibrationError(n_bins=10)
    metric.update(probs, labels)
    fig, ax = metric.plot()
    try:
        bins = metric.bins()
        filled = bins.count > 0
        accuracy_bars, gap_bars = ax.containers
        assert [bar.get_height() for bar in accuracy_bars] == pytest.approx(bins.accuracy[filled].tolist())
        assert [bar.get_height() for bar in gap_bars] == pytest.approx(bins.gap[filled].tolist())
        assert [bar.get_x() for bar in accuracy_bars] == pytest.approx(bins.edges[:-1][filled].tolist())
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert f"ECE = {100 * bins.ece():.2f}%" in legend
        assert ax.get_xlabel() == "Confidence" and ax.get_ylabel() == "Accuracy"
    finally:
        matplotlib.pyplot.close(fig)


def test_forward_gives_the_batch_value_and_accumulates():
    probs, labels = case(8)
    metric = CalibrationError(n_bins=10)
    first = metric(probs[:60], labels[:60])
    assert first.item() == pytest.approx(expected_calibration_error(probs[:60], labels[:60], 10), abs=1e-12)
    metric(probs[60:], labels[60:])
    assert metric.compute().item() == pytest.approx(expected_calibration_error(probs, labels, 10), abs=1e-12)
