"""TFB: training-free Bayesianization of a trained LoRA (Shi et al.).

A trained adapter (mle, map or blob) is loaded, each layer is rewritten by an SVD of B so that
B' = U diag(d) has orthogonal columns and A' = V^T A (the product B'A' = BA is unchanged), and A'
gets a BLoB posterior with std Omega_ij = sigma / (d_i + 1e-6): the noise B' dA' = sigma U E is
isotropic with scale sigma in the column space of B (before LoRA's alpha / r scaling). The one
free number sigma is the largest value whose predictions on an anchor subset of the training set
stay within a tolerance of the deterministic ones, found by binary search. Sampling is BLoB's
Flipout forward (and BLoB's held draws for generation), and the saved adapter is a BLoB adapter
(B', A', rho) with sigma recorded in the method file.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig, require
from ..enums import StdParameterization
from ..errors import ConfigError
from .base import Optimization, TrainingContext, register_method
from .blob import BlobConfig, BlobLora
from .source import FromSourceAdapter

SINGULAR_FLOOR = 1e-6  # the reference's guard in Omega = sigma / (d + 1e-6)
LOG_FLOOR = 1e-12  # the reference's log(p + 1e-12) in the NLL criterion
CRITERIA = ("nll", "flip")
WIDTH_RESOLUTION = 5e-4  # the search stops once high - low < 5e-4 * sigma_max


@dataclass
class TfbConfig(BlobConfig):
    """Source adapter, the sigma search (bounds, criterion, anchor set) or a fixed sigma."""

    name = "tfb"
    source_adapter: str | None = None  # the adapter/ folder of a trained mle, map or blob run
    sigma_max: float = 0.015
    sigma_min: float = 0.001
    search_iterations: int = 10
    criterion: str = "nll"  # nll: relative NLL change vs sigma = 0; flip: fraction of changed argmaxes
    tolerance: float = 0.003  # 0.01 is typical for flip
    anchor_size: int = 500
    anchor_seed: int = 42
    search_samples: int = 10
    sigma: float | None = None  # set: skip the search (the reference's OOD scripts); after a search: its result

    def validate(self) -> None:
        super().validate()
        require(
            bool(self.source_adapter),
            "method.source_adapter:",
            "TFB needs a trained adapter (the adapter/ folder of an mle, map or blob run)",
        )
        require(self.sigma is None or self.sigma > 0, "method.sigma", f"must be > 0 or null (got {self.sigma})")
        require(self.sigma_min > 0, "method.sigma_min", f"must be > 0 (got {self.sigma_min})")
        require(
            self.sigma_max > self.sigma_min,
            "method.sigma_max",
            f"must be > method.sigma_min (got {self.sigma_max} <= {self.sigma_min})",
        )
        require(self.search_iterations >= 1, "method.search_iterations", f"must be >= 1 (got {self.search_iterations})")
        self.criterion = str(self.criterion).lower()
        require(self.criterion in CRITERIA, "method.criterion", f"must be one of {CRITERIA} (got {self.criterion!r})")
        require(self.tolerance > 0, "method.tolerance", f"must be > 0 (got {self.tolerance})")
        require(self.anchor_size >= 1, "method.anchor_size", f"must be >= 1 (got {self.anchor_size})")
        require(self.search_samples >= 1, "method.search_samples", f"must be >= 1 (got {self.search_samples})")


def search_sigma(
    metric_fn: Callable[[float], float],
    low: float,
    high: float,
    tolerance: float,
    iterations: int,
    min_width: float = 0.0,
) -> tuple[float, list[tuple[float, float]]]:
    """Bisect [low, high] for the largest sigma whose metric stays within ``tolerance``.

    The metric is assumed to grow with sigma. Each step tests mid: above tolerance moves high
    down to it, otherwise low moves up. Stops after ``iterations`` tests or once the bracket is
    narrower than ``min_width``. Returns the final ``low`` (the largest accepted value, or the
    lower bound if none was accepted) and the trace of (sigma, metric). The reference returns
    the smallest rejected value instead, which overshoots the tolerance by construction.
    """
    trace: list[tuple[float, float]] = []
    for _ in range(iterations):
        if high - low < min_width:
            break
        mid = (low + high) / 2
        value = float(metric_fn(mid))
        trace.append((mid, value))
        if value > tolerance:
            high = mid
        else:
            low = mid
    return low, trace


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """rho with softplus(rho) = x, stable for small x: x + log(1 - exp(-x))."""
    return x + torch.log(-torch.expm1(-x))


def reparameterize(lora_A: torch.Tensor, lora_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A', B') = (V^T A, U diag(d)) from the SVD B = U diag(d) V^T, in fp32, so that B'A' = BA.

    A layer with fewer outputs than the rank (e.g. a 2-class head with r = 8) has a square r x r
    V^T (full SVD) and B' = [U diag(d), 0]: the rows of A' that meet B's zero columns carry noise that
    never reaches the output.
    """
    out_features, rank = lora_B.shape
    if out_features >= rank:
        u, d, vh = torch.linalg.svd(lora_B.float(), full_matrices=False)
        return vh @ lora_A.float(), u * d
    u, d, vh = torch.linalg.svd(lora_B.float(), full_matrices=True)  # u [out, out], vh [r, r]
    new_B = torch.zeros(out_features, rank, dtype=torch.float32, device=lora_B.device)
    new_B[:, :out_features] = u * d
    return vh @ lora_A.float(), new_B


def row_std(lora_B: torch.Tensor, sigma: float, d_in: int) -> torch.Tensor:
    """Omega [r, d_in]: sigma / (d_i + 1e-6), with d_i the column norms of B' = U diag(d)."""
    d = torch.linalg.vector_norm(lora_B.float(), dim=0)
    return (sigma / (d + SINGULAR_FLOOR)).unsqueeze(1).expand(-1, d_in)


