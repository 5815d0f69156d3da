"""Regression tests for fixed BLoB bugs: Laplace noise extremes, softplus init, seeded CUDA streams."""

from __future__ import annotations

import math

import pytest
import torch
from method_helpers import LORA, TARGETS, tiny_llama, token_ids

from bayespeft.config import LoraSettings
from bayespeft.enums import StdParameterization
from bayespeft.methods import build_method
from bayespeft.methods.base import SamplingState
from bayespeft.methods.blob import BlobVariant

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_laplace_noise_is_finite_at_the_uniform_extremes(monkeypatch):
    """A uniform draw at the edge of its range must not give an infinite Laplace sample."""
    variant = BlobVariant(SamplingState(), StdParameterization.SQUARE, laplace=True)
    like = torch.ones(1)
    real_rand, real_uniform = torch.rand, torch.Tensor.uniform_
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.zeros_like(real_rand(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "uniform_", lambda self, low=0.0, high=1.0, **k: self.fill_(low))
    assert torch.isfinite(variant.noise(torch.Size([64]), like)).all()
    monkeypatch.setattr(torch.Tensor, "uniform_", real_uniform)
    monkeypatch.setattr(torch, "rand", real_rand)
    torch.manual_seed(0)
    sample = variant.noise(torch.Size([200_000]), like)
    assert torch.isfinite(sample).all()
    assert float(sample.var()) == pytest.approx(2.0, rel=0.03)
    assert float(sample.abs().mean()) == pytest.approx(1.0, rel=0.02)  # E|Laplace(0, 1)| = 1


@pytest.mark.parametrize(
    ("overrides", "low", "high"),
    [
        ({}, 0.05 / math.sqrt(2), 0.05),
        ({"eps": -0.05}, -1.05, -0.05),
        ({"eps": 0.05, "std_parameterization": "softplus"}, -0.95, 0.05),
    ],
)
def test_rho_initialisation_follows_the_std_parameterization(overrides, low, high):
    method = build_method("blob", **overrides)
    model = method.inject(tiny_llama(0), LoraSettings(r=8, alpha=16), TARGETS, "CAUSAL_LM")
    rho = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "lora_A_rho" in n])
    assert rho.min() >= low - 1e-7 and rho.max() <= high + 1e-7
    assert rho.max() - rho.min() > 0.8 * (high - low)  # spread over the whole interval


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_sampling_restores_the_rng_of_the_model_device(device):
    method = build_method("blob")
    model = method.inject(tiny_llama(0), LORA, TARGETS, "CAUSAL_LM").to(device)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    ids = token_ids().to(device)

    def run(seed):
        with torch.no_grad(), method.sampling(True, seed=seed):
            return model(input_ids=ids).logits

    first, again, other = run(4), run(4), run(5)
    assert torch.equal(first, again) and not torch.allclose(first, other)
    torch.manual_seed(77)
    expected = torch.rand(8, device=device)
    torch.manual_seed(77)
    run(4)
    assert torch.equal(torch.rand(8, device=device), expected)
