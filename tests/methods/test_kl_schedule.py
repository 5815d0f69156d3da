"""KL weighting schedules (cyclic and uniform) and the KL period."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from bayespeft.enums import KLPeriod, KLSchedule
from bayespeft.methods.kl_schedule import kl_period, kl_weight, summarize_schedule


def test_cyclic_weights_for_small_period():
    weights = [kl_weight(step, 3, KLSchedule.CYCLIC) for step in range(1, 10)]
    assert weights == pytest.approx([2 / 15, 4 / 15, 8 / 15] * 3, rel=1e-15)
    assert [kl_weight(s, 1, KLSchedule.CYCLIC) for s in (1, 2, 3)] == pytest.approx([2 / 3] * 3)


@pytest.mark.parametrize("period", [1, 2, 5, 10, 40])
def test_cyclic_weights_follow_formula_and_sum_to_about_one(period):
    weights = [kl_weight(step, period, KLSchedule.CYCLIC) for step in range(1, period + 1)]
    for step, w in enumerate(weights, start=1):
        k = step % period or period
        assert w == float(Fraction(2**k, 2 ** (period + 1) - 1))
    assert sum(weights) == pytest.approx(1 - 1 / (2 ** (period + 1) - 1), rel=1e-12)
    if period >= 10:
        assert sum(weights) == pytest.approx(1, abs=1e-3)
    assert weights[-1] == max(weights)  # most weight at the end of the cycle


def test_cyclic_weight_underflows_to_exact_zero():
    assert kl_weight(1, 5000, KLSchedule.CYCLIC) == 0.0
    assert kl_weight(5000, 5000, KLSchedule.CYCLIC) == pytest.approx(0.5)
    assert kl_weight(5000 + 1, 5000, KLSchedule.CYCLIC) == 0.0


def test_uniform_weight_and_step_validation():
    assert kl_weight(1, 4, KLSchedule.UNIFORM) == 0.25
    assert kl_weight(7, 4, KLSchedule.UNIFORM) == 0.25
    assert sum(kl_weight(s, 8, KLSchedule.UNIFORM) for s in range(1, 9)) == pytest.approx(1)
    with pytest.raises(ValueError):
        kl_weight(0, 4, KLSchedule.CYCLIC)


def test_kl_period_epoch():
    kw = {"num_examples": 1000, "batch_size": 4}
    assert kl_period(KLPeriod.EPOCH, batches_per_epoch=37, **kw) == 37
    assert kl_period(KLPeriod.EPOCH, batches_per_epoch=0, **kw) == 1


@pytest.mark.parametrize(("n", "expected"), [(2248, 517), (640, 316), (4956, 706)])
def test_kl_period_dataset_rescaled_reference_values(n, expected):
    assert kl_period(KLPeriod.DATASET_RESCALED, batches_per_epoch=1, num_examples=n, batch_size=4, gamma=8) == expected


def test_kl_period_dataset_rescaled_formula():
    got = kl_period(
        KLPeriod.DATASET_RESCALED, batches_per_epoch=1, num_examples=1000, batch_size=8, num_processes=2, gamma=4
    )
    assert got == math.floor(100 * 1000 ** (math.pi / 4) / 2 / 8)
    tiny = kl_period(KLPeriod.DATASET_RESCALED, batches_per_epoch=1, num_examples=1, batch_size=1000, gamma=8)
    assert tiny == 1


def test_summary_flags_a_kl_that_is_never_applied():
    summary = summarize_schedule(100, 5000, KLSchedule.CYCLIC)
    assert summary.never_applied and summary.period_exceeds_run
    assert summary.steps_with_zero_weight == 100 and summary.total_weight == 0.0
    message = summary.warning()
    assert message is not None and "artefact" in message and "5000" in message


def test_summary_flags_period_longer_than_run():
    summary = summarize_schedule(10, 20, KLSchedule.CYCLIC)
    assert summary.period_exceeds_run and not summary.never_applied
    assert summary.total_weight == pytest.approx(sum(2**k / (2**21 - 1) for k in range(1, 11)))
    assert "exceeds" in summary.warning()


def test_summary_healthy_schedule_has_no_warning():
    summary = summarize_schedule(30, 10, KLSchedule.CYCLIC)
    assert not summary.never_applied and not summary.period_exceeds_run
    assert summary.total_weight == pytest.approx(3, abs=0.01)
    assert summary.max_weight == 2**10 / (2**11 - 1)
    assert summary.warning() is None
    assert summarize_schedule(0, 10, KLSchedule.CYCLIC).warning() is None
    uniform = summarize_schedule(30, 10, KLSchedule.UNIFORM)
    assert uniform.total_weight == pytest.approx(3) and uniform.steps_with_zero_weight == 0
