"""MC dropout on LoRA (Gal & Ghahramani, 2016, applied to the adapter's input dropout).

Training is plain maximum likelihood with peft's LoRA dropout active. At inference, sampling
keeps that dropout on even in eval mode, so every forward pass is one Monte-Carlo sample;
with sampling off the dropout is off too, which is the usual deterministic (mean) prediction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn

from ..config import LoraSettings, MethodConfig, _require
from .base import Method, register_method


@dataclass
class McDropoutConfig(MethodConfig):
    """The LoRA dropout rate p; it replaces ``model.lora.dropout`` for this method."""

    name = "mcdropout"
    dropout: float = 0.1

    def validate(self) -> None:
        _require(0 < self.dropout < 1, "method.dropout", f"must be in (0, 1) (got {self.dropout})")


@register_method
class McDropoutLora(Method):
    """Each stochastic pass draws new dropout masks on the LoRA inputs (independent per row).

    Outside a :meth:`sampling` block the dropout modules follow ``model.train()`` / ``model.eval()``.
    """

    name = "mcdropout"
    config_class = McDropoutConfig
    stochastic = True

    def __init__(self, config: McDropoutConfig | None = None) -> None:
        super().__init__(config)
        self.dropouts: list[nn.Dropout] = []

    def lora_config(self, lora: LoraSettings, target_modules: list[str], task_type: str | None) -> LoraConfig:
        return super().lora_config(replace(lora, dropout=self.config.dropout), target_modules, task_type)

    def after_inject(self, model: PeftModel) -> None:
        """Remember the LoRA dropout modules that :meth:`sampling` switches on and off."""
        self.dropouts = [
            dropout
            for layer in model.modules()
            if isinstance(layer, LoraLayer)
            for dropout in layer.lora_dropout.values()
            if isinstance(dropout, nn.Dropout)
        ]
        if not self.dropouts:
            raise ValueError("no LoRA dropout modules found for MC dropout")

    @contextlib.contextmanager
    def sampling(
        self, enabled: bool = True, seed: int | None = None, groups: int = 1, offset: int = 0, hold: bool = False
    ) -> Iterator[None]:
        """Force the LoRA dropout on (``enabled``: one MC sample per pass) or off, within the block.

        Their previous train/eval flags come back afterwards, so blocks nest.
        """
        previous = [dropout.training for dropout in self.dropouts]
        try:
            for dropout in self.dropouts:
                dropout.train(enabled)
            with super().sampling(enabled, seed, groups, offset, hold):
                yield
        finally:
            for dropout, training in zip(self.dropouts, previous, strict=True):
                dropout.train(training)
