"""Inducing-weight Bayesian LoRA: a sparse-GP posterior on each LoRA factor (Ritter et al. 2021 on A and B).

Each factor F (R x C: A is r x d_in, B is d_out x r) gets a small inducing matrix U (m_r x m_c):

* Prior. Learned bases Z_r (m_r x R), Z_c (m_c x C) and positive diagonals D_r, D_c define
  K_r = Z_r Z_r^T + D_r^2 and K_c = Z_c Z_c^T + D_c^2. The augmented matrix [[U, .], [., W]] is
  matrix-normal with row covariance [[K_r, Z_r], [Z_r^T, I_R]] and column covariance
  [[K_c, Z_c], [Z_c^T, I_C]], so W ~ N(0, I), U ~ MN(0, K_r, K_c), Cov(U_ij, W_kl) = Z_r[i,k] Z_c[j,l],
  and F = sigma W with sigma = prior_std / sqrt(C). Equivalently, with E ~ N(0, I) of shape
  (R + m_r) x (C + m_c): W = E[:R, :C] and U = [Z_r, D_r] E [Z_c, D_c]^T.
* Whitening. U = L_r V L_c^T with L = chol(K), so the prior on V is N(0, I). With the whitened
  bases H_r = L_r^{-1} Z_r and H_c = L_c^{-1} Z_c, the conditional p(W | V) has mean H_r^T V H_c and
  covariance I - (H_c^T H_c) kron (H_r^T H_r): not a Kronecker product, never built.
* Matheron's rule. Draw the pair (W~, V~) from the joint prior, W~ = E[:R, :C] and
  V~ = P_r E P_c^T with P = L^{-1} [Z, D] (cost O(m R C), no dense covariance), then
  W = W~ + H_r^T (V - V~) H_c is a draw from p(W | V).
* Posterior. q(V) q_lambda(W | V): q(V) is diagonal N(mu, diag(s^2)) or matrix-normal
  MN(mu, S_r S_r^T, S_c S_c^T) (S lower-triangular, positive diagonal); q_lambda(W | V) is p(W | V) with
  its covariance scaled by lambda^2, lambda = max_noise_scale * sigmoid(rho) learned. A draw is
  F = sigma (lambda W~ + H_r^T (V - lambda V~) H_c) and the posterior mean is E[F] = sigma H_r^T mu H_c.
* KL. KL[q(V) || N(0, I)] + R C (lambda^2 / 2 - log lambda - 1/2): the conditionals share their mean
  and differ only by the scale lambda^2, so the second term is exact and independent of V.

The layer computes W0 x + s B diag(g) A x (s = alpha / r) with A, B drawn as above and g a
zero-initialised gate of r entries (AdaLoRA's zero-initialised singular values): at init the adapted
model equals the backbone whether sampling is on or off, while A and B start as random prior-like
matrices, so g receives a gradient from the first step. The gate is stored in LoRA-B units,
g = sqrt(d_out) gamma: an Adam step on gamma moves a column of B diag(g) (norm about prior_std) as far
as a step moves a column of LoRA's B (d_out entries), so training keeps LoRA's pace (with a plain gate,
a tiny model trained several times slower than LoRA at the same learning rate). peft's ``lora_A`` /
``lora_B`` weights are
not used: they stay frozen at zero (peft keeps its modules for shapes, scaling and dropout);
``save_adapter(mean_only=True)`` writes the posterior mean (E[A], E[B] diag(g)) into them.

Trainable parameters per adapted layer (m_k / m_w: inducing rank / width, S = m_k m_w for the diagonal
q, m_k (m_k + 1) / 2 + m_w (m_w + 1) / 2 for the matrix-normal one):
m_w (d_in + d_out) + 2 m_k r + 2 (m_k + m_w) + 2 m_k m_w + 2 S + 2 + r, against LoRA's r (d_in + d_out).

Sampling: with sampling on, every forward pass draws one (V, E) per factor and stacked group
(a weight draw per group, applied with batched matmuls; no per-token Flipout signs). Held
mode (generation) takes the same noise from :func:`held_noise`, so each group keeps one draw.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora.layer import LoraLayer
from peft.utils.other import transpose
from torch import nn

from ..config import MethodConfig, require
from ..enums import BlobOptimization, KLPeriod, KLSchedule, StrEnum
from ..errors import ConfigError
from .base import MeanMergeVariant, SamplingState, block_noise, held_noise, register_method, split_groups, unwrap_peft
from .blob import BlobLora, require_mean_weight_decay

FACTOR_A = "lora_inducing_A"  # names contain "lora_" so that peft saves and loads them
FACTOR_B = "lora_inducing_B"
GATE = "lora_B_gate"  # gamma, a (1, r) row: B diag(g) A with g = sqrt(d_out) gamma
JITTER = 1e-6  # added to D^2 so that K stays safely positive definite in float32
INITIAL_DIAG = 0.1  # initial D: K = (1 + 0.01) I for the orthonormal initial bases


class InducingPosterior(StrEnum):
    """The family of q(V) over the whitened inducing matrix.

    - ``diagonal``: N(mu, diag(s^2)), one std per entry.
    - ``matrix``: MN(mu, S_r S_r^T, S_c S_c^T), correlated rows and columns.
    """

    DIAGONAL = "diagonal"
    MATRIX = "matrix"


@dataclass
class InducingConfig(MethodConfig):
    """Inducing sizes, prior and posterior initialisation, and BLoB's KL weighting and optimisation options."""

    name = "inducing"
    inducing_rank: int | None = None  # inducing size along each factor's rank side (<= r); None: r
    inducing_width: int | None = None  # along the d_in side of A and the d_out side of B (<= both); None: min(r, both)
    posterior: str = InducingPosterior.DIAGONAL.value
    prior_std: float = 1.0  # sigma * sqrt(C): each factor entry has prior std prior_std / sqrt(fan-in)
    init_std: float = 0.01  # initial std of q(V) in whitened units (the prior's is 1)
    noise_scale: float = 1e-3  # initial lambda, the conditional noise scale
    max_noise_scale: float = 0.03  # lambda's upper bound (the KL alone would push it to 1)
    gamma: float = 8.0
    kl_lr: float = 0.01
    kl_schedule: str = KLSchedule.CYCLIC.value
    kl_period: str = KLPeriod.DATASET_RESCALED.value
    optimization: str = BlobOptimization.ELBO.value
    mean_weight_decay: float | None = None  # AdamW decay on the posterior means; None: train.weight_decay

    def validate(self) -> None:
        require_mean_weight_decay(self.mean_weight_decay)
        for field in ("inducing_rank", "inducing_width"):
            size = getattr(self, field)
            ok = size is None or (isinstance(size, int) and not isinstance(size, bool) and size >= 1)
            require(ok, f"method.{field}", f"must be an integer >= 1 or null (got {size!r})")
        self.posterior = InducingPosterior.parse(self.posterior, "method.posterior").value
        require(self.prior_std > 0, "method.prior_std", f"must be > 0 (got {self.prior_std})")
        require(self.init_std > 0, "method.init_std", f"must be > 0 (got {self.init_std})")
        require(self.noise_scale > 0, "method.noise_scale", f"must be > 0 (got {self.noise_scale})")
        require(
            self.max_noise_scale > self.noise_scale,
            "method.max_noise_scale",
            f"must exceed method.noise_scale = {self.noise_scale} (got {self.max_noise_scale})",
        )
        require(self.gamma > 0, "method.gamma", f"must be > 0 (got {self.gamma})")
        require(self.kl_lr > 0, "method.kl_lr", f"must be > 0 (got {self.kl_lr})")
        self.kl_schedule = KLSchedule.parse(self.kl_schedule, "method.kl_schedule").value
        self.kl_period = KLPeriod.parse(self.kl_period, "method.kl_period").value
        self.optimization = BlobOptimization.parse(self.optimization, "method.optimization").value


