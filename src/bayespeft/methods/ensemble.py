"""Deep ensemble of LoRA adapters: K independently initialised members, probabilities averaged.

Member 0 is peft's ordinary adapter (``lora_A`` / ``lora_B``); members 1..K-1 live in two extra
tensors per LoRA layer, ``lora_A_members`` [K-1, r, in] and ``lora_B_members`` [K-1, out, r],
each initialised like peft (A Kaiming-uniform, B zero), so one peft folder holds the ensemble.

Training stacks every batch K times (``train_groups = size``) and rows of group g use member g,
so one forward pass trains all members, each on its own NLL term. The loop averages the K terms,
so each member's gradient is 1/K of what training it alone would give; AdamW is invariant to a
constant gradient scale (up to eps), so this matches K separate runs with one AdamW each (its
state is per element anyway, hence one optimiser over all members is the same thing).

Evaluation draws are the members, not samples: ``num_draws(N) = K`` for any N > 0, and stacked
group g of a pass with ``offset`` o uses member o + g, so draws split over passes visit every
member once. With sampling off (N = 0) the layer uses the *mean weight* W0 + 1/K sum_k B_k A_k,
which is not the ensemble's prediction (that averages probabilities); merging folds the same
mean delta into the base weight.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora.layer import LoraLayer
from peft.utils.other import transpose
from torch import nn

from ..config import MethodConfig, require
from ..errors import ConfigError
from .base import MeanMergeVariant, Method, SamplingState, register_method, untie_adapted_embeddings, unwrap_peft

MEMBERS_A = "lora_A_members"  # names contain "lora_" so peft saves and loads them
MEMBERS_B = "lora_B_members"


@dataclass
class EnsembleConfig(MethodConfig):
    """The number of ensemble members K (each a full LoRA adapter of the configured rank)."""

    name = "ensemble"
    size: int = 3

    def validate(self) -> None:
        ok = isinstance(self.size, int) and not isinstance(self.size, bool) and self.size >= 2
        require(ok, "method.size", f"must be an integer >= 2 (got {self.size!r})")


def member_weights(module: LoraLayer, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All members' factors stacked: A [K, r, in] and B [K, out, r] (member 0 is peft's adapter)."""
    a0, b0 = module.lora_A[adapter].weight, module.lora_B[adapter].weight
    a = torch.cat([a0.unsqueeze(0), getattr(module, MEMBERS_A)[adapter].to(a0.dtype)])
    b = torch.cat([b0.unsqueeze(0), getattr(module, MEMBERS_B)[adapter].to(b0.dtype)])
    return a, b


def mean_delta_weight(module: LoraLayer, adapter: str) -> torch.Tensor:
    """scaling * 1/K sum_k B_k A_k, in the base weight's layout (a rank-K*r product)."""
    a, b = member_weights(module, adapter)
    size, rank, d_in = a.shape
    a_cat = a.reshape(size * rank, d_in).float()
    b_cat = b.permute(1, 0, 2).reshape(-1, size * rank).float()
    delta = b_cat @ a_cat * (module.scaling[adapter] / size)
    return transpose(delta, module.fan_in_fan_out)


