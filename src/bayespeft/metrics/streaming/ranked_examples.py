"""Base of the streaming metrics that rank every example seen by its uncertainty (AUROC, AURAC, AURC)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..checks import FLOAT, check_correct, check_scores

__all__ = ["RankedExamples"]


class RankedExamples(Metric):
    """Keeps every example's uncertainty and one boolean (``flag_name``); gathered across processes by concatenation.

    A ranking needs all examples, so the state grows with the data. The boolean is stored
    as float64 so that every backend (gloo included) can gather it.
    """

    is_differentiable = False
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0
    flag_name = "flag"

    uncertainty: list[Tensor]
    flags: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("uncertainty", default=[], dist_reduce_fx="cat")
        self.add_state("flags", default=[], dist_reduce_fx="cat")

    def add_examples(self, uncertainty: Tensor | Sequence[float], flags: Tensor | Sequence[bool]) -> None:
        """Add a batch of scores (higher = more uncertain) with their booleans, after checking both."""
        u = check_scores(uncertainty, "uncertainty")
        self.uncertainty.append(u.to(self.device))
        self.flags.append(check_correct(flags, u.numel(), self.flag_name).to(self.device, FLOAT))

    def examples(self) -> tuple[Tensor, Tensor]:
        """(uncertainty float64, flags bool) of every example seen, on the CPU."""
        return dim_zero_cat(self.uncertainty).cpu(), dim_zero_cat(self.flags).cpu().bool()
