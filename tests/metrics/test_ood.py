import math

import pytest
import torch

from bayespeft.metrics.classification import mutual_information, predictive_entropy
from bayespeft.metrics.ood import OOD_SCORES, auroc, ood_detection, ood_scores


def brute_force_auroc(s_in, s_out):
    total = 0.0
    for a in s_in:
        for b in s_out:
            total += 1.0 if b > a else 0.5 if b == a else 0.0
    return total / (len(s_in) * len(s_out))


def test_auroc_perfect_reversed_and_identical():
    assert auroc([0.1, 0.2, 0.3], [0.5, 0.9]) == 1.0
    assert auroc([0.5, 0.9], [0.1, 0.2, 0.3]) == 0.0
    assert auroc([0.4, 0.4, 0.4], [0.4, 0.4]) == 0.5
    assert auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0])) == 0.5


def test_auroc_with_ties_by_hand():
    # Pairs (in, out): out=0.5 beats 0.1, ties 0.5, loses to 0.9 -> 1.5;
    # out=0.9 beats 0.1 and 0.5, ties 0.9 -> 2.5; out=0.1 ties 0.1 -> 0.5.  Total 4.5 / 9.
    assert auroc([0.1, 0.5, 0.9], [0.5, 0.9, 0.1]) == pytest.approx(4.5 / 9)
    # One ID score 1; OOD [0, 1, 2]: 0 + 0.5 + 1 over 3 pairs.
    assert auroc([1], [0, 1, 2]) == pytest.approx(0.5)
    assert auroc([0, 0, 1], [1, 2]) == pytest.approx((1 + 1 + 0.5 + 1 + 1 + 1) / 6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_pair_counting(seed):
    g = torch.Generator().manual_seed(seed)
    # Rounded values so that ties occur both within and across the two groups.
    s_in = (torch.randn(37, generator=g) * 4).round() / 4
    s_out = (torch.randn(23, generator=g) * 4 + 0.7).round() / 4
    expected = brute_force_auroc(s_in.tolist(), s_out.tolist())
    assert auroc(s_in, s_out) == pytest.approx(expected, abs=1e-12)
    assert auroc(s_out, s_in) == pytest.approx(1 - expected, abs=1e-12)


@pytest.mark.parametrize(
    ("s_in", "s_out", "match"),
    [
        ([], [1.0], "scores_in is empty"),
        ([1.0], [], "scores_out is empty"),
        (torch.zeros(0), torch.ones(3), "empty"),
        ([1.0, float("nan")], [1.0], "NaN"),
        (torch.zeros(2, 2), [1.0], "one-dimensional"),
        (["a"], [1.0], "numbers"),
    ],
)
def test_auroc_bad_input(s_in, s_out, match):
    with pytest.raises(ValueError, match=match):
        auroc(s_in, s_out)


SAMPLES = torch.tensor(
    [
        [[0.80, 0.10, 0.10], [0.64, 0.26, 0.10]],
        [[0.62, 0.38, 0.00], [0.62, 0.38, 0.00]],
        [[0.10, 0.70, 0.20], [0.00, 1.00, 0.00]],
    ]
)


def test_ood_scores_from_samples():
    scores = ood_scores(sample_probs=SAMPLES)
    assert set(scores) == set(OOD_SCORES)
    mean = SAMPLES.mean(dim=1)
    torch.testing.assert_close(scores["entropy"], predictive_entropy(mean))
    torch.testing.assert_close(scores["max_prob"], torch.tensor([0.28, 0.38, 0.15], dtype=torch.float64))
    torch.testing.assert_close(scores["mutual_information"], mutual_information(SAMPLES))
    assert scores["mutual_information"][1].item() == 0.0  # samples agree
    both = ood_scores(mean, SAMPLES)
    for key in OOD_SCORES:
        torch.testing.assert_close(both[key], scores[key])


def test_ood_scores_from_probs_only():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    scores = ood_scores(probs)
    assert set(scores) == {"entropy", "max_prob"}
    torch.testing.assert_close(scores["entropy"], torch.tensor([0.0, math.log(2)], dtype=torch.float64))
    torch.testing.assert_close(scores["max_prob"], torch.tensor([0.0, 0.5], dtype=torch.float64))


def test_ood_scores_bad_input():
    with pytest.raises(ValueError, match="needs probs"):
        ood_scores()
    with pytest.raises(ValueError, match="same N and C"):
        ood_scores(torch.full((2, 3), 1 / 3), SAMPLES)
    with pytest.raises(ValueError, match="empty"):
        ood_scores(torch.zeros(0, 3))


def _record(entropy, confidence, mi):
    return {"entropy": entropy, "confidence": confidence, "mutual_information": mi, "correct": True}


def test_ood_detection_from_records():
    in_records = [_record(0.1, 0.95, 0.00), _record(0.2, 0.90, 0.01), _record(0.6, 0.60, 0.02)]
    out_records = [_record(0.5, 0.70, 0.05), _record(0.9, 0.40, 0.02)]
    result = ood_detection(in_records, out_records)
    assert list(result) == ["auroc_entropy", "auroc_max_prob", "auroc_mutual_information"]
    # entropy: 0.5 beats 0.1, 0.2 (2); 0.9 beats all three (3) -> 5/6.
    assert result["auroc_entropy"] == pytest.approx(5 / 6)
    # 1 - confidence: in [0.05, 0.10, 0.40], out [0.30, 0.60] -> 2 + 3 = 5/6.
    assert result["auroc_max_prob"] == pytest.approx(5 / 6)
    # MI: 0.05 beats all (3); 0.02 beats 0, 0.01, ties 0.02 (2.5) -> 5.5/6.
    assert result["auroc_mutual_information"] == pytest.approx(5.5 / 6)


def test_ood_detection_bad_records():
    good = [_record(0.1, 0.9, 0.0)]
    with pytest.raises(ValueError, match="in_records is empty"):
        ood_detection([], good)
    with pytest.raises(ValueError, match="out_records is empty"):
        ood_detection(good, [])
    with pytest.raises(ValueError, match=r"out_records\[1\]: field 'confidence'"):
        ood_detection(good, [good[0], {"entropy": 0.1, "mutual_information": 0.0}])
    with pytest.raises(ValueError, match="must be a prediction record"):
        ood_detection(good, [3])
