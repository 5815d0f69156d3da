import math

import matplotlib
import pytest
import torch

from bayespeft.metrics import (
    BootstrapCI,
    accuracy_rejection_curve,
    aurac,
    bootstrap_ci,
    error_auroc,
    plot_accuracy_rejection,
    selective_prediction,
)
from bayespeft.metrics.ood import auroc

matplotlib.use("Agg")

# Four answers: the two wrong ones are the two most uncertain.
UNCERTAINTY = [0.1, 0.4, 0.3, 0.9]
CORRECT = [True, False, True, False]


def test_error_auroc_by_hand():
    # Wrong {0.4, 0.9} against right {0.1, 0.3}: every wrong answer is more uncertain -> 1.
    assert error_auroc(UNCERTAINTY, CORRECT) == 1.0
    assert error_auroc([-u for u in UNCERTAINTY], CORRECT) == 0.0
    # Ties: wrong {0.2} against right {0.2, 0.5}: a tie (1/2) and a loss (0) over 2 pairs -> 1/4.
    assert error_auroc([0.2, 0.2, 0.5], [1, 0, 1]) == pytest.approx(0.25)
    # It is ood.auroc with the right answers as "in" and the wrong ones as "out".
    u, c = torch.tensor([0.3, 0.1, 0.7, 0.7, 0.2]), torch.tensor([1, 1, 0, 1, 0]).bool()
    assert error_auroc(u, c) == auroc(u[c], u[~c])


