"""Inducing-weight Bayesian LoRA: the sparse-GP maths against dense Gaussians, zero start, errors, training."""

from __future__ import annotations

import json

import pytest
import torch
from method_helpers import LORA, TARGETS, injected, linear_layer, tiny_llama, token_ids
from peft import PeftModel
from safetensors.torch import load_file
from torch.distributions import MultivariateNormal, kl_divergence

from bayespeft.config import TrainConfig, load_config
from bayespeft.errors import ConfigError
from bayespeft.methods import TrainingContext, build_method
from bayespeft.methods.base import ADAPTER_WEIGHTS
from bayespeft.methods.inducing import (
    FACTOR_A,
    FACTOR_B,
    GATE,
    InducingConfig,
    InducingFactor,
    inducing_parameter_count,
    lower_triangular,
    matheron_sample,
    whitened_bases,
)
from bayespeft.training import Trainer, load_examples

POSTERIORS = ["diagonal", "matrix"]


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


# ---- dense references -----------------------------------------------------------------------------
def dense_prior(row_basis, row_diag, col_basis, col_diag):
    """Cov(U), Cov(W, U), Cov(W) of the joint prior, read off the augmented matrix-normal [[U, .], [., W]].

    Row covariance [[Z_r Z_r^T + D_r^2, Z_r], [Z_r^T, I]], column covariance likewise; vectors are
    row-major, so the augmented matrix's covariance is kron(row, column).
    """
    m_r, rows = row_basis.shape
    m_c, cols = col_basis.shape

    def augmented(basis, diag, size):
        top = torch.cat([basis @ basis.T + torch.diag(diag.square()), basis], dim=1)
        bottom = torch.cat([basis.T, torch.eye(size, dtype=basis.dtype)], dim=1)
        return torch.cat([top, bottom])

    joint = torch.kron(augmented(row_basis, row_diag, rows), augmented(col_basis, col_diag, cols))
    index = torch.arange(joint.shape[0]).view(m_r + rows, m_c + cols)
    u, w = index[:m_r, :m_c].flatten(), index[m_r:, m_c:].flatten()
    return joint[u][:, u], joint[w][:, u], joint[w][:, w]


def dense_conditional(row_basis, row_diag, col_basis, col_diag):
    """W | U by Gaussian conditioning of the dense joint: E[W | U] = gain vec(U), and the covariance [RC, RC]."""
    cov_uu, cov_wu, cov_ww = dense_prior(row_basis, row_diag, col_basis, col_diag)
    gain = cov_wu @ torch.linalg.inv(cov_uu)
    return gain, cov_ww - gain @ cov_wu.T