class EnsembleVariant(MeanMergeVariant):
    """Per-group member selection on one LoRA linear layer (peft LoRA variant).

    Sampling on: the batch holds ``groups`` stacked copies and copy g uses member ``offset + g``.
    Sampling off: the mean delta 1/K sum_k B_k A_k x, computed as one rank-K*r LoRA product.
    Held draws (generation) need nothing more: member ``offset + g`` is the same in every pass of a
    block, and the seed plays no part (the draws are the members, not random samples).
    """

    def __init__(self, state: SamplingState, size: int) -> None:
        self.state = state
        self.size = size

    def supports_lora_conversion(self) -> bool:
        return False  # member 0 alone is not the adapter

    mean_delta = staticmethod(mean_delta_weight)

    def forward(
        self, module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        x = module.lora_dropout[active_adapter](x)
        a, b = member_weights(module, active_adapter)
        scaling = module.scaling[active_adapter]
        if not self.state.enabled:
            size, rank, d_in = a.shape
            hidden = x @ a.reshape(size * rank, d_in).T
            delta = hidden @ b.permute(1, 0, 2).reshape(-1, size * rank).T
            return result + delta * (scaling / size)
        groups, offset = self.state.groups, self.state.offset
        if offset < 0 or offset + groups > self.size:
            raise ValueError(f"draws {offset}..{offset + groups - 1} do not name members of an ensemble of {self.size}")
        if x.shape[0] % groups:
            raise ValueError(f"batch of {x.shape[0]} rows cannot hold {groups} stacked ensemble members")
        stacked = x.reshape(groups, -1, x.shape[-1])  # sample-major: group g is a contiguous block of rows
        a, b = a[offset : offset + groups], b[offset : offset + groups]
        delta = torch.bmm(torch.bmm(stacked, a.transpose(1, 2)), b.transpose(1, 2))
        return result + delta.reshape(*x.shape[:-1], -1) * scaling


@register_method
class EnsembleLora(Method):
    """K LoRA adapters trained side by side in one model; the members are the predictive draws."""

    name = "ensemble"
    config_class = EnsembleConfig
    stochastic = True

    def __init__(self, config: EnsembleConfig | None = None) -> None:
        super().__init__(config)
        self.train_groups = self.config.size  # every member sees every batch

    def after_inject(self, model: nn.Module) -> None:
        """Give every LoRA linear layer K-1 extra members (peft-style init) and the ensemble variant."""
        size = self.config.size
        variant = EnsembleVariant(self.sampling_state, size)
        layers = [m for m in model.modules() if isinstance(m, LoraLayer) and len(m.lora_A) > 0]
        if not layers:
            raise ValueError("no LoRA linear layers found to build an ensemble on")
        for layer in layers:
            if not hasattr(layer, MEMBERS_A):
                layer.lora_A_members = nn.ParameterDict()
                layer.lora_B_members = nn.ParameterDict()
                layer.adapter_layer_names = (*layer.adapter_layer_names, MEMBERS_A, MEMBERS_B)
            for adapter, lora_A in layer.lora_A.items():
                if not isinstance(lora_A, nn.Linear) or layer.lora_bias[adapter]:
                    raise ValueError(f"ensemble supports LoRA on linear layers without lora_bias ({type(layer)})")
                weight_a, weight_b = lora_A.weight, layer.lora_B[adapter].weight
                extra_a = torch.empty((size - 1, *weight_a.shape), device=weight_a.device, dtype=weight_a.dtype)
                for member in extra_a:  # per member: fan_in = in, bound 1/sqrt(in), as peft's lora_A
                    nn.init.kaiming_uniform_(member, a=math.sqrt(5))
                extra_b = torch.zeros((size - 1, *weight_b.shape), device=weight_b.device, dtype=weight_b.dtype)
                layer.lora_A_members[adapter] = nn.Parameter(extra_a)
                layer.lora_B_members[adapter] = nn.Parameter(extra_b)
                layer.lora_variant[adapter] = variant

    def num_draws(self, n_samples: int) -> int:
        """K draws (one per member) whenever N > 0, whatever N is; 1 (the mean weight) for N = 0."""
        return self.config.size if n_samples > 0 else 1

    def save_adapter(self, model: PeftModel, directory: str | Path, mean_only: bool = False) -> Path:
        """One peft folder with every member; ``mean_only`` is refused.

        A plain peft LoRA of rank r cannot hold the ensemble's mean weight (a rank-K*r delta), and
        writing member 0 alone would silently pass one member off as the ensemble. Use
        :meth:`merge` for a single deterministic model with the mean weight.
        """
        if mean_only:
            raise ConfigError(
                "mean_only: an ensemble has no rank-r mean adapter (member 0 alone is not the ensemble); "
                "save all members, or merge the mean weight into the backbone instead"
            )
        return super().save_adapter(model, directory, mean_only=False)

    def merge(self, model: PeftModel) -> nn.Module:
        """Fold the mean weight W0 + 1/K sum_k B_k A_k into the backbone (the members' diversity is lost)."""
        warnings.warn(
            f"merging the {self.config.size}-member ensemble keeps only the members' mean weight: the ensemble's "
            "predictive diversity is lost and the merged model is a single deterministic network",
            UserWarning,
            stacklevel=2,
        )
        peft_model = unwrap_peft(model)
        untie_adapted_embeddings(peft_model)
        return peft_model.merge_and_unload()


__all__ = ["EnsembleConfig", "EnsembleLora", "EnsembleVariant", "mean_delta_weight", "member_weights"]
