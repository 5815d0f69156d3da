"""The task interface: how examples become batches and batches become class logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn


class Example(Protocol):
    """What every dataset record offers to evaluation and prediction files."""

    uid: str
    dataset: str
    label: int


class Task(Protocol):
    """Multiple choice with a causal LM and sequence classification both implement this."""

    @property
    def num_classes(self) -> int: ...

    def encode(self, examples: Sequence[Any]) -> list[Any]:
        """Tokenise; each encoded item carries ``label`` and ``index`` (its dataset position)."""

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """A padded batch with ``labels`` and ``index``."""

    def class_logits(self, model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 1) -> torch.Tensor:
        """Logits [repeats * B, C] for the batch stacked ``repeats`` times (sample-major)."""

    def loss(self, class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean NLL of the labels."""