def relative_nll_change(reference: torch.Tensor, sampled: torch.Tensor) -> float:
    """|NLL - NLL_0| / NLL_0 against the sigma = 0 argmax (pseudo-labels), per-sample probs [N, S, C].

    Unlike the reference there is no further division by the anchor count, which made the
    threshold depend on the anchor size.
    """
    ref_probs, probs = reference.mean(dim=1), sampled.mean(dim=1)
    labels = ref_probs.argmax(dim=-1, keepdim=True)
    nll_0 = -torch.log(ref_probs.gather(-1, labels) + LOG_FLOOR).mean()
    nll = -torch.log(probs.gather(-1, labels) + LOG_FLOOR).mean()
    return float((nll - nll_0).abs() / nll_0.clamp_min(LOG_FLOOR))


def flip_fraction(reference: torch.Tensor, sampled: torch.Tensor) -> float:
    """Fraction of examples whose mean-prediction argmax differs from the sigma = 0 one."""
    return float((reference.mean(dim=1).argmax(-1) != sampled.mean(dim=1).argmax(-1)).float().mean())


@register_method
class TfbLora(FromSourceAdapter, BlobLora):
    """BLoB's posterior on a trained LoRA, its scale fitted post hoc instead of trained."""

    name = "tfb"
    config_class = TfbConfig

    def build_optimization(self, model: nn.Module, train: TrainConfig, context: TrainingContext) -> Optimization:
        """No optimiser: TFB only runs with train.max_steps = 0."""
        if context.total_steps > 0:
            raise ConfigError(f"train.max_steps must be 0 for tfb: it is training-free (got {context.total_steps})")
        return Optimization({}, {})

    # ---- the post-hoc fit -------------------------------------------------------------------------
    @torch.no_grad()
    def reparameterize_layers(self, model: nn.Module) -> None:
        """Rewrite every LoRA layer as B' = U diag(d), A' = V^T A (B'A' = BA)."""
        for layer in self.bayesian_layers(model):
            for adapter in layer.lora_A_rho:
                weight_A, weight_B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
                new_A, new_B = reparameterize(weight_A, weight_B)
                weight_A.copy_(new_A.to(weight_A.dtype))
                weight_B.copy_(new_B.to(weight_B.dtype))

    @torch.no_grad()
    def set_sigma(self, model: nn.Module, sigma: float) -> None:
        """Set rho so that G = Omega = sigma / (d_i + 1e-6) on every row i of every A'."""
        square = self.config.parameterization == StdParameterization.SQUARE
        for layer in self.bayesian_layers(model):
            for adapter, rho in layer.lora_A_rho.items():
                omega = row_std(layer.lora_B[adapter].weight, sigma, rho.shape[1])
                rho.copy_((omega.sqrt() if square else inverse_softplus(omega)).to(rho.dtype))

    def fit_posthoc(
        self,
        model: nn.Module,
        task: Any,
        train_examples: list,
        config: Any,
        accelerator: Any,
        unseen: Callable[[int], list] | None = None,
    ) -> dict:
        """Reparameterise, then fix sigma (given, or searched on training anchors); returns the record."""
        cfg = self.config
        anchors = [] if cfg.sigma is not None else self.anchor_examples(train_examples)
        self.reparameterize_layers(model)
        trace: list[tuple[float, float]] = []
        if cfg.sigma is not None:
            sigma = cfg.sigma
        else:
            encoded = task.encode(anchors)
            metric_fn = self._metric(model, task, encoded, config, accelerator)
            sigma, trace = search_sigma(
                metric_fn,
                cfg.sigma_min,
                cfg.sigma_max,
                cfg.tolerance,
                cfg.search_iterations,
                min_width=WIDTH_RESOLUTION * cfg.sigma_max,
            )
        self.set_sigma(model, sigma)
        self.config = replace(cfg, sigma=sigma)  # recorded in bayespeft_method.json; the run config is untouched
        return {
            "sigma": sigma,
            "sigma_search": [list(step) for step in trace],  # (sigma, metric) per test; empty when given
            "criterion": cfg.criterion,
            "tolerance": cfg.tolerance,
            "anchor_size": len(anchors),
        }

    def anchor_examples(self, train_examples: Sequence[Any]) -> list[Any]:
        """``anchor_size`` training examples drawn with ``random.Random(anchor_seed)`` (all if fewer)."""
        if not train_examples:
            raise ConfigError("method.anchor_size: the anchor set is empty (no training examples to search sigma on)")
        size = min(self.config.anchor_size, len(train_examples))
        return random.Random(self.config.anchor_seed).sample(list(train_examples), size)

    def _metric(
        self, model: nn.Module, task: Any, encoded: list[Any], config: Any, accelerator: Any
    ) -> Callable[[float], float]:
        """sigma -> the criterion on the anchors, against the sigma = 0 (posterior mean) predictions."""
        from ..evaluation import predict  # evaluation imports the methods package

        cfg = self.config
        reference, _ = predict(model, self, task, encoded, replace(config.eval, n_samples=0), accelerator, False)
        sampled_eval = replace(config.eval, n_samples=cfg.search_samples)
        criterion = relative_nll_change if cfg.criterion == "nll" else flip_fraction

        def metric(sigma: float) -> float:
            self.set_sigma(model, sigma)
            sampled, _ = predict(model, self, task, encoded, sampled_eval, accelerator, False)
            return criterion(reference, sampled)

        return metric


__all__ = ["TfbConfig", "TfbLora", "search_sigma"]
