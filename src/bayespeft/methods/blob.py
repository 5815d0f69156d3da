"""BLoB: Bayesian LoRA by backpropagation (Wang et al., NeurIPS 2024).

Only LoRA's A factor is Bayesian: q(A) = prod N(M_ij, G_ij^2) with G = rho^2 (or softplus(rho)),
B stays deterministic and zero-initialised, the prior is N(0, beta^2) per entry. Weights are
sampled with Flipout: one noise matrix per layer and forward pass, made per-token independent
by Rademacher sign flips on the input and rank sides. ``blob_laplace`` swaps the Gaussian for
a Laplace distribution (posterior and prior) with its own closed-form KL.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from ..config import MethodConfig, TrainConfig, require
from ..enums import BlobOptimization, KLPeriod, KLSchedule, StdParameterization
from .base import (
    MeanMergeVariant,
    Method,
    Optimization,
    SamplingState,
    TrainingContext,
    block_noise,
    held_noise,
    linear_schedule,
    register_method,
    split_groups,
)
from .flipout import flipout_noise
from .kl_schedule import kl_period, kl_weight, summarize_schedule

RHO = "lora_A_rho"
KL_STABILIZER = 1e-6  # the reference's e in log(beta + e) - log(G + e) + (G^2 + M^2) / (2 beta^2 + e) - 1/2


@dataclass
class BlobConfig(MethodConfig):
    """BLoB hyperparameters (reference defaults for LLMs)."""

    name = "blob"
    eps: float = 0.05  # rho ~ U(eps / sqrt 2, eps) for G = rho^2; U(eps - 1, eps) for softplus
    beta: float = 0.2  # prior std
    gamma: float = 8.0  # sets the dataset-rescaled KL period
    kl_lr: float = 0.01  # SGD learning rate of the KL / variance step (split optimisation)
    kl_schedule: str = KLSchedule.CYCLIC.value
    kl_period: str = KLPeriod.DATASET_RESCALED.value
    optimization: str = BlobOptimization.SPLIT.value
    std_parameterization: str | None = None  # None: square if eps > 0 else softplus (as the reference)
    mean_weight_decay: float | None = None  # AdamW decay on the posterior means; None: train.weight_decay

    def validate(self) -> None:
        require_mean_weight_decay(self.mean_weight_decay)
        require(self.eps != 0, "method.eps", "must be non-zero (> 0: G = rho^2, < 0: G = softplus(rho))")
        require(self.beta > 0, "method.beta", f"must be > 0 (got {self.beta})")
        require(self.gamma > 0, "method.gamma", f"must be > 0 (got {self.gamma})")
        require(self.kl_lr > 0, "method.kl_lr", f"must be > 0 (got {self.kl_lr})")
        self.kl_schedule = KLSchedule.parse(self.kl_schedule, "method.kl_schedule").value
        self.kl_period = KLPeriod.parse(self.kl_period, "method.kl_period").value
        self.optimization = BlobOptimization.parse(self.optimization, "method.optimization").value
        if self.std_parameterization is not None:
            self.std_parameterization = StdParameterization.parse(
                self.std_parameterization, "method.std_parameterization"
            ).value
        require(
            self.parameterization != StdParameterization.SQUARE or self.eps > 0,
            "method.eps",
            f"must be > 0 when G = rho^2 (got {self.eps})",
        )

    @property
    def parameterization(self) -> StdParameterization:
        if self.std_parameterization is not None:
            return StdParameterization(self.std_parameterization)
        return StdParameterization.SQUARE if self.eps > 0 else StdParameterization.SOFTPLUS


@dataclass
class BlobLaplaceConfig(BlobConfig):
    """BLoB with Laplace(M, G) posterior entries and a Laplace(0, beta) prior."""

    name = "blob_laplace"


def require_mean_weight_decay(value: float | None) -> None:
    """``method.mean_weight_decay`` is null or >= 0."""
    require(value is None or value >= 0, "method.mean_weight_decay", f"must be >= 0 or null (got {value})")


def decay_groups(
    params: list[nn.Parameter],
    means: list[nn.Parameter],
    decay: float,
    mean_decay: float | None,
    stds: Sequence[nn.Parameter] = (),
) -> list[dict[str, Any]]:
    """AdamW parameter groups: ``params`` at ``decay``, except the posterior ``means`` at ``mean_decay`` if given;
    the posterior ``stds`` (ELBO mode, not among ``params``) at 0.

    With a KL on A already pulling its means to the prior, ``train.weight_decay`` can be meant as a Gaussian
    prior on the deterministic factor alone (B); ``mean_weight_decay = 0`` says so. A decay on rho is no prior
    at all, only a pull of the std towards 0 against the KL, so the std parameters never take one.
    """
    if mean_decay is None:
        groups = [{"params": list(params), "weight_decay": decay}]
    else:
        mean_ids = {id(p) for p in means}
        groups = [
            {"params": [p for p in params if id(p) not in mean_ids], "weight_decay": decay},
            {"params": [p for p in params if id(p) in mean_ids], "weight_decay": mean_decay},
        ]
    groups.append({"params": list(stds), "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def posterior_std(rho: torch.Tensor, parameterization: StdParameterization) -> torch.Tensor:
    """G from rho: rho^2 or softplus(rho)."""
    return rho.square() if parameterization == StdParameterization.SQUARE else nn.functional.softplus(rho)


def initial_rho(weight: torch.Tensor, cfg: BlobConfig) -> torch.Tensor:
    """rho ~ U(eps / sqrt 2, eps) for G = rho^2, U(eps - 1, eps) for softplus, in the weight's dtype."""
    square = cfg.parameterization == StdParameterization.SQUARE
    low, high = (cfg.eps / math.sqrt(2), cfg.eps) if square else (cfg.eps - 1, cfg.eps)
    rho = torch.empty_like(weight, dtype=torch.float32)
    nn.init.uniform_(rho, low, high)
    return rho.to(weight.dtype)