def moments(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = draws.flatten(1).double()
    return flat.mean(0), torch.cov(flat.T)


def random_factor(posterior: str, rows: int = 3, cols: int = 4, m_r: int = 2, m_c: int = 3) -> InducingFactor:
    """A small factor moved off its init, with a conditional noise scale large enough to see."""
    torch.manual_seed(0)
    cfg = InducingConfig(posterior=posterior, noise_scale=0.5, max_noise_scale=0.9)
    factor = InducingFactor(rows, cols, m_r, m_c, cfg, torch.empty(()))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in factor.named_parameters():
            shift = 0.3 * torch.randn(p.shape, generator=gen)
            p.copy_(shift - 0.7 if name == "std_rho" else p + shift)
    return factor


# ---- Matheron's rule ------------------------------------------------------------------------------
@pytest.mark.parametrize("noise_scale", [1.0, 0.3])
def test_matheron_samples_have_the_conditional_moments(noise_scale):
    gen = torch.Generator().manual_seed(0)
    rows, cols, m_r, m_c = 3, 4, 2, 2
    row_basis = torch.randn(m_r, rows, generator=gen, dtype=torch.float64)
    col_basis = torch.randn(m_c, cols, generator=gen, dtype=torch.float64)
    row_diag = 0.2 + torch.rand(m_r, generator=gen, dtype=torch.float64)
    col_diag = 0.2 + torch.rand(m_c, generator=gen, dtype=torch.float64)
    whitened = torch.randn(m_r, m_c, generator=gen, dtype=torch.float64)
    row_chol = torch.linalg.cholesky(row_basis @ row_basis.T + torch.diag(row_diag.square()))
    col_chol = torch.linalg.cholesky(col_basis @ col_basis.T + torch.diag(col_diag.square()))
    inducing_u = row_chol @ whitened @ col_chol.T  # U = L_r V L_c^T

    draws = 200_000
    noise = torch.randn(draws, rows + m_r, cols + m_c, generator=gen, dtype=torch.float64)
    samples = matheron_sample(
        whitened_bases(row_basis, row_diag),
        whitened_bases(col_basis, col_diag),
        whitened.expand(draws, m_r, m_c),
        noise,
        torch.tensor(noise_scale, dtype=torch.float64),
    )
    gain, cov = dense_conditional(row_basis, row_diag, col_basis, col_diag)
    assert (torch.eye(rows * cols) - cov).abs().max() > 0.3, "U explains too little of W for a sharp test"
    sample_mean, sample_cov = moments(samples)
    torch.testing.assert_close(sample_mean, gain @ inducing_u.flatten(), rtol=0, atol=0.01)
    torch.testing.assert_close(sample_cov, noise_scale**2 * cov, rtol=0, atol=0.015)
    # without Matheron's correction the spread would be the prior's, lambda^2 I
    assert (sample_cov - noise_scale**2 * torch.eye(rows * cols)).abs().max() > 0.2 * noise_scale**2


@pytest.mark.parametrize("posterior", POSTERIORS)
def test_factor_draws_have_the_posterior_moments(posterior):
    """F = sigma (T_r U T_c + lambda conditional noise), U = L_r V L_c^T, V ~ q: mean and covariance."""
    factor = random_factor(posterior)
    (rows, cols), (m_r, m_c) = factor.shape, factor.inducing_shape
    row_diag, col_diag = (d.detach().double() for d in factor.diagonals())
    row_basis, col_basis = factor.row_basis.detach().double(), factor.col_basis.detach().double()
    row_kernel = row_basis @ row_basis.T + torch.diag(row_diag.square())
    col_kernel = col_basis @ col_basis.T + torch.diag(col_diag.square())
    # vec_rm(T_r L_r V L_c^T T_c) = kron(T_r L_r, (L_c^T T_c)^T) vec_rm(V), with T_r = Z_r^T K_r^-1, T_c = K_c^-1 Z_c
    row_map = row_basis.T @ torch.linalg.inv(row_kernel) @ torch.linalg.cholesky(row_kernel)
    col_map = col_basis.T @ torch.linalg.inv(col_kernel) @ torch.linalg.cholesky(col_kernel)
    jacobian = torch.kron(row_map, col_map)
    with torch.no_grad():
        if posterior == "diagonal":
            q_cov = torch.diag(torch.nn.functional.softplus(factor.std_rho.double()).flatten().square())
        else:
            row_scale, col_scale = (s.double() for s in factor.scale_factors())
            q_cov = torch.kron(row_scale @ row_scale.T, col_scale @ col_scale.T)
        noise_scale = float(factor.noise_scale())
        draws = 200_000
        gen = torch.Generator().manual_seed(2)
        samples = factor.sample(
            torch.randn(draws, rows + m_r, cols + m_c, generator=gen), torch.randn(draws, m_r, m_c, generator=gen)
        )
        mean_weight = factor.mean_weight()
    _, conditional = dense_conditional(row_basis, row_diag, col_basis, col_diag)
    sigma = factor.prior_scale
    mean = sigma * jacobian @ factor.mean.detach().double().flatten()
    cov = sigma**2 * (jacobian @ q_cov @ jacobian.T + noise_scale**2 * conditional)
    torch.testing.assert_close(mean_weight.double().flatten(), mean, rtol=0, atol=1e-5)
    sample_mean, sample_cov = moments(samples)
    scale = float(cov.diagonal().max())
    torch.testing.assert_close(sample_mean, mean, rtol=0, atol=0.01 * scale**0.5)
    torch.testing.assert_close(sample_cov, cov, rtol=0, atol=0.02 * scale)


# ---- KL ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("posterior", POSTERIORS)
def test_kl_matches_torch_distributions(posterior):
    factor = random_factor(posterior)
    (rows, cols), (m_r, m_c) = factor.shape, factor.inducing_shape
    mean = factor.mean.detach().double().flatten()
    with torch.no_grad():
        if posterior == "diagonal":
            q_cov = torch.diag(torch.nn.functional.softplus(factor.std_rho.double()).flatten().square())
        else:
            row_scale = lower_triangular(factor.row_scale_rho.double(), m_r)
            col_scale = lower_triangular(factor.col_scale_rho.double(), m_c)
            q_cov = torch.kron(row_scale @ row_scale.T, col_scale @ col_scale.T)
        noise_scale = factor.max_noise_scale * torch.sigmoid(factor.noise_rho.double())
        row_diag, col_diag = (d.double() for d in factor.diagonals())
    _, conditional = dense_conditional(
        factor.row_basis.detach().double(), row_diag, factor.col_basis.detach().double(), col_diag
    )
    shared_mean = torch.zeros(rows * cols, dtype=torch.float64)
    expected = kl_divergence(
        MultivariateNormal(mean, q_cov), MultivariateNormal(torch.zeros_like(mean), torch.eye(m_r * m_c).double())
    ) + kl_divergence(
        MultivariateNormal(shared_mean, noise_scale**2 * conditional), MultivariateNormal(shared_mean, conditional)
    )
    kl = factor.kl()
    assert kl.dtype == torch.float64
    torch.testing.assert_close(kl.detach(), expected, rtol=1e-9, atol=1e-9)


def test_model_kl_sums_every_factor():
    method, model = injected("inducing", posterior="matrix")
    factors = method.factors(model)
    assert len(factors) == 2 * 5  # A and B of q_proj and v_proj in two blocks, and of lm_head
    torch.testing.assert_close(method.kl(model), torch.stack([f.kl() for f in factors]).sum())


# ---- zero start -------------------------------------------------------------------------------------
@pytest.mark.parametrize("posterior", POSTERIORS)
def test_the_adapted_model_starts_equal_to_the_backbone(posterior):
    method, model = injected("inducing", randomize=False, posterior=posterior)
    ids = token_ids()
    expected = logits(tiny_llama(0), ids)
    for settings in ({"enabled": False}, {"enabled": True}, {"enabled": True, "hold": True, "seed": 1}):
        with method.sampling(**settings):
            assert torch.equal(logits(model, ids), expected), settings
    with method.sampling(True, groups=3):
        assert torch.equal(logits(model, ids.repeat(3, 1)), expected.repeat(3, 1, 1))


def test_the_zero_start_is_not_a_dead_start():
    """The factors start as random prior-like matrices, so the zero gates get a gradient at once."""
    method, model = injected("inducing", randomize=False)
    ids = token_ids()
    with method.sampling(True, seed=0):
        model(input_ids=ids, labels=ids).loss.backward()
    for layer in method.bayesian_layers(model):
        assert getattr(layer, GATE)["default"].grad.abs().min() > 0
        assert getattr(layer, FACTOR_A)["default"].mean_weight().abs().max() > 0
        assert getattr(layer, FACTOR_B)["default"].mean_weight().abs().max() > 0


# ---- persistence ----------------------------------------------------------------------------------
def test_matrix_posterior_round_trip(tmp_path):
    method, model = injected("inducing", posterior="matrix")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "scale_rho" in name or "noise_rho" in name:
                p.add_(0.1)
    out = method.save_adapter(model, tmp_path / "adapter")
    assert any("row_scale_rho" in k for k in load_file(out / ADAPTER_WEIGHTS))
    fresh_method, fresh = injected("inducing", posterior="matrix", seed=0, randomize=False)
    fresh_method.load_adapter(fresh, out)
    ids = token_ids()
    with method.sampling(True, seed=4):
        expected = logits(model, ids)
    with fresh_method.sampling(True, seed=4):
        assert torch.equal(logits(fresh, ids), expected)


def test_mean_only_export_is_a_plain_peft_lora_with_the_posterior_mean(tmp_path):
    method, model = injected("inducing")  # randomize_lora makes the gates nonzero
    out = method.save_adapter(model, tmp_path / "mean", mean_only=True)
    keys = set(load_file(out / ADAPTER_WEIGHTS))
    assert keys and all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in keys)
    plain = PeftModel.from_pretrained(tiny_llama(0), str(out)).eval()
    ids = token_ids()
    with method.sampling(False):
        mean = logits(model, ids)
    torch.testing.assert_close(logits(plain, ids), mean, rtol=0, atol=1e-5)
    for layer in method.bayesian_layers(model):  # the unused peft factors are back to frozen zeros
        for weight in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
            assert not weight.requires_grad and not weight.any()


