import math

import matplotlib
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from bayespeft.metrics import (
    ReliabilityBins,
    UncertaintyMetrics,
    accuracy,
    brier_score,
    expected_calibration_error,
    expected_entropy,
    mutual_information,
    negative_log_likelihood,
    predictive_entropy,
    reliability_bins,
)
from bayespeft.predictive import posterior_predictive

matplotlib.use("Agg")

# Four questions, two posterior samples, three choices (question 1 has only two: padded 0).
SAMPLES = torch.tensor(
    [
        [[0.80, 0.10, 0.10], [0.64, 0.26, 0.10]],  # mean [0.72, 0.18, 0.10], label 0: right
        [[0.62, 0.38, 0.00], [0.62, 0.38, 0.00]],  # mean [0.62, 0.38, 0.00], label 1: wrong
        [[0.10, 0.70, 0.20], [0.00, 1.00, 0.00]],  # mean [0.05, 0.85, 0.10], label 1: right
        [[0.20, 0.20, 0.60], [0.30, 0.40, 0.30]],  # mean [0.25, 0.30, 0.45], label 2: right
    ],
    dtype=torch.float64,
)
LABELS = torch.tensor([0, 1, 1, 2])
PROBS = SAMPLES.mean(dim=1)

# Hand-computed references for the tiny case.
ACC = 0.75
# 2 bins: [0, .5) holds conf .45 (right): |1 - .45| * 1/4 = .1375;
# [.5, 1] holds .72 (right), .62 (wrong), .85 (right): |2/3 - .73| * 3/4 = .0475.
ECE_2 = 0.185
# 15 bins: every example alone in its bin: (.28 + .62 + .15 + .55) / 4.
ECE_15 = 0.40
# -(ln .72 + ln .38 + ln .85 + ln .45) / 4 = (.328504 + .967584 + .162519 + .798508) / 4
NLL = 0.564278679737322
# (.1208 + .7688 + .0350 + .4550) / 4
BRIER = 0.3449
# -sum p ln p of each mean row
ENTROPY = [0.7754451545758172, 0.6640641265641081, 0.5181862130502128, 1.0670938948757507]
# mean over the two samples of each sample's entropy
EXPECTED_ENTROPY = [0.7525766315515442, 0.6640641265641081, 0.40090927627166867, 1.0195852572892292]
MI = [0.022868523024273002, 0.0, 0.11727693677854417, 0.04750863758652146]


def random_case(seed, n=200, s=4, c=5, temperature=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, s, c, generator=g) * temperature
    labels = torch.randint(0, c, (n,), generator=g)
    return torch.softmax(logits, dim=-1), labels


def test_hand_computed_scalars():
    assert accuracy(PROBS, LABELS) == pytest.approx(ACC, abs=1e-12)
    assert expected_calibration_error(PROBS, LABELS, n_bins=2) == pytest.approx(ECE_2, abs=1e-12)
    assert expected_calibration_error(PROBS, LABELS, n_bins=15) == pytest.approx(ECE_15, abs=1e-12)
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(ECE_15, abs=1e-12)
    assert negative_log_likelihood(PROBS, LABELS) == pytest.approx(NLL, abs=1e-12)
    assert brier_score(PROBS, LABELS) == pytest.approx(BRIER, abs=1e-12)


def test_hand_computed_uncertainty():
    torch.testing.assert_close(predictive_entropy(PROBS), torch.tensor(ENTROPY, dtype=torch.float64))
    torch.testing.assert_close(expected_entropy(SAMPLES), torch.tensor(EXPECTED_ENTROPY, dtype=torch.float64))
    torch.testing.assert_close(mutual_information(SAMPLES), torch.tensor(MI, dtype=torch.float64))
    assert mutual_information(SAMPLES)[1].item() == 0.0


