"""Flipout sampling at one layer: noise variance, zero mean, per-token signs, shared E per group."""

from __future__ import annotations

import torch
from method_helpers import linear_layer

D_IN, RANK = 8, 4
SCALING = 8 / RANK  # alpha / r


def _noise_layer(method_name: str = "blob", **overrides):
    """W0 = 0, A mean = 0, B = I, so the layer output is SCALING * (pre-B Flipout noise)."""
    method, model, layer = linear_layer(method_name, d_in=D_IN, d_out=RANK, r=RANK, alpha=8, **overrides)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        layer.base_layer.weight.zero_()
        layer.base_layer.bias.zero_()
        layer.lora_A["default"].weight.zero_()
        layer.lora_B["default"].weight.copy_(torch.eye(RANK))
        layer.lora_A_rho["default"].copy_(torch.rand(RANK, D_IN, generator=gen) + 0.5)  # G = rho^2 in [0.25, 2.25]
    return method, model, layer


def _noise(model, x, method, **kw) -> torch.Tensor:
    with torch.no_grad(), method.sampling(True, **kw):
        return model(x) / SCALING


def _analytic_variance(layer, x: torch.Tensor, laplace: bool = False) -> torch.Tensor:
    g = layer.lora_A_rho["default"].detach().square()
    var = x.square() @ g.square().T  # sum_j G_ij^2 x_j^2 per token and rank unit
    return 2 * var if laplace else var


def _x(tokens: int = 3) -> torch.Tensor:
    return torch.randn(tokens, D_IN, generator=torch.Generator().manual_seed(11))


def test_noise_variance_and_mean_over_forward_draws():
    method, model, layer = _noise_layer()
    x = _x()
    torch.manual_seed(0)
    draws = torch.stack([_noise(model, x, method) for _ in range(3000)])
    var = _analytic_variance(layer, x)
    torch.testing.assert_close(draws.var(0), var, rtol=0.1, atol=0)
    assert (draws.mean(0).abs() < 4 * (var / draws.shape[0]).sqrt()).all()


def test_noise_variance_with_stacked_groups():
    method, model, layer = _noise_layer()
    x = _x(2)
    k = 4000
    torch.manual_seed(1)
    draws = _noise(model, x.repeat(k, 1), method, groups=k).reshape(k, 2, RANK)
    torch.testing.assert_close(draws.var(0), _analytic_variance(layer, x), rtol=0.1, atol=0)


def test_laplace_noise_variance():
    method, model, layer = _noise_layer("blob_laplace")
    x = _x()
    torch.manual_seed(2)
    draws = torch.stack([_noise(model, x, method) for _ in range(4000)])
    var = _analytic_variance(layer, x, laplace=True)
    torch.testing.assert_close(draws.var(0), var, rtol=0.12, atol=0)
    assert (draws.mean(0).abs() < 4 * (var / draws.shape[0]).sqrt()).all()
    # a one-hot input isolates a single entry: var = 2 G^2, and the noise is Laplace (kurtosis 6), not Gaussian
    onehot = torch.zeros(1, D_IN)
    onehot[0, 2] = 1.0
    entry = torch.stack([_noise(model, onehot, method) for _ in range(4000)])[:, 0, 0]
    g = layer.lora_A_rho["default"].detach()[0, 2].square()
    assert abs(float(entry.var() / (2 * g**2)) - 1) < 0.12
    kurtosis = float(((entry - entry.mean()) ** 4).mean() / entry.var() ** 2)
    assert kurtosis > 4.5  # Gaussian: 3, Laplace: 6


def test_identical_tokens_get_independent_signs():
    method, model, _ = _noise_layer()
    x = _x(1).repeat(2, 1)  # two identical tokens in one batch
    torch.manual_seed(3)
    draws = torch.stack([_noise(model, x, method) for _ in range(3000)])
    first, second = draws[:, 0], draws[:, 1]
    assert not torch.allclose(first, second)
    assert not torch.allclose(first.abs(), second.abs())  # input-side signs differ too, not only output signs
    # without per-token signs the two tokens would be perfectly correlated; Flipout decorrelates them
    corr = ((first - first.mean(0)) * (second - second.mean(0))).mean(0) / (first.std(0) * second.std(0))
    assert corr.abs().max() < 0.1


def test_rank_side_signs_flip_per_token():
    """One-hot tokens: |noise_i| = G_ij |E_ij| for every token; the signs vary token to token."""
    method, model, _ = _noise_layer()
    onehot = torch.zeros(64, D_IN)
    onehot[:, 5] = 1.0
    torch.manual_seed(4)
    noise = _noise(model, onehot, method)
    torch.testing.assert_close(noise.abs(), noise[:1].abs().expand_as(noise))  # one E for the whole pass
    signs = noise.sign()
    assert (signs > 0).any(0).all() and (signs < 0).any(0).all()


def test_one_noise_matrix_per_group():
    method, model, _ = _noise_layer()
    k, per_group = 5, 6
    x = torch.zeros(k * per_group, D_IN)
    x[:, 1] = 1.0
    torch.manual_seed(5)
    noise = _noise(model, x, method, groups=k).abs().reshape(k, per_group, RANK)
    # within a group every token sees the same E (same |noise|) ...
    torch.testing.assert_close(noise, noise[:, :1].expand_as(noise))
    # ... and different groups see independent E
    for g in range(1, k):
        assert not torch.allclose(noise[0, 0], noise[g, 0])


def test_flipout_with_sequence_dims_groups_along_batch():
    """Causal-LM shape (batch, seq, d): groups split the batch dim, sample-major."""
    method, model, _ = _noise_layer()
    k, batch, seq = 3, 2, 4
    x = torch.zeros(k * batch, seq, D_IN)
    x[..., 0] = 1.0
    torch.manual_seed(6)
    noise = _noise(model, x, method, groups=k).abs().reshape(k, batch * seq, RANK)
    torch.testing.assert_close(noise, noise[:, :1].expand_as(noise))
    assert not torch.allclose(noise[0, 0], noise[1, 0])
    assert not torch.allclose(noise[1, 0], noise[2, 0])
