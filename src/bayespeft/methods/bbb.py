"""Bayes-by-backprop on both LoRA factors: the BBB baseline of the BLoB paper.

Unlike BLoB, B is Bayesian too: q(A) q(B) mean-field Gaussian, prior N(0, beta^2) on every
entry of both. B's mean keeps LoRA's zero init and its rho is initialised as A's (from eps),
so the initial model is close to the backbone with only small noise (B's std is ~eps^2 under
G = rho^2). Training defaults to BLoB's split rule, so the two methods differ only in the
posterior on B; in split mode the KL step moves both means and both rhos. Held draws (generation)
fix both factors: one draw of A and one of B per sample group for the whole block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from .base import held_noise, register_method, split_groups
from .blob import RHO, BlobConfig, BlobLora, BlobVariant, gaussian_kl, initial_rho, posterior_std, summed_kl

RHO_B = "lora_B_rho"


@dataclass
class BbbConfig(BlobConfig):
    """BLoB's hyperparameters; eps now also sets the initial std of B."""

    name = "bbb"


class BbbVariant(BlobVariant):
    """Flipout on both factors: W0 x + s (B + dB)(A + dA) d(x).

    h = A d(x) + Flipout_A(d(x)) exactly as BLoB, then B h + Flipout_B(h): one noise matrix E_B
    per layer and pass (per sample group), per-token signs on the rank and output sides. Held
    draws replace both Flipout terms by fixed draws (A_g - M_A) d(x) and (B_g - M_B) h.
    """

    def forward(
        self, module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        lora_A, lora_B = module.lora_A[active_adapter], module.lora_B[active_adapter]
        held = self.state.enabled and self.state.hold
        x = module.lora_dropout[active_adapter](x)
        hidden = lora_A(x)
        if held:
            hidden = hidden + self.held(module, active_adapter, x)
        elif self.state.enabled:
            hidden = hidden + self.flipout(module, f"A/{active_adapter}", x, module.lora_A_rho[active_adapter])
        out = lora_B(hidden)
        if held:
            out = out + self.held_B(module, active_adapter, hidden)
        elif self.state.enabled:
            out = out + self.flipout(module, f"B/{active_adapter}", hidden, module.lora_B_rho[active_adapter])
        return result + out * module.scaling[active_adapter]

    def held_B(self, module: LoraLayer, adapter: str, hidden: torch.Tensor) -> torch.Tensor:
        """(B_g - M_B) h for rows of group g, with B_g one posterior draw kept for the whole block."""
        std = posterior_std(module.lora_B_rho[adapter], self.parameterization).to(hidden.dtype)
        unit = held_noise(self.state, module, f"B/{adapter}", tuple(std.shape), hidden, self.held_sampler)
        grouped = split_groups(hidden, self.state.groups)
        return torch.bmm(grouped, (std * unit).transpose(1, 2)).reshape(*hidden.shape[:-1], std.shape[0])


@register_method
class BbbLora(BlobLora):
    name = "bbb"
    config_class = BbbConfig
    std_parameters = (RHO, RHO_B)
    prior_means = ("lora_A.", "lora_B.")

    def after_inject(self, model: nn.Module) -> None:
        """BLoB's A-side state, plus a rho for B (shape of B, same init) and the two-factor variant."""
        super().after_inject(model)
        cfg = self.config
        variant = BbbVariant(self.sampling_state, cfg.parameterization, laplace=False)
        for layer in self.bayesian_layers(model):
            if not hasattr(layer, RHO_B):
                layer.lora_B_rho = nn.ParameterDict()
                layer.adapter_layer_names = (*layer.adapter_layer_names, RHO_B)
            for adapter, lora_B in layer.lora_B.items():
                layer.lora_B_rho[adapter] = nn.Parameter(initial_rho(lora_B.weight, cfg))
                layer.lora_variant[adapter] = variant

    def kl(self, model: nn.Module) -> torch.Tensor:
        """KL of A (as BLoB) plus the Gaussian KL of every B entry."""
        pairs = [
            (layer.lora_B[adapter].weight, rho)
            for layer in self.bayesian_layers(model)
            for adapter, rho in layer.lora_B_rho.items()
        ]
        return super().kl(model) + summed_kl(pairs, gaussian_kl, self.config)