# ---- configuration errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"inducing_rank": 5}, r"method\.inducing_rank: 5 exceeds the LoRA rank 4 of layer \S*layers\.0\.\S*q_proj"),
        ({"inducing_width": 33}, r"method\.inducing_width: 33 exceeds the 32 input features of layer \S*q_proj"),
        ({"inducing_width": 17}, r"method\.inducing_width: 17 exceeds the 16 output features of layer \S*v_proj"),
    ],
)
def test_inducing_sizes_larger_than_the_layer_are_config_errors(overrides, message):
    method = build_method("inducing", **overrides)
    with pytest.raises(ConfigError, match=message):
        method.inject(tiny_llama(0), LORA, TARGETS, "CAUSAL_LM")


def test_sizes_equal_to_the_layer_are_accepted():
    _, _, layer = linear_layer("inducing", d_in=8, d_out=4, r=4, inducing_rank=4, inducing_width=4)
    assert getattr(layer, FACTOR_B)["default"].inducing_shape == (4, 4)


def test_default_width_fits_a_head_narrower_than_the_rank():
    """A 2-class classification head with r = 8: the default width shrinks to 2 instead of failing."""
    _, _, layer = linear_layer("inducing", d_in=16, d_out=2, r=8)
    assert getattr(layer, FACTOR_B)["default"].inducing_shape == (2, 8)  # B is d_out x r
    assert getattr(layer, FACTOR_A)["default"].inducing_shape == (8, 2)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("inducing_rank", 0),
        ("inducing_width", -1),
        ("inducing_width", 2.5),
        ("noise_scale", 0.0),
        ("noise_scale", -0.1),
        ("max_noise_scale", 1e-3),
        ("prior_std", 0.0),
        ("init_std", -1.0),
        ("posterior", "full"),
        ("kl_schedule", "linear"),
    ],
)
def test_bad_values_are_config_errors_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"method\.{field}"):
        build_method("inducing", **{field: value})


