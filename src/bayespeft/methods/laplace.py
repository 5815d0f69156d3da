"""Laplace-LoRA: a Laplace approximation over the LoRA parameters of a trained adapter (post hoc).

A trained mle/map adapter is loaded; the method then fits, without training:

* the curvature of the categorical likelihood over the task's C class logits w.r.t. every LoRA
  A and B matrix: the exact generalised Gauss-Newton (GGN = J^T (diag p - p p^T) J, summed over
  the fit examples), either as its diagonal or as K-FAC per LoRA linear. K-FAC uses the "reduce"
  rule for weight sharing over sequence positions (input a = masked mean over positions, output
  gradient g = sum over positions; exact for a single position), and each Kronecker factor is
  kept as a low-rank eigendecomposition (its top ``n_kfac_rank`` eigenpairs, accumulated batch
  by batch with a truncated update), so an LM head with a vocabulary-sized output stays small;
  the directions outside the kept eigenvectors carry the prior precision only;
* a scalar prior precision delta, by maximising the Laplace log marginal likelihood (log det via
  the eigenvalues: a log grid, then a golden-section refinement) or by the GLM predictive NLL on
  ``val_examples`` validation examples, or fixed. The validation examples are training examples held out
  from the curvature fit (``val_data: train``) or examples of the training split that the source adapter
  never trained on (``val_data: unseen``): after many epochs the adapter has memorised its training set,
  whose NLL then rewards the smallest posterior variance whatever the held-out data say;
* the linearised (GLM) predictive: f_mu = the MAP class logits, f_var = J Sigma J^T with J the
  per-example Jacobian of the C logits w.r.t. the LoRA parameters (C backward passes; one for cloze
  scoring, whose rows each feed one class), sampled as softmax(f_mu + sqrt(f_var) z).

``predictive_samples`` returns ``link_samples`` logit draws per example whenever the evaluation
asks for samples (n_samples > 0; drawing logits costs nothing next to the one Jacobian pass, so
the number of evaluation samples does not set S), and the MAP softmax (S = 1) for n_samples = 0.

Why not laplace-torch: its dense Kronecker factors (d_out x d_out) cannot hold an adapted LM head
(a 49k-token vocabulary is a 49k x 49k factor), it has no per-factor low-rank K-FAC (that lives in
the unmaintained laplace-lora fork), and installing it replaces the CPU torch with a CUDA build.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn

from ..checkpoint import load_tensors, save_tensors_atomic
from ..config import MethodConfig, TrainConfig, require
from ..errors import ConfigError, RunDirError
from .base import (
    Method,
    Optimization,
    TrainingContext,
    register_method,
    unwrap_peft,
)
from .source import FromSourceAdapter

POSTERIOR_FILE = "laplace_posterior.safetensors"
HESSIANS = ("kron", "diag")
PRIOR_OPTIMIZATIONS = ("marglik", "val_nll", "none")
VAL_DATA = ("train", "unseen")
MARGLIK_GRID = torch.logspace(-6, 6, 121, dtype=torch.float64)  # then golden-section refined
VAL_GRID = torch.logspace(-4, 4, 17, dtype=torch.float64)
GOLDEN_STEPS = 40
EIG_FLOOR = 1e-12  # relative: eigenvalues below this times the largest are dropped
VAL_SEED = 1234  # the fixed normal draws that score the validation NLL of every candidate


@dataclass
class LaplaceConfig(MethodConfig):
    """Source adapter, curvature structure and the prior precision choice."""

    name = "laplace"
    source_adapter: str | None = None  # the adapter/ folder of a trained mle or map run
    hessian: str = "kron"  # kron: low-rank K-FAC per LoRA linear; diag: the exact GGN diagonal
    prior_precision: float = 1.0  # used as is for prior_optimization = none
    prior_optimization: str = "marglik"  # marglik | val_nll | none
    fit_examples: int | None = None  # training examples for the curvature (None: all)
    val_examples: int = 200  # for val_nll: held out from the training data, never the test split
    val_data: str = "train"  # train: held out of the fit examples | unseen: training split beyond max_train_examples
    n_kfac_rank: int = 10  # eigenpairs kept per Kronecker factor
    link_samples: int = 1000  # GLM predictive draws of the logits

    def validate(self) -> None:
        require(
            bool(self.source_adapter),
            "method.source_adapter:",
            "Laplace needs a trained adapter (the adapter/ folder of an mle or map run)",
        )
        self.hessian = str(self.hessian).lower()
        require(self.hessian in HESSIANS, "method.hessian", f"must be one of {HESSIANS} (got {self.hessian!r})")
        self.prior_optimization = str(self.prior_optimization).lower()
        require(
            self.prior_optimization in PRIOR_OPTIMIZATIONS,
            "method.prior_optimization",
            f"must be one of {PRIOR_OPTIMIZATIONS} (got {self.prior_optimization!r})",
        )
        require(self.prior_precision > 0, "method.prior_precision", f"must be > 0 (got {self.prior_precision})")
        require(
            self.fit_examples is None or self.fit_examples >= 1,
            "method.fit_examples",
            f"must be >= 1 or null (got {self.fit_examples})",
        )
        require(self.val_examples >= 1, "method.val_examples", f"must be >= 1 (got {self.val_examples})")
        self.val_data = str(self.val_data).lower()
        require(self.val_data in VAL_DATA, "method.val_data", f"must be one of {VAL_DATA} (got {self.val_data!r})")
        require(self.n_kfac_rank >= 1, "method.n_kfac_rank", f"must be >= 1 (got {self.n_kfac_rank})")
        require(self.link_samples >= 1, "method.link_samples", f"must be >= 1 (got {self.link_samples})")


# ---- linear algebra ---------------------------------------------------------------------------------
def lowrank_update(root: torch.Tensor | None, columns: torch.Tensor, rank: int) -> torch.Tensor:
    """A root R [d, k] with R R^T = the top-``rank`` part of (root root^T + columns columns^T).

    The columns of the result are orthogonal, with squared norms the kept eigenvalues.
    """
    stacked = columns if root is None else torch.cat([root, columns], dim=1)
    values, vectors = torch.linalg.eigh(stacked.T @ stacked)  # the small Gram matrix, ascending
    keep = min(rank, stacked.shape[0])
    values, vectors = values.flip(0)[:keep], vectors.flip(1)[:, :keep]
    positive = values > EIG_FLOOR * values.max().clamp_min(torch.finfo(values.dtype).tiny)
    return stacked @ vectors[:, positive]


def eigen_from_root(root: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues [k], orthonormal eigenvectors [d, k]) of root root^T for a root with orthogonal columns."""
    values = root.square().sum(0)
    return values, root / values.sqrt()


