"""Closed-form KL terms of BLoB (Gaussian) and blob_laplace against torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
from method_helpers import injected
from torch.distributions import Laplace, Normal, kl_divergence

from bayespeft.methods.blob import KL_STABILIZER, gaussian_kl, laplace_kl, posterior_std

BETA = 0.2


def _params(seed: int, n: int = 6):
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, generator=gen, dtype=torch.float64) * 0.3
    std = torch.rand(n, generator=gen, dtype=torch.float64) * 0.4 + 0.05
    return mean, std


def _mc_kl(q, p, samples: int = 400_000, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    a = q.sample((samples,))
    return (q.log_prob(a) - p.log_prob(a)).mean(0).sum()


def test_gaussian_kl_matches_monte_carlo():
    mean, std = _params(0)
    q, p = Normal(mean, std), Normal(torch.zeros_like(mean), torch.full_like(mean, BETA))
    mc = _mc_kl(q, p)
    assert float(gaussian_kl(mean, std, BETA)) == pytest.approx(float(mc), rel=0.02, abs=0.02)


def test_gaussian_kl_matches_torch_closed_form_up_to_stabiliser():
    mean, std = _params(1, n=50)
    exact = kl_divergence(Normal(mean, std), Normal(torch.zeros_like(mean), torch.full_like(mean, BETA))).sum()
    ours = gaussian_kl(mean, std, BETA)
    assert ours.dtype == torch.float64
    assert float(ours) == pytest.approx(float(exact), abs=50 * 1e-3)
    # and exactly the reference's stabilised formula
    e = KL_STABILIZER
    by_hand = sum(
        math.log(BETA + e) - math.log(s + e) + (s * s + m * m) / (2 * BETA**2 + e) - 0.5
        for m, s in zip(mean.tolist(), std.tolist(), strict=True)
    )
    assert float(ours) == pytest.approx(by_hand, rel=1e-12)


def test_gaussian_kl_zero_at_prior_and_nonnegative():
    zeros = torch.zeros(3, 5)
    assert abs(float(gaussian_kl(zeros, torch.full((3, 5), BETA), BETA))) < 1e-4
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        mean = torch.randn(4, 7, generator=gen)
        std = torch.rand(4, 7, generator=gen) * 2 + 1e-3
        assert float(gaussian_kl(mean, std, BETA)) >= 0


def test_gaussian_kl_is_float64_from_float32_and_keeps_gradients():
    mean = torch.randn(3, 4, requires_grad=True)
    std = (torch.rand(3, 4) * 0.1 + 0.01).requires_grad_()
    kl = gaussian_kl(mean, std, BETA)
    assert kl.dtype == torch.float64
    kl.backward()
    # d/dM = 2M / (2 beta^2 + e)
    expected = 2 * mean.detach().double() / (2 * BETA**2 + KL_STABILIZER)
    torch.testing.assert_close(mean.grad.double(), expected, rtol=1e-5, atol=1e-7)


def test_laplace_kl_matches_monte_carlo():
    mean, scale = _params(2)
    q, p = Laplace(mean, scale), Laplace(torch.zeros_like(mean), torch.full_like(mean, BETA))
    mc = _mc_kl(q, p)
    assert float(laplace_kl(mean, scale, BETA)) == pytest.approx(float(mc), rel=0.02, abs=0.02)


def test_laplace_kl_by_hand_zero_at_prior_and_nonnegative():
    mean, scale = _params(3, n=10)
    by_hand = sum(
        math.log(BETA / b) + abs(m) / BETA + b / BETA * math.exp(-abs(m) / b) - 1
        for m, b in zip(mean.tolist(), scale.tolist(), strict=True)
    )
    assert float(laplace_kl(mean, scale, BETA)) == pytest.approx(by_hand, rel=1e-12)
    assert abs(float(laplace_kl(torch.zeros(4), torch.full((4,), BETA), BETA))) < 1e-12
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        m = torch.randn(20, generator=gen)
        b = torch.rand(20, generator=gen) * 2 + 1e-3
        assert float(laplace_kl(m, b, BETA)) >= -1e-12


@torch.no_grad()
def test_method_kl_sums_every_layer():
    for name, divergence in (("blob", gaussian_kl), ("blob_laplace", laplace_kl)):
        method, model = injected(name)
        layers = method.bayesian_layers(model)
        assert len(layers) == 2 * 2 + 1  # q, v in two blocks + lm_head
        total = sum(
            float(divergence(layer.lora_A["default"].weight, layer.lora_A_rho["default"].square(), BETA))
            for layer in layers
        )
        assert float(method.kl(model)) == pytest.approx(total, rel=1e-10)
        rho = layers[0].lora_A_rho["default"]
        assert torch.equal(posterior_std(rho, method.config.parameterization), rho.square())
