"""Weight noise: zero-shot Bayesian evaluation by perturbing a model's weights, no fine-tuning.

Every targeted linear layer gets W = W0 + s B A + Sigma * E with E unit-std Gaussian or Laplace
noise of the full weight's shape [out, in], drawn per layer and forward pass (per sample group).
The mean model is the pretrained one (B = 0) or, with ``source_adapter``, a trained LoRA's. N
weight samples then show the model's sensitivity to its weights before any training is done;
there is no posterior fit and no KL term, so the method refuses training steps.

Sigma is ``sigma`` (``relative=False``: an absolute std) or ``sigma`` times the RMS of the
weight's output row (``relative=True``): sigma is then a fraction of each row's typical entry,
so one value fits layers of very different scales. The row RMS is computed on the fly from the
current W0 + s B A (it is not stored, so it can neither be saved as adapter state nor go stale
when an adapter is loaded after injection).

Sampling uses Flipout as BLoB does, here on the full weight: n = ((x * R) (Sigma * E)^T) * S, R
and S per-token random signs on the input and the output. Held draws (generation) use no signs:
n = x (Sigma * E_g)^T with E_g one seeded draw per sample group, fixed for the whole block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from ..config import LoraSettings, MethodConfig, TrainConfig, require
from ..enums import StrEnum
from ..errors import ConfigError
from .base import (
    Method,
    Optimization,
    SamplingState,
    TrainingContext,
    block_noise,
    held_noise,
    register_method,
    split_groups,
)
from .blob import BlobVariant
from .flipout import flipout_noise
from .source import check_source_shape, load_source_lora, source_folder

LAPLACE_STD = math.sqrt(2.0)  # std of a unit-scale Laplace(0, 1)


class NoiseDistribution(StrEnum):
    """The family of the weight noise; either way ``sigma`` is its standard deviation."""

    GAUSSIAN = "gaussian"
    LAPLACE = "laplace"


@dataclass
class WeightNoiseConfig(MethodConfig):
    """Noise scale and family, relative or absolute scaling, and an optional trained adapter as the mean."""

    name = "noise"
    sigma: float = 0.01  # noise std: absolute, or a fraction of each weight row's RMS (relative)
    distribution: str = NoiseDistribution.GAUSSIAN.value
    relative: bool = True  # scale the noise of each output row by that row's RMS of W0 + s B A
    source_adapter: str | None = None  # adapter/ folder of a trained LoRA run: its weights are the mean

    def validate(self) -> None:
        require(self.sigma > 0, "method.sigma", f"must be > 0 (got {self.sigma})")
        self.distribution = NoiseDistribution.parse(self.distribution, "method.distribution").value


def row_rms(module: LoraLayer, adapter: str) -> torch.Tensor:
    """RMS of each output row of the layer's current weight W0 + s B A, shape [out], in fp32."""
    with torch.no_grad():
        weight = module.get_base_layer().weight.float() + module.get_delta_weight(adapter).float()
        if getattr(module, "fan_in_fan_out", False):
            weight = weight.T
        return weight.square().mean(dim=1).sqrt()


class WeightNoiseVariant(BlobVariant):
    """Plain LoRA plus Flipout noise on the full weight of one linear layer (peft LoRA variant).

    Output: W0 x + s B A x + n with n = ((x * R) E^T) * S * Sigma_row, E [out, in] one unit-std
    draw per layer and pass (per sample group). Sigma is constant along a row, so it is applied
    to the output instead of to E. Merging (inherited) keeps the mean W0 + s B A.
    """

    def __init__(self, state: SamplingState, sigma: float, laplace: bool, relative: bool) -> None:
        self.state = state
        self.sigma = sigma
        self.laplace = laplace
        self.relative = relative

    def forward(
        self, module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        lora_A, lora_B = module.lora_A[active_adapter], module.lora_B[active_adapter]
        result = result + lora_B(lora_A(module.lora_dropout[active_adapter](x))) * module.scaling[active_adapter]
        if self.state.enabled and self.state.hold:
            result = result + self.held_full(module, active_adapter, x).to(result.dtype)
        elif self.state.enabled:
            result = result + self.flipout_full(module, active_adapter, x).to(result.dtype)
        return result

    def row_scale(self, module: LoraLayer, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """Sigma per output row (relative) or one absolute Sigma, as the std of unit-scale noise E."""
        std = self.sigma / LAPLACE_STD if self.laplace else self.sigma  # unit-scale Laplace has std sqrt 2
        if self.relative:
            return (std * row_rms(module, adapter)).to(x.dtype)
        return torch.tensor(std, dtype=x.dtype, device=x.device)

    def flipout_full(self, module: LoraLayer, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """The weight noise's contribution to the output, shape x.shape[:-1] + (out,)."""
        groups = self.state.groups
        d_out, d_in = module.out_features, module.in_features
        noise = block_noise(self.state, module, f"W/{adapter}", lambda: self.noise((groups, d_out, d_in), x))
        return flipout_noise(x, noise, "weight samples") * self.row_scale(module, adapter, x)

    def held_full(self, module: LoraLayer, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """x (Sigma * E_g)^T for rows of group g, E_g one unit draw of the full weight kept for the whole block."""
        d_out, d_in = module.out_features, module.in_features
        unit = held_noise(self.state, module, f"W/{adapter}", (d_out, d_in), x, self.held_sampler)
        grouped = split_groups(x, self.state.groups, "stacked weight samples")
        out = torch.bmm(grouped, unit.transpose(1, 2)).reshape(*x.shape[:-1], d_out)
        return out * self.row_scale(module, adapter, x)


@register_method
class WeightNoise(Method):
    """Gaussian or Laplace weight noise around a pretrained model (or a trained adapter), no training."""

    name = "noise"
    config_class = WeightNoiseConfig
    stochastic = True

    def inject(
        self, model: nn.Module, lora: LoraSettings, target_modules: list[str], task_type: str | None = None
    ) -> PeftModel:
        """LoRA as usual (B = 0: the mean is the pretrained model), then the source adapter if given."""
        folder = None
        if self.config.source_adapter:
            folder = source_folder(self.config.source_adapter)
            check_source_shape(folder, lora, target_modules, self.name)
        peft_model = super().inject(model, lora, target_modules, task_type)
        if folder is not None:
            load_source_lora(self, peft_model, folder)
        return peft_model

    def after_inject(self, model: nn.Module) -> None:
        """Give every LoRA linear layer the weight-noise variant."""
        cfg = self.config
        laplace = cfg.distribution == NoiseDistribution.LAPLACE
        variant = WeightNoiseVariant(self.sampling_state, cfg.sigma, laplace, cfg.relative)
        layers = [m for m in model.modules() if isinstance(m, LoraLayer) and hasattr(m, "lora_A")]
        if not any(layer.lora_A for layer in layers):
            raise ValueError("no LoRA linear layers found to perturb")
        for layer in layers:
            for adapter in layer.lora_A:
                layer.lora_variant[adapter] = variant

    def build_optimization(self, model: nn.Module, train: TrainConfig, context: TrainingContext) -> Optimization:
        """No optimiser: weight noise only evaluates (train.max_steps = 0)."""
        if context.total_steps > 0:
            raise ConfigError(
                f"train.max_steps must be 0 for noise: it evaluates without fine-tuning (got {context.total_steps})"
            )
        return Optimization({}, {})


__all__ = ["NoiseDistribution", "WeightNoise", "WeightNoiseConfig", "WeightNoiseVariant"]