def gaussian_kl(mean: torch.Tensor, std: torch.Tensor, beta: float) -> torch.Tensor:
    """Sum over entries of KL(N(mean, std^2) || N(0, beta^2)), in float64 with the reference's stabiliser."""
    mean, std = mean.double(), std.double()
    e = KL_STABILIZER
    per_entry = math.log(beta + e) - torch.log(std + e) + (std.square() + mean.square()) / (2 * beta**2 + e) - 0.5
    return per_entry.sum()


def laplace_kl(mean: torch.Tensor, scale: torch.Tensor, beta: float) -> torch.Tensor:
    """Sum over entries of KL(Laplace(mean, scale) || Laplace(0, beta)), in float64.

    KL = log(beta / b) + |m| / beta + (b / beta) exp(-|m| / b) - 1.
    """
    mean, scale = mean.double(), scale.double().clamp_min(1e-30)
    abs_mean = mean.abs()
    per_entry = math.log(beta) - torch.log(scale) + abs_mean / beta + scale / beta * torch.exp(-abs_mean / scale) - 1
    return per_entry.sum()


def summed_kl(
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
    divergence: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor],
    cfg: BlobConfig,
) -> torch.Tensor:
    """The KL summed over (mean, rho) tensor pairs, as one ``divergence`` call on their concatenated entries.

    One call for the whole model instead of one per layer: a dozen small ops per layer (and as many
    in backward) were a measurable part of a training step's overhead over plain LoRA.
    """
    means = torch.cat([mean.reshape(-1) for mean, _ in pairs])
    rhos = torch.cat([rho.reshape(-1) for _, rho in pairs])
    return divergence(means, posterior_std(rhos, cfg.parameterization), cfg.beta)