def log_marginal_likelihood(
    delta: torch.Tensor | float, log_lik: float, theta_sq: float, num_params: int, eigenvalues: torch.Tensor
) -> torch.Tensor:
    """Laplace log evidence (up to a constant) for prior precision ``delta`` (scalar or a vector).

    log p(D | theta*) - delta |theta*|^2 / 2 + P/2 log delta - 1/2 log det(H + delta I), with the
    curvature H given by its nonzero eigenvalues (the other P - k are 0).
    """
    delta = torch.as_tensor(delta, dtype=torch.float64)
    eig = eigenvalues.to(torch.float64).reshape(-1)
    log_det = torch.log(eig.unsqueeze(-1) + delta).sum(0) + (num_params - eig.numel()) * torch.log(delta)
    return log_lik - 0.5 * delta * theta_sq + 0.5 * num_params * torch.log(delta) - 0.5 * log_det


def maximize_log_evidence(log_lik: float, theta_sq: float, num_params: int, eigenvalues: torch.Tensor) -> float:
    """The prior precision maximising :func:`log_marginal_likelihood`: log grid, then golden section."""

    def f(log_delta: float) -> float:
        return float(log_marginal_likelihood(math.exp(log_delta), log_lik, theta_sq, num_params, eigenvalues))

    grid = MARGLIK_GRID.log()
    values = log_marginal_likelihood(MARGLIK_GRID, log_lik, theta_sq, num_params, eigenvalues)
    best = int(values.argmax())
    low, high = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, len(grid) - 1)])
    ratio = (math.sqrt(5) - 1) / 2
    x1, x2 = high - ratio * (high - low), low + ratio * (high - low)
    f1, f2 = f(x1), f(x2)
    for _ in range(GOLDEN_STEPS):
        if f1 < f2:
            low, x1, f1 = x1, x2, f2
            x2 = low + ratio * (high - low)
            f2 = f(x2)
        else:
            high, x2, f2 = x2, x1, f1
            x1 = high - ratio * (high - low)
            f1 = f(x1)
    return math.exp((low + high) / 2)


def sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a batch of PSD matrices (negative rounding clamped to 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt().unsqueeze(-2)) @ vectors.transpose(-1, -2)


def sample_glm(f_mu: torch.Tensor, f_var: torch.Tensor, n: int, generator: torch.Generator | None = None):
    """Probabilities [B, n, C] of softmax(f_mu + sqrt(f_var) z); -inf logits (absent choices) stay 0."""
    absent = torch.isinf(f_mu)
    mean = f_mu.masked_fill(absent, 0.0).double()
    z = torch.randn(f_mu.shape[0], n, f_mu.shape[1], dtype=torch.float64, generator=generator)
    logits = mean.unsqueeze(1) + z.to(mean.device) @ sqrt_psd(f_var.double()).transpose(-1, -2)
    logits = logits.masked_fill(absent.unsqueeze(1), float("-inf"))
    return torch.softmax(logits, dim=-1).float()


def categorical_ggn_root(logits: torch.Tensor) -> torch.Tensor:
    """L [B, C, C] with L L^T = diag(p) - p p^T: column c is sqrt(p_c) (e_c - p)."""
    p = torch.softmax(logits.double(), dim=-1)
    root = p.sqrt()
    return torch.diag_embed(root) - p.unsqueeze(-1) * root.unsqueeze(-2)


# ---- the Jacobian pass ----------------------------------------------------------------------------
def lora_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every LoRA A and B linear of the active adapters, by module name; ConfigError if there are none."""
    try:
        root = unwrap_peft(model)
    except TypeError:
        root = model
    found: dict[str, nn.Linear] = {}
    names = {id(module): name for name, module in root.named_modules()}
    for module in root.modules():
        if isinstance(module, LoraLayer):
            for adapter in module.lora_A:
                for part in (module.lora_A[adapter], module.lora_B[adapter]):
                    if isinstance(part, nn.Linear):
                        found[names[id(part)]] = part
    if not found:
        raise ConfigError(
            "method.name: laplace needs LoRA parameters (lora_A / lora_B linears), "
            "and this model has none; inject the method (or load an adapter) first"
        )
    return found


@dataclass
class LayerJacobian:
    """One LoRA linear's share of a batch: reduced inputs, summed output gradients, weight Jacobians."""

    inputs: torch.Tensor  # [B, d_in]: the masked mean of the inputs over positions
    out_grads: torch.Tensor  # [B, C, d_out]: d logit_c / d output, summed over positions
    weight_jac: torch.Tensor  # [B, C, d_out, d_in]: d logit_c / d W, per example


def jacobian_pass(
    model: nn.Module, task: Any, batch: dict[str, torch.Tensor], modules: dict[str, nn.Linear]
) -> tuple[torch.Tensor, dict[str, LayerJacobian]]:
    """Class logits [B, C] at the MAP and every LoRA linear's per-example Jacobian.

    The hooks read one forward call per module, so a task that splits its pass in two (cloze scoring
    from a shared-prefix cache) is scored through its single-call ``per_row_logits`` (same logits).
    When every model row feeds one class logit (a batch with ``slots``: cloze scoring), the rows are
    independent sequences, so one backward pass of the summed logits gives each row's gradient of its
    own class; otherwise each class takes its own backward pass (C of them).
    """
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            inputs[name], outputs[name] = args[0].detach(), output

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    frozen = [module.weight for module in modules.values() if not module.weight.requires_grad]
    for weight in frozen:  # gradients must reach the LoRA outputs even for a frozen adapter
        weight.requires_grad_(True)
    try:
        with torch.enable_grad():
            logits = getattr(task, "per_row_logits", task.class_logits)(model, batch).float()
            names = [name for name in modules if name in outputs and outputs[name].requires_grad]
            rows = inputs[names[0]].shape[0] if names else 0
            slots = one_class_rows(batch, rows)
            targets = [logits.flatten()[slots.to(logits.device)]] if slots is not None else list(logits.T)
            grads_per_target = [
                torch.autograd.grad(
                    target.sum(),
                    [outputs[name] for name in names],
                    retain_graph=index < len(targets) - 1,
                    allow_unused=True,
                )
                for index, target in enumerate(targets)
            ]
    finally:
        for handle in handles:
            handle.remove()
        for weight in frozen:
            weight.requires_grad_(False)
    mask = batch.get("attention_mask")
    examples, classes = logits.shape
    owners = row_owners(batch, rows, examples) if names else None
    result: dict[str, LayerJacobian] = {}
    for index, name in enumerate(names):
        a = inputs[name].double()
        a = a.unsqueeze(1) if a.dim() == 2 else a.reshape(a.shape[0], -1, a.shape[-1])  # [R, T, d_in]
        g = torch.stack(
            [
                torch.zeros(*a.shape[:2], modules[name].out_features, dtype=torch.float64, device=a.device)
                if grads[index] is None
                else grads[index].double().reshape(a.shape[0], a.shape[1], -1)
                for grads in grads_per_target
            ],
            dim=1,
        )  # [R, targets, T, d_out]
        if mask is not None and mask.shape[-1] == a.shape[1] and a.shape[1] > 1:
            weights = mask.to(a.device, torch.float64)
        else:
            weights = torch.ones(a.shape[:2], dtype=torch.float64, device=a.device)
        here = owners.to(a.device)
        summed_a = _sum_rows((a * weights.unsqueeze(-1)).sum(1), here, examples)
        mean_a = summed_a / _sum_rows(weights.sum(1, keepdim=True), here, examples).clamp_min(1)
        out_grads = g.sum(2)
        weight_jac = torch.einsum("rcto,rti->rcoi", g, a)
        if slots is None:
            out_grads, weight_jac = _sum_rows(out_grads, here, examples), _sum_rows(weight_jac, here, examples)
        else:  # each row's one target is its own class: place it at its slot of the [B, C] grid
            out_grads, weight_jac = (
                _place_rows(part[:, 0], slots, examples, classes) for part in (out_grads, weight_jac)
            )
        result[name] = LayerJacobian(mean_a, out_grads, weight_jac)
    return logits.detach(), result


