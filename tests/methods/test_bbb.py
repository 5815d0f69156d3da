"""BBB: Gaussian posteriors on both LoRA factors (KL, two-factor Flipout, persistence, optimisers)."""

from __future__ import annotations

import math

import pytest
import torch
from method_helpers import LORA, TARGETS, injected, linear_layer, tiny_llama, token_ids
from safetensors.torch import load_file

from bayespeft.config import TrainConfig
from bayespeft.errors import ConfigError
from bayespeft.methods import BbbConfig, BbbLora, BlobConfig, TrainingContext, build_method
from bayespeft.methods.base import ADAPTER_WEIGHTS
from bayespeft.methods.blob import gaussian_kl

D_IN, RANK, D_OUT = 6, 3, 4
SCALING = 8 / RANK  # alpha / r
CONTEXT = TrainingContext(num_examples=16, batch_size=4, batches_per_epoch=4, total_steps=10)
TRAIN = TrainConfig(lr=1e-2, warmup_ratio=0.0)
RHOS = ("lora_A_rho", "lora_B_rho")


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _named(model, pattern: str) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if pattern in n}


def _ids(optimizer) -> set[int]:
    return {id(p) for g in optimizer.param_groups for p in g["params"]}


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _layer(rho_a: float | None, rho_b: float | None):
    """One LoRA layer with W0 = 0, random A and B means, and the given (or random) rho."""
    method, model, layer = linear_layer("bbb", d_in=D_IN, d_out=D_OUT, r=RANK, alpha=8)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        layer.base_layer.weight.zero_()
        layer.base_layer.bias.zero_()
        layer.lora_A["default"].weight.copy_(torch.randn(RANK, D_IN, generator=gen))
        layer.lora_B["default"].weight.copy_(torch.randn(D_OUT, RANK, generator=gen))
        for name, value in (("lora_A_rho", rho_a), ("lora_B_rho", rho_b)):
            rho = getattr(layer, name)["default"]
            random = torch.rand(rho.shape, generator=gen) * 0.6 + 0.5  # G = rho^2 in [0.25, 1.21]
            rho.copy_(random if value is None else torch.full_like(rho, value))
    return method, model, layer


def _analytic_variance(layer, x: torch.Tensor) -> torch.Tensor:
    """Var of s (B + dB)(A + dA) x with independent entries: sum_k B^2 v_k + G_B^2 (m_k^2 + v_k)."""
    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    g_a, g_b = layer.lora_A_rho["default"].detach().square(), layer.lora_B_rho["default"].detach().square()
    m = x @ a.T  # mean of h = (A + dA) x
    v = x.square() @ g_a.square().T  # its variance
    return SCALING**2 * (b.square() @ v.T + g_b.square() @ (m.square() + v).T).T


def test_registry_config_and_rho_init():
    method = build_method("bbb")
    assert isinstance(method, BbbLora) and method.stochastic
    assert isinstance(method.config, BbbConfig) and isinstance(method.config, BlobConfig)
    assert method.config.optimization == "split"
    with pytest.raises(ConfigError, match=r"method\.beta"):
        build_method("bbb", beta=0)
    model = method.inject(tiny_llama(0), LORA, TARGETS, "CAUSAL_LM")
    a_rho, b_rho = _named(model, "lora_A_rho"), _named(model, "lora_B_rho")
    assert len(a_rho) == len(b_rho) == 5
    eps = method.config.eps
    for name, rho in b_rho.items():
        mean = _named(model, name.replace("lora_B_rho.default", "lora_B.default.weight"))
        (b,) = mean.values()
        assert rho.shape == b.shape and not b.any()  # B's mean keeps LoRA's zero init
        assert eps / math.sqrt(2) - 1e-7 <= float(rho.min()) and float(rho.max()) <= eps + 1e-7


@torch.no_grad()
def test_kl_sums_both_factors():
    method, model = injected("bbb")
    for p in _named(model, "lora_B_rho").values():
        p.uniform_(0.05, 0.4)
    beta = method.config.beta
    layers = method.bayesian_layers(model)
    assert len(layers) == 5
    total = sum(
        float(gaussian_kl(layer.lora_A["default"].weight, layer.lora_A_rho["default"].square(), beta))
        + float(gaussian_kl(layer.lora_B["default"].weight, layer.lora_B_rho["default"].square(), beta))
        for layer in layers
    )
    blob_part = float(super(BbbLora, method).kl(model))
    assert float(method.kl(model)) == pytest.approx(total, rel=1e-10)
    assert total - blob_part > 1  # B's share is really there


def test_sampling_on_off_and_seeds():
    method, model = injected("bbb")
    plain = build_method("mle").inject(tiny_llama(0), LORA, TARGETS, "CAUSAL_LM")
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "_rho" not in k})
    ids = token_ids()
    with method.sampling(False):
        mean, again = _logits(model, ids), _logits(model, ids)
    assert torch.equal(mean, again)
    torch.testing.assert_close(mean, _logits(plain, ids), rtol=0, atol=1e-6)
    with method.sampling(True):
        first, second = _logits(model, ids), _logits(model, ids)
    assert not torch.allclose(first, second) and not torch.allclose(first, mean)
    with method.sampling(True, seed=5):
        a = _logits(model, ids)
    with method.sampling(True, seed=5):
        b = _logits(model, ids)
    with method.sampling(True, seed=6):
        c = _logits(model, ids)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize(("rho_a", "rho_b"), [(None, None), (None, 0.0), (0.0, None)])