def kl_step_warning(cfg: BlobConfig, max_weight: float) -> str | None:
    """Why the split KL step (SGD at ``kl_lr``) would overshoot at the schedule's heaviest step, or None.

    The Gaussian KL is quadratic in A's means, so one SGD step multiplies them by
    1 - kl_lr * pi / beta^2: at or below 0 they are zeroed or flipped in sign at the end of every
    KL period instead of being shrunk towards the prior. rho's step is stable while
    kl_lr * pi * c < 2, with c the KL's curvature in rho at its minimum (std = beta).
    """
    if max_weight <= 0:
        return None
    beta = cfg.beta
    if cfg.parameterization == StdParameterization.SQUARE:
        curvature = 8 / beta  # d2/drho2 of -log rho^2 + rho^4 / (2 beta^2) at rho^2 = beta
    else:
        slope = 1 - math.exp(-beta)  # softplus'(rho) where softplus(rho) = beta
        curvature = 2 * slope**2 / beta**2
    limit = min(beta**2 / max_weight, 2 / (max_weight * curvature))
    if cfg.kl_lr < limit:
        return None
    return (
        f"method.kl_lr = {cfg.kl_lr:g} is too large for beta = {beta:g}: at the KL schedule's heaviest step "
        f"(pi = {max_weight:.3g}) the SGD KL step multiplies A's means by "
        f"{1 - cfg.kl_lr * max_weight / beta**2:.3g} and rho's distance to its optimum by "
        f"{1 - cfg.kl_lr * max_weight * curvature:.3g}, overshooting the prior instead of shrinking towards it; "
        f"keep kl_lr below {limit:.3g} (or use method.optimization=elbo)"
    )


def laplace_from_uniform(uniform: torch.Tensor) -> torch.Tensor:
    """Unit Laplace noise from u in (-1 + eps, 1), as torch.distributions.Laplace (|u| < 1 keeps it finite)."""
    return -torch.sign(uniform) * torch.log1p(-uniform.abs())


