"""MC dropout on LoRA (Gal & Ghahramani, 2016, applied to the adapter's input dropout).

Training is plain maximum likelihood with peft's LoRA dropout active. At inference, sampling
keeps that dropout on even in eval mode, so every forward pass is one Monte-Carlo sample;
with sampling off the dropout is off too, which is the usual deterministic (mean) prediction.

Held draws (generation) need one *weight* sample per sequence instead of fresh masks per token
and pass. Dropping an input unit of the LoRA branch for every token is dropping that column of
A (Gal & Ghahramani's weight-space view), so a held draw is one Bernoulli mask over the LoRA input
features per sample group, kept for the whole block and seeded like every held draw.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn

from ..config import LoraSettings, MethodConfig, require
from .base import MeanMergeVariant, Method, SamplingState, held_noise, register_method, split_groups


@dataclass
class McDropoutConfig(MethodConfig):
    """The LoRA dropout rate p; it replaces ``model.lora.dropout`` for this method."""

    name = "mcdropout"
    dropout: float = 0.1

    def validate(self) -> None:
        require(0 < self.dropout < 1, "method.dropout", f"must be in (0, 1) (got {self.dropout})")


class HeldDropoutVariant(MeanMergeVariant):
    """Plain LoRA whose input dropout becomes one fixed mask per sample group in held mode (peft LoRA variant).

    Outside held blocks the layer runs peft's own dropout module, exactly as vanilla LoRA; merging
    folds in the (mean) delta B A as vanilla LoRA does.
    """

    def __init__(self, state: SamplingState) -> None:
        self.state = state

    def forward(
        self, module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        dropout = module.lora_dropout[active_adapter]
        if self.state.enabled and self.state.hold:
            x = self.held_mask(module, active_adapter, dropout.p, x)
        else:
            x = dropout(x)
        lora_B, lora_A = module.lora_B[active_adapter], module.lora_A[active_adapter]
        return result + lora_B(lora_A(x)) * module.scaling[active_adapter]

    def held_mask(self, module: LoraLayer, adapter: str, rate: float, x: torch.Tensor) -> torch.Tensor:
        """x with the same input units dropped (and the rest scaled by 1 / (1 - p)) on every row of a group."""
        keep = 1.0 - rate

        def bernoulli(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
            return torch.bernoulli(torch.full(shape, keep), generator=generator) / keep

        mask = held_noise(self.state, module, f"mask/{adapter}", (x.shape[-1],), x, bernoulli)
        grouped = split_groups(x, self.state.groups)
        return (grouped * mask.unsqueeze(1)).reshape(x.shape)


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
        """Remember the LoRA dropout modules that :meth:`sampling` switches on and off; install held masks."""
        layers = [layer for layer in model.modules() if isinstance(layer, LoraLayer)]
        self.dropouts = [
            dropout for layer in layers for dropout in layer.lora_dropout.values() if isinstance(dropout, nn.Dropout)
        ]
        if not self.dropouts:
            raise ValueError("no LoRA dropout modules found for MC dropout")
        variant = HeldDropoutVariant(self.sampling_state)
        for layer in layers:
            for adapter in layer.lora_A:
                layer.lora_variant[adapter] = variant

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