# ---- parameter count --------------------------------------------------------------------------------
@pytest.mark.parametrize("posterior", POSTERIORS)
def test_parameter_count_follows_the_formula(posterior):
    method, model = injected("inducing", randomize=False, posterior=posterior, inducing_rank=3, inducing_width=6)
    total = 0
    for layer in method.bayesian_layers(model):
        rank, d_in = layer.lora_A["default"].weight.shape
        d_out = layer.lora_B["default"].weight.shape[0]
        counted = sum(p.numel() for name in (FACTOR_A, FACTOR_B, GATE) for p in getattr(layer, name).parameters())
        assert counted == inducing_parameter_count(d_in, d_out, rank, 3, 6, posterior)
        total += counted
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == total  # peft's A, B are frozen


# ---- training ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimization", ["elbo", "split"])
def test_steps_on_a_fixed_batch_reduce_its_loss(optimization):
    method, model = injected("inducing", randomize=False, optimization=optimization, kl_period="epoch")
    context = TrainingContext(num_examples=8, batch_size=2, batches_per_epoch=4, total_steps=20)
    opt = method.build_optimization(model, TrainConfig(lr=1e-2, warmup_ratio=0.0), context)
    ids = token_ids(batch=2, length=8)

    def mean_loss() -> float:
        with torch.no_grad(), method.sampling(False):
            return float(model(input_ids=ids, labels=ids).loss)

    before = mean_loss()
    model.train()
    for _ in range(context.total_steps):
        with method.sampling(True):
            logs = opt.step(model(input_ids=ids, labels=ids).loss, lambda loss: loss.backward())
    assert logs["kl"] > 0 and torch.isfinite(torch.tensor(list(logs.values()))).all()
    assert mean_loss() < before - 0.5
    for factor in method.factors(model):
        assert 0 < float(factor.noise_scale().detach()) < factor.max_noise_scale


def test_a_trainer_run_reduces_the_training_loss(tmp_path, tiny_llama_dir, shared_data):
    """Through the real Trainer: the posterior-mean NLL on the training examples falls."""

    def run(steps: int) -> dict:
        config = load_config(
            None,
            [
                f"model.name={tiny_llama_dir}",
                "method.name=inducing",
                "method.kl_period=epoch",
                "data.dataset=arc_easy",
                f"data.data_dir={shared_data}",
                "data.max_train_examples=8",
                "data.max_length=96",
                f"train.max_steps={steps}",
                "train.batch_size=2",
                "train.lr=0.01",
                "train.warmup_ratio=0",
                "train.checkpoint_every=100",
                "eval.n_samples=0",
            ],
        )
        fit = load_examples(config, "train", 8)  # scored on its own training examples: the fit, not held-out
        return Trainer(config, tmp_path / f"steps-{steps}", progress=False, eval_examples=fit).run_training()

    untrained, trained = run(0), run(48)
    assert trained["status"] == "finished"
    assert trained["metrics"]["nll"] < untrained["metrics"]["nll"] - 0.2
    records = [json.loads(line) for line in (tmp_path / "steps-48" / "train_log.jsonl").read_text().splitlines()]
    assert {"nll", "kl", "weighted_kl", "pi"} <= records[0].keys()