class BlobVariant(MeanMergeVariant):
    """Flipout sampling of A on one LoRA linear layer (peft LoRA variant).

    Output: W0 x + s * B (A d(x) + n), with n = ((d(x) * R) (G * E)^T) * S, E one noise draw per
    layer and pass (per sample group), R and S per-token random signs (:func:`flipout_noise`, which
    keeps no signed copy of d(x) for backward). Merging uses the mean.
    """

    def __init__(self, state: SamplingState, parameterization: StdParameterization, laplace: bool) -> None:
        self.state = state
        self.parameterization = parameterization
        self.laplace = laplace

    def noise(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        """Standard noise E of the posterior family (unit scale)."""
        if not self.laplace:
            return torch.randn(shape, device=like.device, dtype=like.dtype)
        uniform = torch.empty(shape, device=like.device, dtype=like.dtype)
        return laplace_from_uniform(uniform.uniform_(torch.finfo(like.dtype).eps - 1, 1))

    def held_sampler(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Unit noise for one held draw, from its own generator (float32 on the CPU)."""
        if not self.laplace:
            return torch.randn(shape, generator=generator)
        uniform = torch.empty(shape).uniform_(torch.finfo(torch.float32).eps - 1, 1, generator=generator)
        return laplace_from_uniform(uniform)

    def forward(
        self, module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        lora_A, lora_B = module.lora_A[active_adapter], module.lora_B[active_adapter]
        x = module.lora_dropout[active_adapter](x)
        hidden = lora_A(x)
        if self.state.enabled and self.state.hold:
            hidden = hidden + self.held(module, active_adapter, x)
        elif self.state.enabled:
            hidden = hidden + self.flipout(module, f"A/{active_adapter}", x, module.lora_A_rho[active_adapter])
        return result + lora_B(hidden) * module.scaling[active_adapter]

    def held(self, module: LoraLayer, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """(A_g - M) x for rows of group g, with A_g one posterior draw kept for the whole block."""
        std = posterior_std(module.lora_A_rho[adapter], self.parameterization).to(x.dtype)
        unit = held_noise(self.state, module, f"A/{adapter}", tuple(std.shape), x, self.held_sampler)
        grouped = split_groups(x, self.state.groups)
        return torch.bmm(grouped, (std * unit).transpose(1, 2)).reshape(*x.shape[:-1], std.shape[0])

    def flipout(self, module: LoraLayer, tag: str, x: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        """The Flipout noise on the rank side, shape x.shape[:-1] + (r,); E is the block's draw (``tag``)."""
        groups = self.state.groups
        std = posterior_std(rho, self.parameterization).to(x.dtype)
        rank, d_in = std.shape
        unit = block_noise(self.state, module, tag, lambda: self.noise((groups, rank, d_in), std))
        return flipout_noise(x, std * unit)  # one draw per sample group, fresh signs per token


@register_method
class BlobLora(Method):
    name = "blob"
    config_class = BlobConfig
    stochastic = True
    laplace = False
    std_parameters: tuple[str, ...] = (RHO,)  # posterior std tensors: SGD (split) or AdamW (elbo)
    prior_means: tuple[str, ...] = ("lora_A.",)  # means under the prior: the split KL step moves them
    kl_step_bounded = True  # the KL is Gaussian to N(0, beta^2), so kl_step_warning's bound applies

    def after_inject(self, model: nn.Module) -> None:
        """Give every LoRA linear layer a rho tensor (shape of A) and the Flipout variant."""
        cfg = self.config
        variant = BlobVariant(self.sampling_state, cfg.parameterization, self.laplace)
        layers = [m for m in model.modules() if isinstance(m, LoraLayer) and hasattr(m, "lora_A")]
        if not layers:
            raise ValueError("no LoRA linear layers found to Bayesianize")
        for layer in layers:
            if not hasattr(layer, RHO):
                layer.lora_A_rho = nn.ParameterDict()
                layer.adapter_layer_names = (*layer.adapter_layer_names, RHO)
            for adapter, lora_A in layer.lora_A.items():
                layer.lora_A_rho[adapter] = nn.Parameter(initial_rho(lora_A.weight, cfg))
                layer.lora_variant[adapter] = variant

    def bayesian_layers(self, model: nn.Module) -> list[LoraLayer]:
        return [m for m in model.modules() if isinstance(m, LoraLayer) and hasattr(m, RHO)]

    def kl(self, model: nn.Module) -> torch.Tensor:
        pairs = [
            (layer.lora_A[adapter].weight, rho)
            for layer in self.bayesian_layers(model)
            for adapter, rho in layer.lora_A_rho.items()
        ]
        if not pairs:
            raise ValueError("model has no BLoB layers: was the method injected?")
        divergence = laplace_kl if self.laplace else gaussian_kl
        return summed_kl(pairs, divergence, self.config)

    def build_optimization(self, model: nn.Module, train: TrainConfig, context: TrainingContext) -> Optimization:
        cfg = self.config
        period = kl_period(
            KLPeriod(cfg.kl_period),
            batches_per_epoch=context.batches_per_epoch,
            num_examples=context.num_examples,
            batch_size=context.batch_size,
            num_processes=context.num_processes,
            gamma=cfg.gamma,
        )
        summary = summarize_schedule(context.total_steps, period, KLSchedule(cfg.kl_schedule))
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        is_std = [any(name in n for name in self.std_parameters) for n, _ in trainable]
        rho_params = [p for (_, p), std in zip(trainable, is_std, strict=True) if std]
        lora_params = [p for (_, p), std in zip(trainable, is_std, strict=True) if not std]
        mean_params = [p for n, p in trainable if any(name in n for name in self.prior_means)]
        info = {
            "kl_period": period,
            "kl_total_weight": summary.total_weight,
            "kl_never_applied": summary.never_applied,
            "kl_period_exceeds_run": summary.period_exceeds_run,
            "kl_schedule_warning": summary.warning(),
            "kl_step_warning": None,
        }
        adamw = torch.optim.AdamW
        if cfg.optimization == BlobOptimization.ELBO:
            groups = decay_groups(lora_params, mean_params, train.weight_decay, cfg.mean_weight_decay, rho_params)
            optimizer = adamw(groups, lr=train.lr, eps=train.adam_eps)
            optimizers = {"main": optimizer}
        else:
            groups = decay_groups(lora_params, mean_params, train.weight_decay, cfg.mean_weight_decay)
            optimizer = adamw(groups, lr=train.lr, eps=train.adam_eps)
            kl_optimizer = torch.optim.SGD(mean_params + rho_params, lr=cfg.kl_lr)
            if self.kl_step_bounded:
                info["kl_step_warning"] = kl_step_warning(cfg, summary.max_weight)
            optimizers = {"main": optimizer, "kl": kl_optimizer}
        schedulers = {k: linear_schedule(o, context.total_steps, train.warmup_ratio) for k, o in optimizers.items()}
        return BlobOptimizationRule(
            optimizers,
            schedulers,
            train.max_grad_norm,
            info=info,
            method=self,
            model=model,
            period=period,
            schedule=KLSchedule(cfg.kl_schedule),
        )


@register_method
class BlobLaplaceLora(BlobLora):
    name = "blob_laplace"
    config_class = BlobLaplaceConfig
    laplace = True
    kl_step_bounded = False  # kl_step_warning's bound is derived for the Gaussian KL


class BlobOptimizationRule(Optimization):
    """BLoB's update: NLL step (AdamW), then pi * KL (SGD on A and rho, or jointly in ELBO mode)."""

    def __init__(self, *args: Any, method: BlobLora, model: nn.Module, period: int, schedule: KLSchedule, **kw: Any):
        super().__init__(*args, **kw)
        self.method, self.model, self.period, self.schedule = method, model, period, schedule

    def step(self, nll: torch.Tensor, backward) -> dict[str, float]:
        self.step_count += 1
        pi = kl_weight(self.step_count, self.period, self.schedule)
        main = self.optimizers["main"]
        if "kl" not in self.optimizers:  # single-optimiser ELBO
            kl = self.method.kl(self.model)
            backward(nll + pi * kl.to(nll.dtype))
            self._clip(main)
            main.step()
            main.zero_grad(set_to_none=True)
        else:  # reference split: NLL step first, then the KL of the updated posterior
            backward(nll)
            self._clip(main)
            main.step()
            main.zero_grad(set_to_none=True)  # A now gets only the KL gradient; rho keeps its NLL one
            kl = self.method.kl(self.model)
            kl_opt = self.optimizers["kl"]
            _accumulate_gradients(pi * kl, [p for group in kl_opt.param_groups for p in group["params"]])
            kl_opt.step()
            kl_opt.zero_grad(set_to_none=True)
        for scheduler in self.schedulers.values():
            scheduler.step()
        kl_value = float(kl.detach())
        nll_value = float(nll.detach())
        return {
            "nll": nll_value,
            "kl": kl_value,
            "weighted_kl": pi * kl_value,
            "neg_elbo": nll_value + pi * kl_value,
            "pi": pi,
            "lr": main.param_groups[0]["lr"],
        }


def _accumulate_gradients(loss: torch.Tensor, params: list[torch.Tensor]) -> None:
    """Add d loss / d params to ``.grad`` without firing DDP's gradient hooks.

    The KL is computed identically on every process, so it needs no all-reduce; going through
    autograd.grad keeps a second backward pass out of DistributedDataParallel's reducer.
    """
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for param, grad in zip(params, grads, strict=True):
        if grad is not None:
            grad = grad.to(param.dtype)
            param.grad = grad if param.grad is None else param.grad + grad