def test_error_auroc_bad_input():
    with pytest.raises(ValueError, match="both correct and wrong"):
        error_auroc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="one entry per example"):
        error_auroc([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="booleans"):
        error_auroc([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        error_auroc([0.1, float("nan")], [1, 0])


def test_accuracy_rejection_curve_by_hand():
    # Most certain first: 0.1 (right), 0.3 (right), 0.4 (wrong), 0.9 (wrong).
    # Reject 0 -> 2/4; reject 0.9 -> 2/3; reject 0.9, 0.4 -> 2/2; reject three -> 1/1.
    rates, accuracy = accuracy_rejection_curve(UNCERTAINTY, CORRECT)
    assert rates.tolist() == [0.0, 0.25, 0.5, 0.75]
    assert accuracy.tolist() == pytest.approx([1 / 2, 2 / 3, 1.0, 1.0])
    # AURAC = mean of the four step heights = (1/2 + 2/3 + 1 + 1) / 4 = 19/24.
    assert aurac(UNCERTAINTY, CORRECT) == pytest.approx(19 / 24)


def test_accuracy_rejection_curve_averages_ties():
    # Scores 0.2 (right), 0.2 (wrong), 0.5 (right). The tied pair counts as 1/2 correct each:
    # keep 3 -> (1/2 + 1/2 + 1) / 3 = 2/3; keep 2 -> (1/2 + 1/2) / 2 = 1/2; keep 1 -> 1/2.
    # AURAC = (2/3 + 1/2 + 1/2) / 3 = 5/9, whatever the order of the tied examples.
    for u, c in (([0.2, 0.2, 0.5], [1, 0, 1]), ([0.2, 0.2, 0.5], [0, 1, 1]), ([0.5, 0.2, 0.2], [1, 1, 0])):
        _, accuracy = accuracy_rejection_curve(u, c)
        assert accuracy.tolist() == pytest.approx([2 / 3, 1 / 2, 1 / 2])
        assert aurac(u, c) == pytest.approx(5 / 9)


def test_aurac_references():
    correct = [1, 0, 1, 1, 0, 1, 0, 1]
    # A constant score rejects at random: flat at the accuracy 5/8.
    _, flat = accuracy_rejection_curve([0.3] * 8, correct)
    assert flat.tolist() == pytest.approx([5 / 8] * 8)
    # The oracle (wrong answers most uncertain) has the largest AURAC: keep 8..1 of 5 right + 3 wrong,
    # accuracies 5/8, 5/7, 5/6, 1, 1, 1, 1, 1.
    oracle = aurac([1 - c for c in correct], correct)
    assert oracle == pytest.approx((5 / 8 + 5 / 7 + 5 / 6 + 5) / 8)
    assert aurac(torch.rand(8, generator=torch.Generator().manual_seed(0)), correct) <= oracle


def test_bootstrap_ci_is_seeded_and_contains_the_estimate():
    generator = torch.Generator().manual_seed(0)
    correct = torch.rand(60, generator=generator) < 0.7
    # An informative but noisy score: wrong answers are more uncertain on average.
    uncertainty = torch.randn(60, generator=generator) + 1.5 * (~correct).double()

    def statistic(u, c):
        return aurac(u, c)

    ci = bootstrap_ci(statistic, uncertainty, correct, n_boot=200, seed=3)
    assert isinstance(ci, BootstrapCI)
    assert ci.estimate == pytest.approx(aurac(uncertainty, correct))
    assert ci.low <= ci.estimate <= ci.high and ci.low < ci.high
    assert ci.n_boot == 200 and ci.confidence == 0.95
    assert bootstrap_ci(statistic, uncertainty, correct, n_boot=200, seed=3) == ci  # same seed, same interval
    assert bootstrap_ci(statistic, uncertainty, correct, n_boot=200, seed=4) != ci
    wider = bootstrap_ci(statistic, uncertainty, correct, n_boot=200, seed=3, confidence=0.99)
    assert wider.low <= ci.low and wider.high >= ci.high
    assert ci.as_dict() == {"estimate": ci.estimate, "low": ci.low, "high": ci.high, "confidence": 0.95, "n_boot": 200}


def test_bootstrap_drops_undefined_resamples():
    # One wrong answer in five: a resample misses it with probability (4/5)^5 = 0.33, leaving AUROC undefined.
    result = selective_prediction({"u": [0.1, 0.2, 0.3, 0.4, 0.9]}, [1, 1, 1, 1, 0], n_boot=300, seed=0)
    auroc_ci = result["u"]["auroc"]
    assert auroc_ci.estimate == 1.0
    assert 150 < auroc_ci.n_boot < 250  # about 300 * (1 - 0.33) = 201 resamples kept
    assert result["u"]["aurac"].n_boot == 300  # AURAC is defined on every resample
    # All right: no AUROC at all, but an AURAC of 1.
    all_right = selective_prediction({"u": [0.1, 0.2]}, [1, 1], n_boot=10)["u"]
    assert math.isnan(all_right["auroc"].estimate) and all_right["auroc"].n_boot == 0
    assert all_right["aurac"].estimate == 1.0


def test_selective_prediction_pairs_the_resamples():
    scores = {"informative": UNCERTAINTY * 5, "copy": UNCERTAINTY * 5, "reversed": [-u for u in UNCERTAINTY] * 5}
    result = selective_prediction(scores, CORRECT * 5, n_boot=100, seed=1)
    assert set(result) == set(scores)
    assert result["informative"]["auroc"].estimate == 1.0 and result["reversed"]["auroc"].estimate == 0.0
    assert result["informative"]["aurac"].estimate == pytest.approx(aurac(UNCERTAINTY * 5, CORRECT * 5))
    assert result["informative"] == result["copy"]  # same resamples for every score
    with pytest.raises(ValueError, match="3 values but 20"):
        selective_prediction({"a": UNCERTAINTY * 5, "b": [0.1, 0.2, 0.3]}, CORRECT * 5)
    with pytest.raises(ValueError, match="n_boot"):
        selective_prediction({"a": UNCERTAINTY}, CORRECT, n_boot=0)
    with pytest.raises(ValueError, match="confidence"):
        selective_prediction({"a": UNCERTAINTY}, CORRECT, confidence=1.0)


@pytest.mark.parametrize(("name", "n_boot"), [("arc.png", 0), ("arc_bands.png", 50), ("arc.pdf", 20)])
def test_plot_accuracy_rejection_writes_a_figure(tmp_path, name, n_boot):
    import matplotlib.image
    import matplotlib.pyplot as plt

    generator = torch.Generator().manual_seed(0)
    correct = torch.rand(80, generator=generator) < 0.6
    scores = {
        "semantic entropy": torch.randn(80, generator=generator) + 2.0 * (~correct).double(),
        "predictive entropy": torch.randn(80, generator=generator) + 0.5 * (~correct).double(),
    }
    path = tmp_path / name
    assert plot_accuracy_rejection(scores, correct, path, title="Toy QA", n_boot=n_boot) == str(path)
    assert path.stat().st_size > 1000
    if name.endswith(".png"):
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 400 and image.shape[1] > 500  # 200 dpi
    assert not plt.get_fignums()  # the figure was closed


def test_plot_accuracy_rejection_bad_input(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_accuracy_rejection({}, [True], tmp_path / "x.png")
    with pytest.raises(ValueError, match="at most 8"):
        plot_accuracy_rejection({str(i): [0.1] for i in range(9)}, [True], tmp_path / "x.png")
