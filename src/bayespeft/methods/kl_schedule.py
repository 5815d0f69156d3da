"""KL weighting schedules for variational LoRA training (BLoB reference and plain 1/M)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..enums import KLPeriod, KLSchedule


def kl_period(
    kind: KLPeriod,
    *,
    batches_per_epoch: int,
    num_examples: int,
    batch_size: int,
    num_processes: int = 1,
    gamma: float = 8.0,
) -> int:
    """The period M (in optimisation steps) over which the whole KL is applied once.

    ``epoch``: batches per epoch per process. ``dataset_rescaled``: the reference's
    M = floor(100 * N^(pi/gamma) / P / b), at least 1.
    """
    if kind == KLPeriod.EPOCH:
        return max(1, batches_per_epoch)
    return max(1, math.floor(100 * num_examples ** (math.pi / gamma) / num_processes / batch_size))


def kl_weight(step: int, period: int, schedule: KLSchedule) -> float:
    """Weight pi of the KL at 1-based optimisation step ``step``.

    Cyclic: k = step mod M (k = M at the end of a cycle), pi = 2^k / (2^(M+1) - 1), computed with
    exact integers and rounded once, so it underflows to exactly 0.0 when M - k exceeds ~1075
    (as in the reference). Uniform: 1/M.
    """
    if step < 1:
        raise ValueError(f"step counts from 1 (got {step})")
    if schedule == KLSchedule.UNIFORM:
        return 1.0 / period
    k = step % period or period
    return 2**k / (2 ** (period + 1) - 1)


@dataclass(frozen=True)
class KLScheduleSummary:
    """What the schedule will do over a whole run, to catch a KL that is never applied."""

    period: int
    total_steps: int
    total_weight: float  # sum of pi over the run: ~ the number of full KL applications
    max_weight: float  # the heaviest single step's pi (~1/2 at the end of a cyclic period)
    steps_with_zero_weight: int
    never_applied: bool  # every step's weight underflows to exactly 0
    period_exceeds_run: bool  # M > T: not even one full cycle, the KL is barely applied

    def warning(self) -> str | None:
        """A loud explanation when the KL term is (effectively) switched off."""
        if self.total_steps == 0:
            return None
        if self.never_applied:
            return (
                f"KL weight underflows to 0 at every one of the {self.total_steps} steps: the KL period "
                f"M = {self.period} is far longer than the run, so this is plain LoRA training with noise, "
                "not variational inference. A KL of 0 here is a schedule artefact, not posterior collapse. "
                "Lower the period (method.kl_period=epoch, a larger method.gamma) or train longer."
            )
        if self.period_exceeds_run:
            return (
                f"KL period M = {self.period} exceeds the run's {self.total_steps} steps: the KL is applied "
                f"with total weight {self.total_weight:.3g} instead of about once per period."
            )
        return None


def summarize_schedule(total_steps: int, period: int, schedule: KLSchedule) -> KLScheduleSummary:
    """Summarise pi over steps 1..total_steps (exact: one weight per step)."""
    weights = [kl_weight(step, period, schedule) for step in range(1, total_steps + 1)]
    zero_steps = sum(1 for w in weights if w == 0.0)
    return KLScheduleSummary(
        period=period,
        total_steps=total_steps,
        total_weight=float(sum(weights)),
        max_weight=max(weights, default=0.0),
        steps_with_zero_weight=zero_steps,
        never_applied=total_steps > 0 and zero_steps == total_steps,
        period_exceeds_run=period > total_steps,
    )
