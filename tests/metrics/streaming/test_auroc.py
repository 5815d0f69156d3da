import matplotlib
import matplotlib.pyplot
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from bayespeft.metrics import error_auroc
from bayespeft.metrics.ood import auroc
from bayespeft.metrics.streaming import UncertaintyAUROC

matplotlib.use("Agg")


def tied_scores(seed, n=80):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randn(n, generator=g) * 4).round() / 4  # ties within and across the groups
    positive = torch.rand(n, generator=g) < 0.4
    return scores + 0.3 * positive, positive


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_ood_auroc_over_several_updates(seed):
    scores, positive = tied_scores(seed)
    metric = UncertaintyAUROC()
    for start in range(0, 80, 30):
        metric.update(scores[start : start + 30], positive[start : start + 30])
    value = metric.compute()
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(auroc(scores[~positive], scores[positive]), abs=1e-12)
    # torchmetrics' BinaryAUROC is the same area, in float32.
    assert value.item() == pytest.approx(binary_auroc(scores, positive.long()).item(), abs=1e-6)


def test_error_detection_with_wrong_answers_as_positives():
    uncertainty = torch.tensor([0.1, 0.9, 0.2, 0.2, 0.7])
    correct = torch.tensor([True, False, True, False, True])
    metric = UncertaintyAUROC()
    metric.update(uncertainty, ~correct)
    assert metric.compute().item() == error_auroc(uncertainty, correct)


def test_bad_input_and_one_class():
    with pytest.raises(ValueError, match="NaN"):
        UncertaintyAUROC().update(torch.tensor([0.1, float("nan")]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="positive must have one entry per example"):
        UncertaintyAUROC().update(torch.tensor([0.1, 0.2]), torch.tensor([True]))
    metric = UncertaintyAUROC()
    metric.update(torch.tensor([0.1, 0.2]), torch.tensor([True, True]))
    with pytest.raises(ValueError, match="empty"):
        metric.compute()


def test_plot_draws_the_roc_curve():
    scores, positive = tied_scores(5)
    metric = UncertaintyAUROC()
    metric.update(scores, positive)
    fig, ax = metric.plot()
    try:
        chance, roc = ax.get_lines()
        assert chance.get_ydata().tolist() == [0, 1]
        fpr, tpr = roc.get_xdata(), roc.get_ydata()
        assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
        # The trapezoid area under the drawn curve is the AUROC.
        area = sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1))
        assert area == pytest.approx(metric.compute().item(), abs=1e-6)
        assert roc.get_label() == f"AUROC = {metric.compute().item():.3f}"
    finally:
        matplotlib.pyplot.close(fig)