def one_class_rows(batch: dict[str, torch.Tensor], rows: int) -> torch.Tensor | None:
    """Each model row's index into the flattened [B, C] class logits, when every row feeds exactly one
    class logit (cloze scoring's ``slots``, one per row); None when rows feed several classes."""
    slots = batch.get("slots")
    return slots if slots is not None and slots.numel() == rows else None


def row_owners(batch: dict[str, torch.Tensor], rows: int, examples: int) -> torch.Tensor:
    """The example each model row belongs to: one row per example, or (cloze scoring) one per present choice."""
    if rows == examples:
        return torch.arange(rows)
    counts = batch.get("num_choices")
    if counts is not None and int(counts.sum()) == rows:
        return torch.repeat_interleave(torch.arange(examples), counts.cpu())
    raise ConfigError(
        f"method.name: laplace saw {rows} model rows for {examples} examples and the batch does not say "
        "which row belongs to which example"
    )


def _sum_rows(values: torch.Tensor, owners: torch.Tensor, examples: int) -> torch.Tensor:
    """Sum per-row values [R, ...] into per-example values [examples, ...] (identity for one row each)."""
    if values.shape[0] == examples:
        return values
    return values.new_zeros(examples, *values.shape[1:]).index_add_(0, owners, values)


def _place_rows(values: torch.Tensor, slots: torch.Tensor, examples: int, classes: int) -> torch.Tensor:
    """Per-row values [R, ...] placed at their slots of an [examples, classes, ...] grid (zeros elsewhere)."""
    grid = values.new_zeros(examples * classes, *values.shape[1:])
    return grid.index_add_(0, slots.to(values.device), values).view(examples, classes, *values.shape[1:])


