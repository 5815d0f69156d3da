"""Deterministic LoRA baselines: maximum likelihood (``mle``) and MAP (``map``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import MethodConfig, TrainConfig, require
from .base import Method, register_method


@dataclass
class MleConfig(MethodConfig):
    """Plain LoRA trained on the NLL; weight decay comes from ``train.weight_decay`` (0 by default)."""

    name = "mle"


@dataclass
class MapConfig(MethodConfig):
    """LoRA with a zero-mean Gaussian prior on the adapter, as decoupled weight decay.

    The reference's MAP is AdamW weight decay 1e-5 on every LoRA parameter; a decay rate
    lambda corresponds to a Gaussian prior whose precision grows with lambda / lr.
    """

    name = "map"
    weight_decay: float = 1e-5

    def validate(self) -> None:
        require(self.weight_decay > 0, "method.weight_decay", f"must be > 0 for MAP (got {self.weight_decay})")


@register_method
class MleLora(Method):
    name = "mle"
    config_class = MleConfig


@register_method
class MapLora(Method):
    name = "map"
    config_class = MapConfig

    def weight_decay(self, train: TrainConfig) -> float:
        return self.config.weight_decay