def test_output_variance_matches_the_two_factor_posterior(rho_a, rho_b):
    """Stacked groups give independent draws; both A-only and B-only noise reach the output."""
    method, model, layer = _layer(rho_a, rho_b)
    x = torch.randn(2, D_IN, generator=torch.Generator().manual_seed(11))
    k = 20000
    with torch.no_grad(), method.sampling(True, groups=k, seed=0):
        draws = model(x.repeat(k, 1)).reshape(k, 2, D_OUT)
    with torch.no_grad(), method.sampling(False):
        mean = model(x)
    var = _analytic_variance(layer, x)
    assert float(var.min()) > 0.01
    torch.testing.assert_close(draws.var(0), var, rtol=0.08, atol=0)
    assert (draws.mean(0) - mean).abs().le(5 * (var / k).sqrt()).all()


def test_b_noise_uses_one_matrix_per_group_with_per_token_signs():
    """A = I and exact (rho_A = 0), B mean 0: the output is s * Flipout_B(x) alone."""
    method, model, layer = linear_layer("bbb", d_in=RANK, d_out=D_OUT, r=RANK, alpha=8)
    with torch.no_grad():
        layer.base_layer.weight.zero_()
        layer.base_layer.bias.zero_()
        layer.lora_A["default"].weight.copy_(torch.eye(RANK))
        layer.lora_A_rho["default"].zero_()
        layer.lora_B_rho["default"].fill_(1.0)
    k, per_group = 4, 16
    x = torch.zeros(k * per_group, RANK)
    x[:, 1] = 1.0
    with torch.no_grad(), method.sampling(True, groups=k, seed=0):
        out = model(x).reshape(k, per_group, D_OUT)
    magnitude = out.abs()
    torch.testing.assert_close(magnitude, magnitude[:, :1].expand_as(magnitude))  # one E_B per group
    assert all(not torch.allclose(magnitude[0, 0], magnitude[g, 0]) for g in range(1, k))
    signs = out[0].sign()
    assert (signs > 0).any(0).all() and (signs < 0).any(0).all()  # signs flip token to token


def test_save_load_round_trips_both_rhos(tmp_path):
    method, model = injected("bbb")
    with torch.no_grad():
        for name in RHOS:
            for p in _named(model, name).values():
                p.uniform_(0.01, 0.3)
    out = method.save_adapter(model, tmp_path / "adapter")
    keys = set(load_file(out / ADAPTER_WEIGHTS))
    assert sum("lora_A_rho" in k for k in keys) == sum("lora_B_rho" in k for k in keys) == 5

    fresh_method = build_method("bbb")
    fresh = fresh_method.inject(tiny_llama(0), LORA, TARGETS, "CAUSAL_LM")
    fresh_method.load_adapter(fresh, out)
    saved = {n: p for n, p in model.named_parameters() if "lora_" in n}
    loaded = {n: p for n, p in fresh.named_parameters() if "lora_" in n}
    assert loaded.keys() == saved.keys()
    for name in saved:
        assert torch.equal(loaded[name], saved[name]), name
    ids = token_ids()
    with method.sampling(True, seed=3):
        a = _logits(model, ids)
    with fresh_method.sampling(True, seed=3):
        b = _logits(fresh, ids)
    assert torch.equal(a, b)

    mean_only = load_file(method.save_adapter(model, tmp_path / "mean", mean_only=True) / ADAPTER_WEIGHTS)
    assert mean_only and not any("rho" in k for k in mean_only)


def test_merge_is_the_posterior_mean():
    method, model = injected("bbb")
    ids = token_ids()
    with method.sampling(False):
        mean = _logits(model, ids)
    with pytest.warns(UserWarning, match="uncertainty"):
        merged = method.merge(model)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, ids), mean, rtol=1e-5, atol=1e-5)


def test_split_optimizers_keep_every_rho_out_of_adamw():
    method, model = injected("bbb", kl_period="epoch")
    opt = method.build_optimization(model, TRAIN, CONTEXT)
    main, kl = opt.optimizers["main"], opt.optimizers["kl"]
    assert isinstance(main, torch.optim.AdamW) and type(kl) is torch.optim.SGD
    groups = {name: {id(p) for p in _named(model, name).values()} for name in ("lora_A.", "lora_B.", *RHOS)}
    assert all(len(ids) == 5 for ids in groups.values())
    assert _ids(main) == groups["lora_A."] | groups["lora_B."]
    assert _ids(kl) == set().union(*groups.values())
    assert set(opt.schedulers) == {"main", "kl"}
    assert all(s.optimizer is opt.optimizers[k] for k, s in opt.schedulers.items())


@pytest.mark.parametrize("mode", ["split", "elbo"])
def test_one_step_moves_both_means_and_both_rhos(mode):
    method, model = injected("bbb", optimization=mode, kl_period="epoch")
    opt = method.build_optimization(model, TRAIN, CONTEXT)
    before = _snapshot(model)
    ids = token_ids()
    with method.sampling(True, seed=0):
        logs = opt.step(model(input_ids=ids, labels=ids).loss, lambda loss: loss.backward())
    assert set(logs) == {"nll", "kl", "weighted_kl", "neg_elbo", "pi", "lr"}
    assert {n.split(".default")[0].rsplit(".", 1)[-1] for n in before} == {"lora_A", "lora_B", *RHOS}
    for name, p in model.named_parameters():
        if name in before:
            assert not torch.equal(before[name], p.detach()), f"{name} did not move"
    assert all(p.grad is None for p in model.parameters())