# ---- the method -------------------------------------------------------------------------------------
@register_method
class LaplaceLora(FromSourceAdapter, Method):
    """Laplace approximation over a trained LoRA adapter, fitted post hoc; GLM predictive."""

    name = "laplace"
    config_class = LaplaceConfig
    stochastic = True

    def __init__(self, config: LaplaceConfig | None = None) -> None:
        super().__init__(config)
        self.posterior: dict[str, torch.Tensor] = {}  # per-module factors (see _module_keys)
        self.fitted_prior_precision: float | None = None

    # ---- injection: plain LoRA, then the source adapter -----------------------------------------

    def build_optimization(self, model: nn.Module, train: TrainConfig, context: TrainingContext) -> Optimization:
        """No optimiser: Laplace is fitted post hoc on a trained adapter (train.max_steps = 0)."""
        if context.total_steps > 0:
            raise ConfigError(
                f"train.max_steps must be 0 for laplace: it is fitted post hoc on method.source_adapter "
                f"(got {context.total_steps})"
            )
        return Optimization({}, {})

    # ---- the fit ------------------------------------------------------------------------------------
    def split_examples(
        self, train_examples: list, unseen: Callable[[int], list] | None = None
    ) -> tuple[list, list, int]:
        """(fit, validation, pool size): validation for val_nll (held out, or unseen by the source adapter);
        fit capped at fit_examples."""
        cfg = self.config
        order = list(train_examples)
        random.Random(VAL_SEED).shuffle(order)
        val: list = []
        if cfg.prior_optimization == "val_nll" and cfg.val_data == "unseen":
            val = unseen(cfg.val_examples) if unseen is not None else []
            if not val:
                raise ConfigError(
                    "method.val_data: unseen needs training-split examples beyond data.max_train_examples "
                    "(set data.max_train_examples below the split size, or use val_data=train)"
                )
        elif cfg.prior_optimization == "val_nll":
            if len(order) <= cfg.val_examples:
                raise ConfigError(
                    f"method.val_examples: {cfg.val_examples} held-out examples leave none of the "
                    f"{len(order)} training examples for the curvature"
                )
            val, order = order[: cfg.val_examples], order[cfg.val_examples :]
        if not order:
            raise ConfigError("method.fit_examples: no training examples to fit the curvature on")
        pool = len(order)
        if cfg.fit_examples is not None:
            order = order[: cfg.fit_examples]
        return order, val, pool

    def fit_curvature(self, model: nn.Module, task: Any, batches: list[dict[str, torch.Tensor]], scale: float = 1.0):
        """GGN curvature over ``batches`` (summed, times ``scale``); returns (log likelihood, examples)."""
        modules = lora_linears(model)
        model.eval()
        kron = self.config.hessian == "kron"
        rank = self.config.n_kfac_rank
        roots_in: dict[str, torch.Tensor | None] = dict.fromkeys(modules)
        roots_out: dict[str, torch.Tensor | None] = dict.fromkeys(modules)
        diag: dict[str, torch.Tensor] = {}
        log_lik, count = 0.0, 0
        for batch in batches:
            logits, jac = jacobian_pass(model, task, batch, modules)
            labels = batch["labels"].to(logits.device)
            log_lik -= float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            count += logits.shape[0]
            root = categorical_ggn_root(logits)  # [B, C, C]
            for name, layer in jac.items():
                if kron:
                    out = torch.einsum("bkc,bko->bco", root, layer.out_grads).reshape(-1, layer.out_grads.shape[-1])
                    roots_in[name] = lowrank_update(roots_in[name], layer.inputs.T, rank)
                    roots_out[name] = lowrank_update(roots_out[name], out.T, rank)
                else:
                    grads = torch.einsum("bkc,bkoi->bcoi", root, layer.weight_jac)
                    diag[name] = diag.get(name, 0) + grads.square().sum((0, 1))
        if count == 0:
            raise ConfigError("method.fit_examples: no training examples to fit the curvature on")
        posterior: dict[str, torch.Tensor] = {}
        for name, module in modules.items():
            if kron:
                if roots_in[name] is None or roots_out[name] is None:
                    raise RunDirError(f"{name}: the LoRA linear never reached the class logits")
                in_values, in_vectors = eigen_from_root(roots_in[name])
                out_values, out_vectors = eigen_from_root(roots_out[name])
                posterior[f"{name}.in_values"] = (in_values / count).float().cpu()  # A: the mean over examples
                posterior[f"{name}.in_vectors"] = in_vectors.float().cpu()
                posterior[f"{name}.out_values"] = (out_values * scale).float().cpu()  # G: the sum
                posterior[f"{name}.out_vectors"] = out_vectors.float().cpu()
            else:
                posterior[f"{name}.diag"] = (
                    (diag.get(name, torch.zeros_like(module.weight, dtype=torch.float64)) * scale).float().cpu()
                )
        self.posterior = posterior
        return log_lik * scale, count

    def curvature_eigenvalues(self, model: nn.Module) -> torch.Tensor:
        """Every nonzero eigenvalue of the fitted curvature (K-FAC: products of the factors')."""
        parts = []
        for name in lora_linears(model):
            if self.config.hessian == "kron":
                outer = torch.outer(self.posterior[f"{name}.out_values"], self.posterior[f"{name}.in_values"])
                parts.append(outer.reshape(-1).double())
            else:
                parts.append(self.posterior[f"{name}.diag"].reshape(-1).double())
        return torch.cat(parts)

    def fit_posthoc(
        self,
        model: nn.Module,
        task: Any,
        train_examples: list,
        config: Any,
        accelerator: Any,
        unseen: Callable[[int], list] | None = None,
    ) -> dict:
        """Curvature on the fit examples, then the prior precision; returns the record for metrics.json."""
        start = time.perf_counter()
        cfg = self.config
        modules = lora_linears(model)
        fit, val, pool = self.split_examples(train_examples, unseen)
        device = accelerator.device if accelerator is not None else torch.device("cpu")
        batch_size = config.eval.batch_size if config is not None else 8
        batches = self._batches(task, fit, batch_size, device)
        log_lik, count = self.fit_curvature(model, task, batches, scale=pool / len(fit))
        params = [module.weight for module in modules.values()]
        num_params = sum(p.numel() for p in params)
        theta_sq = float(sum(p.detach().double().square().sum() for p in params))
        eigenvalues = self.curvature_eigenvalues(model)
        record: dict[str, Any] = {}
        if cfg.prior_optimization == "marglik":
            delta = maximize_log_evidence(log_lik, theta_sq, num_params, eigenvalues)
        elif cfg.prior_optimization == "val_nll":
            val_batches = self._batches(task, val, batch_size, device)
            scores = self.validation_nll(model, task, val_batches, VAL_GRID)
            delta = float(VAL_GRID[int(scores.argmin())])
            record["val_nll_grid"] = [[float(d), float(s)] for d, s in zip(VAL_GRID, scores, strict=True)]
            record["val_nll"] = float(scores.min())
        else:
            delta = cfg.prior_precision
        self.fitted_prior_precision = float(delta)
        record["log_marginal_likelihood"] = float(
            log_marginal_likelihood(delta, log_lik, theta_sq, num_params, eigenvalues)
        )
        return {
            "laplace_hessian": cfg.hessian,
            "prior_optimization": cfg.prior_optimization,
            "prior_precision": float(delta),
            "fit_examples": count,
            "val_examples": len(val),
            "val_data": cfg.val_data,
            "curvature_scale": pool / len(fit),
            "lora_params": num_params,
            "posterior_floats": self.posterior_floats(),
            "fit_time_s": time.perf_counter() - start,
            **record,
        }

    @staticmethod
    def _batches(task: Any, examples: list, batch_size: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
        encoded = task.encode(examples)
        return [
            {k: v.to(device) for k, v in task.collate(encoded[i : i + batch_size]).items()}
            for i in range(0, len(encoded), batch_size)
        ]

    def posterior_floats(self) -> int:
        """Extra floats the posterior stores beyond the adapter (eigen factors or diagonal, and delta)."""
        return sum(t.numel() for t in self.posterior.values()) + 1

    # ---- the GLM predictive -------------------------------------------------------------------------
    def logit_variance(self, jac: dict[str, LayerJacobian], deltas: torch.Tensor) -> torch.Tensor:
        """f_var = J Sigma(delta) J^T [D, B, C, C] for each prior precision in ``deltas`` [D]."""
        deltas = deltas.to(torch.float64)
        total = None
        for name, layer in jac.items():
            J = layer.weight_jac  # [B, C, d_out, d_in]
            device = J.device
            if self.config.hessian == "kron":
                out_vec = self.posterior[f"{name}.out_vectors"].to(device, torch.float64)
                in_vec = self.posterior[f"{name}.in_vectors"].to(device, torch.float64)
                eig = torch.outer(
                    self.posterior[f"{name}.out_values"].double(), self.posterior[f"{name}.in_values"].double()
                ).to(device)
                gram = torch.einsum("bcoi,bdoi->bcd", J, J)
                proj = torch.einsum("bcoi,ok,il->bckl", J, out_vec, in_vec)
                d = deltas.to(device).view(-1, 1, 1)
                weights = 1.0 / (eig + d) - 1.0 / d  # [D, kO, kI]
                part = gram.unsqueeze(0) / deltas.to(device).view(-1, 1, 1, 1)
                part = part + torch.einsum("bckl,bdkl,xkl->xbcd", proj, proj, weights)
            else:
                h = self.posterior[f"{name}.diag"].to(device, torch.float64)
                weights = 1.0 / (h.unsqueeze(0) + deltas.to(device).view(-1, 1, 1))  # [D, d_out, d_in]
                part = torch.einsum("bcoi,bdoi,xoi->xbcd", J, J, weights)
            total = part if total is None else total + part
        return total

    def glm(self, model: nn.Module, task: Any, batch: dict[str, torch.Tensor], delta: float | None = None):
        """(f_mu [B, C], f_var [B, C, C]) of the linearised model at prior precision ``delta``."""
        if not self.posterior:
            raise RunDirError("laplace: no fitted posterior (run fit_posthoc or load an adapter with one)")
        delta = self.fitted_prior_precision if delta is None else delta
        f_mu, jac = jacobian_pass(model, task, batch, lora_linears(model))
        f_var = self.logit_variance(jac, torch.tensor([delta], dtype=torch.float64))[0]
        return f_mu, f_var

    def validation_nll(self, model: nn.Module, task: Any, batches: list, deltas: torch.Tensor) -> torch.Tensor:
        """Mean NLL of the sampled GLM predictive on ``batches`` for each prior precision [D]."""
        model.eval()
        total, count = torch.zeros(len(deltas), dtype=torch.float64), 0
        generator = torch.Generator().manual_seed(VAL_SEED)
        for batch in batches:
            f_mu, jac = jacobian_pass(model, task, batch, lora_linears(model))
            f_var = self.logit_variance(jac, deltas)
            labels = batch["labels"].to(f_mu.device)
            state = generator.get_state()
            for index in range(len(deltas)):
                generator.set_state(state)  # the same draws for every candidate
                probs = sample_glm(f_mu, f_var[index], self.config.link_samples, generator).mean(1)
                picked = probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1).double().cpu()
                total[index] -= torch.log(picked.clamp_min(1e-12)).sum()
            count += f_mu.shape[0]
        return total / max(count, 1)

    def predictive_samples(
        self, model: nn.Module, task: Any, batch: dict[str, torch.Tensor], n_samples: int, samples_per_pass: int
    ) -> torch.Tensor:
        """[B, S, C]: S = link_samples GLM draws when n_samples > 0, the MAP softmax (S = 1) otherwise."""
        if n_samples == 0 or not self.sampling_state.enabled:
            with torch.no_grad():
                return torch.softmax(task.class_logits(model, batch).float(), dim=-1).unsqueeze(1)
        f_mu, f_var = self.glm(model, task, batch)
        return sample_glm(f_mu, f_var, self.config.link_samples).to(f_mu.device)

    # ---- persistence --------------------------------------------------------------------------------
    def save_adapter(self, model: PeftModel, directory: str | Path, mean_only: bool = False) -> Path:
        """peft's adapter (the MAP) plus, unless ``mean_only``, laplace_posterior.safetensors."""
        directory = super().save_adapter(model, directory, mean_only)
        if not mean_only and self.posterior:
            tensors = dict(self.posterior)
            tensors["prior_precision"] = torch.tensor([self.fitted_prior_precision], dtype=torch.float64)
            save_tensors_atomic(directory / POSTERIOR_FILE, tensors, metadata={"hessian": self.config.hessian})
        return directory

    def load_adapter(self, model: PeftModel, directory: str | Path) -> None:
        """The adapter, then the fitted posterior when the folder has one (checked against the model)."""
        super().load_adapter(model, directory)
        path = Path(directory) / POSTERIOR_FILE
        if not path.is_file():
            return
        tensors = load_tensors(path)
        if "prior_precision" not in tensors:
            raise RunDirError(f"{path}: no prior_precision: not a laplace posterior")
        delta = float(tensors.pop("prior_precision"))
        suffixes = (
            ("in_values", "in_vectors", "out_values", "out_vectors") if self.config.hessian == "kron" else ("diag",)
        )
        expected = {f"{name}.{suffix}" for name in lora_linears(model) for suffix in suffixes}
        if set(tensors) != expected:
            what = sorted(expected - set(tensors)) or sorted(set(tensors) - expected)
            raise RunDirError(
                f"{path}: posterior does not match this model and method.hessian={self.config.hessian!r} ({what[0]})"
            )
        self.posterior, self.fitted_prior_precision = tensors, delta


__all__ = [
    "LaplaceConfig",
    "LaplaceLora",
    "jacobian_pass",
    "log_marginal_likelihood",
    "lora_linears",
    "lowrank_update",
    "maximize_log_evidence",
    "sample_glm",
]