# ---- the maths, on plain tensors ------------------------------------------------------------------
def whitened_bases(basis: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
    """P = L^{-1} [Z, diag(D)] with L = chol(Z Z^T + D^2): [m, n + m]. Its first n columns are H = L^{-1} Z."""
    kernel = basis @ basis.T + torch.diag(diag.square())
    chol = torch.linalg.cholesky(kernel)
    return torch.linalg.solve_triangular(chol, torch.cat([basis, torch.diag(diag)], dim=1), upper=False)


def matheron_sample(
    row: torch.Tensor, col: torch.Tensor, inducing: torch.Tensor, prior_noise: torch.Tensor, noise_scale: torch.Tensor
) -> torch.Tensor:
    """Draws [G, R, C] of W | V with covariance scaled by lambda^2, by Matheron's rule.

    ``row`` = P_r [m_r, R + m_r], ``col`` = P_c [m_c, C + m_c] (:func:`whitened_bases`), ``inducing`` the
    whitened V [G, m_r, m_c], ``prior_noise`` E ~ N(0, I) [G, R + m_r, C + m_c]. The joint prior draw is
    W~ = E[:R, :C], V~ = P_r E P_c^T; the result is lambda W~ + H_r^T (V - lambda V~) H_c.
    """
    m_r, m_c = row.shape[0], col.shape[0]
    rows, cols = row.shape[1] - m_r, col.shape[1] - m_c
    prior_weight = prior_noise[:, :rows, :cols]
    prior_inducing = row @ prior_noise @ col.T
    core = (inducing - noise_scale * prior_inducing) @ col[:, :cols]
    return noise_scale * prior_weight + row[:, :rows].T @ core


def lower_triangular(packed: torch.Tensor, size: int) -> torch.Tensor:
    """The lower-triangular S [size, size] with a positive diagonal from its size (size + 1) / 2 free entries."""
    rows, cols = torch.tril_indices(size, size, device=packed.device)
    free = packed.new_zeros(size, size).index_put((rows, cols), packed)
    return torch.tril(free, -1) + torch.diag(nn.functional.softplus(free.diagonal()))


def _softplus_inverse(value: float) -> float:
    return math.log(math.expm1(value))


def _packed_identity(size: int, value: float) -> torch.Tensor:
    """Free entries of :func:`lower_triangular` giving value * I."""
    rows, cols = torch.tril_indices(size, size)
    return torch.where(rows == cols, _softplus_inverse(value), 0.0)


@contextlib.contextmanager
def _full_precision(like: torch.Tensor) -> Iterator[None]:
    """Autocast off on ``like``'s device: the Cholesky and triangular solves stay in float32."""
    with torch.autocast(device_type=like.device.type, enabled=False):
        yield


class InducingFactor(nn.Module):
    """q(F) for one LoRA factor F [rows, cols] through a whitened inducing matrix V [m_r, m_c].

    Every computation runs in float32 with autocast off (Cholesky factors of the m x m kernels);
    callers cast the drawn weights to the activations' dtype.
    """

    def __init__(
        self, rows: int, cols: int, inducing_rows: int, inducing_cols: int, cfg: InducingConfig, like: torch.Tensor
    ) -> None:
        super().__init__()
        self.posterior = InducingPosterior(cfg.posterior)
        self.prior_scale = cfg.prior_std / math.sqrt(cols)
        self.max_noise_scale = cfg.max_noise_scale
        diag = _softplus_inverse(INITIAL_DIAG)

        def parameter(tensor: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(tensor.to(device=like.device, dtype=like.dtype))

        self.row_basis = parameter(nn.init.orthogonal_(torch.empty(inducing_rows, rows)))
        self.col_basis = parameter(nn.init.orthogonal_(torch.empty(inducing_cols, cols)))
        self.row_diag_rho = parameter(torch.full((inducing_rows,), diag))
        self.col_diag_rho = parameter(torch.full((inducing_cols,), diag))
        self.mean = parameter(torch.randn(inducing_rows, inducing_cols))  # a prior draw: random like LoRA's A
        if self.posterior == InducingPosterior.DIAGONAL:
            self.std_rho = parameter(torch.full((inducing_rows, inducing_cols), _softplus_inverse(cfg.init_std)))
        else:  # S_r = S_c = sqrt(init_std) I: every entry of V has std init_std
            self.row_scale_rho = parameter(_packed_identity(inducing_rows, math.sqrt(cfg.init_std)))
            self.col_scale_rho = parameter(_packed_identity(inducing_cols, math.sqrt(cfg.init_std)))
        self.noise_rho = parameter(torch.tensor(math.log(cfg.noise_scale / (cfg.max_noise_scale - cfg.noise_scale))))

    @property
    def shape(self) -> tuple[int, int]:
        return self.row_basis.shape[1], self.col_basis.shape[1]

    @property
    def inducing_shape(self) -> tuple[int, int]:
        return self.row_basis.shape[0], self.col_basis.shape[0]

    def noise_scale(self) -> torch.Tensor:
        """lambda in (0, max_noise_scale)."""
        return self.max_noise_scale * torch.sigmoid(self.noise_rho.float())

    def diagonals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """D_r and D_c (float32), with the jitter folded in so that the prior is exactly the one sampled."""
        return (
            (nn.functional.softplus(self.row_diag_rho.float()).square() + JITTER).sqrt(),
            (nn.functional.softplus(self.col_diag_rho.float()).square() + JITTER).sqrt(),
        )

    def whitened(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(P_r, P_c) of :func:`whitened_bases`."""
        row_diag, col_diag = self.diagonals()
        return whitened_bases(self.row_basis.float(), row_diag), whitened_bases(self.col_basis.float(), col_diag)

    def scale_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """S_r, S_c of the matrix-normal q(V)."""
        m_r, m_c = self.inducing_shape
        return lower_triangular(self.row_scale_rho.float(), m_r), lower_triangular(self.col_scale_rho.float(), m_c)

    def posterior_deviation(self, unit: torch.Tensor) -> torch.Tensor:
        """V - mu for unit Gaussian noise [G, m_r, m_c]: s * xi, or S_r xi S_c^T."""
        if self.posterior == InducingPosterior.DIAGONAL:
            return nn.functional.softplus(self.std_rho.float()) * unit
        row_scale, col_scale = self.scale_factors()
        return row_scale @ unit @ col_scale.T

    def mean_weight(self) -> torch.Tensor:
        """E[F] = sigma H_r^T mu H_c [rows, cols], float32."""
        rows, cols = self.shape
        with _full_precision(self.mean):
            row, col = self.whitened()
            return self.prior_scale * (row[:, :rows].T @ self.mean.float() @ col[:, :cols])

    def sample(self, prior_noise: torch.Tensor, posterior_noise: torch.Tensor) -> torch.Tensor:
        """Draws of F [G, rows, cols] (float32) from unit noise E [G, R + m_r, C + m_c] and xi [G, m_r, m_c]."""
        with _full_precision(self.mean):
            row, col = self.whitened()
            inducing = self.mean.float() + self.posterior_deviation(posterior_noise)
            return self.prior_scale * matheron_sample(row, col, inducing, prior_noise, self.noise_scale())

    def noise_shapes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Shapes of one draw's unit noise: E for the joint prior pair, xi for q(V)."""
        (rows, cols), (m_r, m_c) = self.shape, self.inducing_shape
        return (rows + m_r, cols + m_c), (m_r, m_c)

    def kl(self) -> torch.Tensor:
        """KL[q(V) || N(0, I)] + R C (lambda^2 / 2 - log lambda - 1/2), in float64."""
        mean = self.mean.double()
        m_r, m_c = self.inducing_shape
        if self.posterior == InducingPosterior.DIAGONAL:
            std = nn.functional.softplus(self.std_rho.double())
            inducing = 0.5 * (std.square() + mean.square() - 1).sum() - std.log().sum()
        else:
            row_scale = lower_triangular(self.row_scale_rho.double(), m_r)
            col_scale = lower_triangular(self.col_scale_rho.double(), m_c)
            trace = row_scale.square().sum() * col_scale.square().sum()
            log_dets = m_c * row_scale.diagonal().log().sum() + m_r * col_scale.diagonal().log().sum()
            inducing = 0.5 * (trace + mean.square().sum() - m_r * m_c) - log_dets
        noise = self.max_noise_scale * torch.sigmoid(self.noise_rho.double())
        rows, cols = self.shape
        return inducing + rows * cols * (noise.square() / 2 - noise.log() - 0.5)


def inducing_parameter_count(
    d_in: int, d_out: int, rank: int, inducing_rank: int, inducing_width: int, posterior: str
) -> int:
    """Trainable parameters of one adapted layer (both factors and the gate); LoRA has rank * (d_in + d_out).

    m_w (d_in + d_out) + 2 m_k r + 2 (m_k + m_w) + 2 m_k m_w + 2 S + 2 + r, with m_k / m_w the inducing
    rank / width and S = m_k m_w (diagonal q) or m_k (m_k + 1) / 2 + m_w (m_w + 1) / 2 (matrix-normal q).
    """
    m_k, m_w = inducing_rank, inducing_width
    if InducingPosterior(posterior) == InducingPosterior.DIAGONAL:
        scales = m_k * m_w
    else:
        scales = m_k * (m_k + 1) // 2 + m_w * (m_w + 1) // 2
    return m_w * (d_in + d_out) + 2 * m_k * rank + 2 * (m_k + m_w) + 2 * m_k * m_w + 2 * scales + 2 + rank


# ---- the LoRA layer -------------------------------------------------------------------------------
def gate(module: LoraLayer, adapter: str) -> torch.Tensor:
    """g = sqrt(d_out) gamma [1, r], float32."""
    return getattr(module, GATE)[adapter].float() * math.sqrt(module.lora_B[adapter].weight.shape[0])


def mean_factors(module: LoraLayer, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[A], E[B] diag(g)) in float32: a plain LoRA pair whose product is the posterior-mean update."""
    factor_a, factor_b = getattr(module, FACTOR_A)[adapter], getattr(module, FACTOR_B)[adapter]
    return factor_a.mean_weight(), factor_b.mean_weight() * gate(module, adapter)


def mean_delta_weight(module: LoraLayer, adapter: str) -> torch.Tensor:
    """s E[B] diag(g) E[A] in the base weight's layout (A and B are independent under q)."""
    mean_a, mean_b = mean_factors(module, adapter)
    return transpose(mean_b @ mean_a * module.scaling[adapter], module.fan_in_fan_out)


class InducingVariant(MeanMergeVariant):
    """W0 x + s B diag(g) A d(x) with A, B the posterior means or one draw per stacked group (peft variant)."""

    def __init__(self, state: SamplingState) -> None:
        self.state = state

    def supports_lora_conversion(self) -> bool:
        return False  # peft's lora_A / lora_B hold zeros, not the adapter

    mean_delta = staticmethod(mean_delta_weight)

    def forward(
        self, module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        x = module.lora_dropout[active_adapter](x)
        scaling = module.scaling[active_adapter]
        if not self.state.enabled:
            mean_a, mean_b = mean_factors(module, active_adapter)
            return result + (x @ mean_a.to(x.dtype).T) @ mean_b.to(x.dtype).T * scaling
        groups = self.state.groups
        factor_a = self.draw(module, f"{FACTOR_A}/{active_adapter}", getattr(module, FACTOR_A)[active_adapter], x)
        factor_b = self.draw(module, f"{FACTOR_B}/{active_adapter}", getattr(module, FACTOR_B)[active_adapter], x)
        hidden = torch.bmm(split_groups(x, groups), factor_a.to(x.dtype).transpose(1, 2))
        hidden = hidden * gate(module, active_adapter).to(x.dtype)
        out = torch.bmm(hidden, factor_b.to(x.dtype).transpose(1, 2))
        return result + out.reshape(*x.shape[:-1], -1) * scaling

    def draw(self, module: LoraLayer, tag: str, factor: InducingFactor, x: torch.Tensor) -> torch.Tensor:
        """One factor draw per stacked group: fresh noise, or the block's held noise in hold mode."""
        prior_shape, posterior_shape = factor.noise_shapes()
        groups = self.state.groups
        if self.state.hold:
            like = torch.empty((), device=x.device)
            prior = held_noise(self.state, module, f"{tag}/prior", prior_shape, like)
            posterior = held_noise(self.state, module, f"{tag}/posterior", posterior_shape, like)
        else:
            prior = block_noise(
                self.state, module, f"{tag}/prior", lambda: torch.randn((groups, *prior_shape), device=x.device)
            )
            posterior = block_noise(
                self.state,
                module,
                f"{tag}/posterior",
                lambda: torch.randn((groups, *posterior_shape), device=x.device),
            )
        return factor.sample(prior, posterior)


@register_method
class InducingLora(BlobLora):
    """Inducing-weight posterior on both LoRA factors; BLoB's KL schedule and optimisation rules."""

    name = "inducing"
    config_class = InducingConfig
    # parameter-name fragments: the split rule's SGD KL step moves the q(V) means and every scale parameter
    std_parameters = (".std_rho", ".row_scale_rho", ".col_scale_rho", ".noise_rho")
    kl_step_bounded = False  # whitened KL with no beta: kl_step_warning's bound does not apply
    prior_means = (".mean",)

    def after_inject(self, model: nn.Module) -> None:
        """Give every LoRA linear layer two inducing factors, a zero gate and the inducing variant."""
        cfg = self.config
        variant = InducingVariant(self.sampling_state)
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer) and len(m.lora_A) > 0]
        if not layers:
            raise ValueError("no LoRA linear layers found to Bayesianize")
        for name, layer in layers:
            if not hasattr(layer, FACTOR_A):
                setattr(layer, FACTOR_A, nn.ModuleDict())
                setattr(layer, FACTOR_B, nn.ModuleDict())
                setattr(layer, GATE, nn.ParameterDict())
                layer.adapter_layer_names = (*layer.adapter_layer_names, FACTOR_A, FACTOR_B, GATE)
            for adapter, lora_A in layer.lora_A.items():
                lora_B = layer.lora_B[adapter]
                if not isinstance(lora_A, nn.Linear) or layer.lora_bias[adapter]:
                    raise ValueError(f"inducing supports LoRA on linear layers without lora_bias ({name})")
                rank, d_in = lora_A.weight.shape
                d_out = lora_B.weight.shape[0]
                m_k, m_w = self.inducing_sizes(name, rank, d_in, d_out)
                weight = lora_A.weight
                getattr(layer, FACTOR_A)[adapter] = InducingFactor(rank, d_in, m_k, m_w, cfg, weight)
                getattr(layer, FACTOR_B)[adapter] = InducingFactor(d_out, rank, m_w, m_k, cfg, weight)
                getattr(layer, GATE)[adapter] = nn.Parameter(torch.zeros(1, rank, device=weight.device))
                for unused in (lora_A.weight, lora_B.weight):
                    unused.requires_grad_(False)
                    unused.data.zero_()
                layer.lora_variant[adapter] = variant

    def inducing_sizes(self, layer: str, rank: int, d_in: int, d_out: int) -> tuple[int, int]:
        """(m_k, m_w) for one layer; ConfigError when U would be larger than the factor it summarises."""
        cfg = self.config
        m_k = rank if cfg.inducing_rank is None else cfg.inducing_rank
        # the default fits every layer (a 2-class head has 2 output features); an explicit width must fit
        m_w = min(rank, d_in, d_out) if cfg.inducing_width is None else cfg.inducing_width
        if m_k > rank:
            raise ConfigError(f"method.inducing_rank: {m_k} exceeds the LoRA rank {rank} of layer {layer}")
        for features, side in ((d_in, "input"), (d_out, "output")):
            if m_w > features:
                raise ConfigError(
                    f"method.inducing_width: {m_w} exceeds the {features} {side} features of layer {layer} "
                    "(an inducing matrix cannot be larger than the factor it summarises)"
                )
        return m_k, m_w

    def bayesian_layers(self, model: nn.Module) -> list[LoraLayer]:
        return [m for m in model.modules() if isinstance(m, LoraLayer) and hasattr(m, FACTOR_A)]

    def factors(self, model: nn.Module) -> list[InducingFactor]:
        """Every inducing factor of the model (A and B of every adapted layer and adapter)."""
        return [
            factor
            for layer in self.bayesian_layers(model)
            for container in (getattr(layer, FACTOR_A), getattr(layer, FACTOR_B))
            for factor in container.values()
        ]

    def kl(self, model: nn.Module) -> torch.Tensor:
        """Sum over every factor of KL[q(V) || p(V)] + E_q(V) KL[q(W | V) || p(W | V)], float64."""
        terms = [factor.kl() for factor in self.factors(model)]
        if not terms:
            raise ValueError("model has no inducing layers: was the method injected?")
        return torch.stack(terms).sum()

    def save_adapter(self, model: PeftModel, directory: str | Path, mean_only: bool = False) -> Path:
        """The full posterior, or (``mean_only``) a plain peft LoRA holding E[A] and E[B] diag(g)."""
        if not mean_only:
            return super().save_adapter(model, directory)
        layers = self.bayesian_layers(unwrap_peft(model))
        with torch.no_grad():
            for layer in layers:
                for adapter in getattr(layer, FACTOR_A):
                    mean_a, mean_b = mean_factors(layer, adapter)
                    layer.lora_A[adapter].weight.copy_(mean_a)
                    layer.lora_B[adapter].weight.copy_(mean_b)
            try:
                return super().save_adapter(model, directory, mean_only=True)
            finally:
                for layer in layers:
                    for adapter in getattr(layer, FACTOR_A):
                        layer.lora_A[adapter].weight.zero_()
                        layer.lora_B[adapter].weight.zero_()


__all__ = [
    "InducingConfig",
    "InducingFactor",
    "InducingLora",
    "InducingPosterior",
    "InducingVariant",
    "inducing_parameter_count",
    "matheron_sample",
    "mean_delta_weight",
    "whitened_bases",
]