def test_reliability_bins_hand_case():
    bins = reliability_bins(PROBS, LABELS, n_bins=2)
    assert isinstance(bins, ReliabilityBins)
    assert bins.n_bins == 2 and bins.num_examples == 4
    torch.testing.assert_close(bins.edges, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(bins.count, torch.tensor([1.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(bins.confidence, torch.tensor([0.45, 0.73], dtype=torch.float64))
    torch.testing.assert_close(bins.accuracy, torch.tensor([1.0, 2 / 3], dtype=torch.float64))
    assert bins.ece() == pytest.approx(ECE_2, abs=1e-12)
    empty = reliability_bins(PROBS, LABELS, n_bins=15)
    assert empty.count.sum().item() == 4 and (empty.count == 0).sum().item() == 11
    assert empty.accuracy[empty.count == 0].abs().sum().item() == 0.0


def test_bin_edges_left_closed_and_one_in_last_bin():
    # Confidence exactly on an inner edge goes to the bin above (torchmetrics' rule).
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.75, 0.25]], dtype=torch.float64)
    bins = reliability_bins(probs, torch.tensor([0, 0, 1]), n_bins=4)
    torch.testing.assert_close(bins.count, torch.tensor([0.0, 0.0, 1.0, 2.0], dtype=torch.float64))
    # Last bin holds 0.75 (wrong) and 1.0 (right).
    assert bins.accuracy[3].item() == pytest.approx(0.5)
    assert bins.confidence[3].item() == pytest.approx(0.875)
    assert bins.ece() == pytest.approx(0.375 * 2 / 3 + 0.5 * 1 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("n_bins", [15, 7])
def test_ece_matches_torchmetrics(seed, n_bins):
    sample_probs, labels = random_case(seed, n=500, c=4 + seed)
    probs = sample_probs.mean(dim=1)
    assert (probs.max(dim=1).values < 1).all()  # torchmetrics gives 1.0 a bin of its own
    ours = expected_calibration_error(probs, labels, n_bins=n_bins)
    ref = multiclass_calibration_error(probs, labels, num_classes=probs.shape[1], n_bins=n_bins, norm="l1")
    assert ours == pytest.approx(ref.item(), abs=1e-6)


def test_metrics_agree_with_posterior_predictive_of_logits():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(64, 3, 4, generator=g)
    logits[:10, :, 3] = float("-inf")  # three-choice questions padded to four
    labels = torch.randint(0, 3, (64,), generator=g)
    metrics = UncertaintyMetrics()
    metrics.update(torch.softmax(logits.float(), dim=-1), labels)
    probs = posterior_predictive(logits)
    out = metrics.compute()
    assert out["acc"] == pytest.approx(accuracy(probs, labels), abs=1e-7)
    assert out["nll"] == pytest.approx(negative_log_likelihood(probs, labels), abs=1e-6)
    assert out["entropy"] == pytest.approx(predictive_entropy(probs).mean().item(), abs=1e-6)


def test_mutual_information_zero_when_samples_agree_positive_when_not():
    probs, _ = random_case(11, n=50, s=1)
    identical = probs.expand(50, 6, probs.shape[-1])
    assert mutual_information(probs).abs().max().item() == 0.0  # S = 1
    assert mutual_information(identical).abs().max().item() < 1e-12
    disagree = torch.tensor([[[0.9, 0.1], [0.1, 0.9]]], dtype=torch.float64)
    mi = mutual_information(disagree).item()
    # entropy of [.5, .5] minus entropy of [.9, .1]
    assert mi == pytest.approx(math.log(2) - 0.3250829733914482, abs=1e-9)
    assert mi > 0


def test_mutual_information_bounded_by_entropy():
    sample_probs, _ = random_case(12, n=300, s=8, c=6)
    sample_probs = sample_probs.double()
    mi = mutual_information(sample_probs)
    total = predictive_entropy(sample_probs.mean(dim=1))
    assert (mi >= 0).all()
    assert (mi <= total + 1e-12).all()
    torch.testing.assert_close(total - expected_entropy(sample_probs), mi, atol=1e-12, rtol=0)
    assert (total <= math.log(6) + 1e-12).all()


def test_nll_confident_wrong_answer_is_finite():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    labels = torch.tensor([1, 0])
    nll = negative_log_likelihood(probs, labels)
    tiny = torch.finfo(torch.float64).tiny
    assert math.isfinite(nll)
    assert nll == pytest.approx((-math.log(tiny) + math.log(2)) / 2)
    assert negative_log_likelihood(probs, labels, eps=1e-6) == pytest.approx((-math.log(1e-6) + math.log(2)) / 2)


def test_perfect_predictions():
    probs = torch.eye(3)
    labels = torch.arange(3)
    assert accuracy(probs, labels) == 1.0
    assert expected_calibration_error(probs, labels) == 0.0
    assert negative_log_likelihood(probs, labels) == 0.0
    assert brier_score(probs, labels) == 0.0
    assert predictive_entropy(probs).abs().max().item() == 0.0
    assert brier_score(probs, torch.tensor([1, 2, 0])) == 2.0


def test_streaming_equals_one_batch():
    sample_probs, labels = random_case(21, n=103, s=5, c=4)
    whole = UncertaintyMetrics(n_bins=10)
    whole.update(sample_probs, labels)
    streamed = UncertaintyMetrics(n_bins=10)
    for start in range(0, 103, 17):
        streamed.update(sample_probs[start : start + 17], labels[start : start + 17])
    a, b = whole.compute(), streamed.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-12), key
    assert len(streamed) == 103 and b["num_examples"] == 103 and b["num_samples"] == 5 and b["n_bins"] == 10
    probs = sample_probs.double().mean(dim=1)
    assert b["acc"] == pytest.approx(accuracy(probs, labels), abs=1e-12)
    assert b["ece"] == pytest.approx(expected_calibration_error(probs, labels, 10), abs=1e-12)
    assert b["brier"] == pytest.approx(brier_score(probs, labels), abs=1e-12)
    assert b["mutual_information"] == pytest.approx(mutual_information(sample_probs).mean().item(), abs=1e-12)


def test_streaming_hand_case_and_merge():
    metrics = UncertaintyMetrics(n_bins=2)
    metrics.update(SAMPLES[:2], LABELS[:2])
    other = UncertaintyMetrics(n_bins=2)
    other.update(SAMPLES[2:], LABELS[2:])
    metrics.merge(other)
    out = metrics.compute()
    assert out["acc"] == pytest.approx(ACC)
    assert out["ece"] == pytest.approx(ECE_2)
    assert out["nll"] == pytest.approx(NLL)
    assert out["brier"] == pytest.approx(BRIER)
    assert out["entropy"] == pytest.approx(sum(ENTROPY) / 4)
    assert out["mutual_information"] == pytest.approx(sum(MI) / 4)
    rows = metrics.per_example()
    assert [r["label"] for r in rows] == [0, 1, 1, 2]
    assert [r["prediction"] for r in rows] == [0, 0, 1, 2]
    assert [r["correct"] for r in rows] == [True, False, True, True]
    assert [r["confidence"] for r in rows] == pytest.approx([0.72, 0.62, 0.85, 0.45])
    assert rows[2]["probs"] == pytest.approx([0.05, 0.85, 0.10])
    assert [r["entropy"] for r in rows] == pytest.approx(ENTROPY)
    assert [r["mutual_information"] for r in rows] == pytest.approx(MI)
    metrics.reset()
    assert len(metrics) == 0
    with pytest.raises(ValueError, match="no data"):
        metrics.compute()


def test_variable_choice_counts_are_padded():
    two = torch.tensor([[[0.9, 0.1]], [[0.3, 0.7]]])
    four = torch.tensor([[[0.1, 0.2, 0.3, 0.4]]])
    three = torch.tensor([[[0.6, 0.3, 0.1]]])
    metrics = UncertaintyMetrics(n_bins=5)
    metrics.update(two, torch.tensor([0, 0]))
    metrics.update(four, torch.tensor([3]))
    metrics.update(three, torch.tensor([2]))
    padded = torch.tensor([[0.9, 0.1, 0, 0], [0.3, 0.7, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.6, 0.3, 0.1, 0]])
    labels = torch.tensor([0, 0, 3, 2])
    out = metrics.compute()
    assert out["acc"] == pytest.approx(0.5)
    assert out["brier"] == pytest.approx(brier_score(padded, labels))
    assert out["nll"] == pytest.approx(negative_log_likelihood(padded, labels))
    assert out["ece"] == pytest.approx(expected_calibration_error(padded, labels, 5))
    assert out["entropy"] == pytest.approx(predictive_entropy(padded).mean().item())
    assert out["mutual_information"] == 0.0
    assert [len(r["probs"]) for r in metrics.per_example()] == [2, 2, 4, 3]


def test_accepts_gpu_or_half_inputs_and_keeps_cpu_state():
    sample_probs, labels = random_case(5, n=20)
    metrics = UncertaintyMetrics()
    metrics.update(sample_probs.half().float(), labels.int())
    assert metrics._probs[0].device.type == "cpu" and metrics._probs[0].dtype == torch.float64


@pytest.mark.parametrize(
    ("sample_probs", "labels", "match"),
    [
        (torch.full((2, 3), 1 / 3), torch.tensor([0, 1]), r"\[N, S, C\]"),
        (torch.full((2, 1, 3), 1 / 3), torch.tensor([0, 1, 2]), "3 entries"),
        (torch.full((2, 1, 3), 1 / 3), torch.tensor([0, 3]), r"labels must lie in \[0, 2\]"),
        (torch.full((2, 1, 3), 1 / 3), torch.tensor([-1, 0]), "labels must lie"),
        (torch.full((2, 1, 3), 1 / 3), torch.tensor([0.0, 1.0]), "integer"),
        (torch.full((2, 1, 3), 1 / 3), torch.tensor([[0], [1]]), r"shape \[N\]"),
        (torch.randn(2, 1, 3), torch.tensor([0, 1]), "probabilities"),
        (torch.full((2, 1, 3), 0.5), torch.tensor([0, 1]), "sum to 1"),
        (torch.full((2, 1, 3), float("nan")), torch.tensor([0, 1]), "NaN"),
        (torch.zeros(0, 1, 3), torch.zeros(0, dtype=torch.long), "empty"),
    ],
)
def test_update_rejects_bad_inputs(sample_probs, labels, match):
    metrics = UncertaintyMetrics()
    with pytest.raises(ValueError, match=match):
        metrics.update(sample_probs, labels)
    assert len(metrics) == 0


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="n_bins"):
        UncertaintyMetrics(n_bins=0)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(PROBS, LABELS, n_bins=0)
    with pytest.raises(ValueError, match="no data"):
        UncertaintyMetrics().compute()
    with pytest.raises(ValueError, match="no data"):
        UncertaintyMetrics().plot_reliability("unused.png")
    metrics = UncertaintyMetrics()
    metrics.update(SAMPLES, LABELS)
    with pytest.raises(ValueError, match="samples per example"):
        metrics.update(torch.full((1, 3, 2), 0.5), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        accuracy(SAMPLES, LABELS)
    with pytest.raises(ValueError, match="eps"):
        negative_log_likelihood(PROBS, LABELS, eps=-1.0)
    with pytest.raises(ValueError, match=r"\[N, S, C\]"):
        mutual_information(PROBS)


def test_plot_reliability_writes_png(tmp_path):
    import matplotlib.image

    sample_probs, labels = random_case(3, n=400, s=4, c=4, temperature=2.5)
    metrics = UncertaintyMetrics()
    metrics.update(sample_probs, labels)
    path = tmp_path / "reliability.png"
    assert metrics.plot_reliability(path, title="Random logits") == str(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 10_000 < len(data) < 2_000_000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 500 and image.shape[1] > 400
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # figure closed
