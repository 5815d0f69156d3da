"""Weight noise: the mean is the unperturbed model, the noise has the configured std, zero-shot runs."""

from __future__ import annotations

import json
import re

import pytest
import torch
from method_helpers import LORA, TARGETS, OneLinear, injected, linear_layer, tiny_llama, token_ids

from bayespeft.config import LoraSettings, TrainConfig, load_config
from bayespeft.errors import ConfigError
from bayespeft.methods import TrainingContext, build_method
from bayespeft.methods.weight_noise import WeightNoise, WeightNoiseConfig, row_rms
from bayespeft.training import Trainer

D_IN, D_OUT = 16, 6
DRAWS = 4000


def noise_layer(**overrides):
    """(method, model, layer) of weight noise on one Linear(16, 6)."""
    return linear_layer("noise", d_in=D_IN, d_out=D_OUT, **overrides)


def output_noise(method, model, x: torch.Tensor, draws: int = DRAWS, seed: int = 0) -> torch.Tensor:
    """[draws, out]: the sampled minus the mean output for one input row, one weight draw per row."""
    with torch.no_grad(), method.sampling(enabled=False):
        mean = model(x)
    with torch.no_grad(), method.sampling(enabled=True, seed=seed, groups=draws):
        sampled = model(x.expand(draws, -1))
    return sampled - mean


def excess_kurtosis(values: torch.Tensor) -> torch.Tensor:
    centred = values - values.mean(dim=0)
    return centred.pow(4).mean(dim=0) / centred.square().mean(dim=0).square() - 3


# ---- the mean and the draws ---------------------------------------------------------------------
def test_sampling_off_is_the_unperturbed_model():
    reference = tiny_llama(0)
    method, model = injected("noise", randomize=False)
    ids = token_ids()
    with torch.no_grad():
        expected = reference(ids).logits
        with method.sampling(enabled=False):
            assert torch.allclose(model(ids).logits, expected, atol=1e-6)
        with method.sampling(enabled=True, seed=3):
            assert not torch.allclose(model(ids).logits, expected, atol=1e-4)


def test_draws_are_seed_reproducible():
    method, model = injected("noise", sigma=0.05)
    ids = token_ids()
    with torch.no_grad():
        runs = []
        for seed in (1, 1, 2):
            with method.sampling(enabled=True, seed=seed):
                runs.append(model(ids).logits)
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


@pytest.mark.parametrize("distribution", ["gaussian", "laplace"])
def test_absolute_noise_std_is_sigma_times_input_norm(distribution):
    sigma = 0.3
    method, model, _ = noise_layer(sigma=sigma, distribution=distribution, relative=False)
    x = torch.randn(1, D_IN, generator=torch.Generator().manual_seed(0))
    noise = output_noise(method, model, x)
    expected = sigma * x.norm()
    assert torch.allclose(noise.std(dim=0), expected.expand(D_OUT), rtol=0.06)
    assert noise.mean(dim=0).abs().max() < 0.1 * expected

    # one input unit isolates single weight entries: Laplace tails (excess kurtosis 3), Gaussian ones (0)
    one_hot = torch.zeros(1, D_IN)
    one_hot[0, 5] = 2.0
    entries = output_noise(method, model, one_hot, seed=1)
    assert torch.allclose(entries.std(dim=0), torch.full((D_OUT,), 2 * sigma), rtol=0.08)
    kurtosis = excess_kurtosis(entries).mean()
    assert 2.0 < kurtosis < 4.5 if distribution == "laplace" else abs(kurtosis) < 0.4


def test_relative_noise_scales_with_the_row_rms_of_base_plus_adapter():
    sigma = 0.2
    method, model, layer = noise_layer(sigma=sigma, relative=True)
    row_scales = torch.tensor([0.1, 0.5, 1.0, 2.0, 5.0, 10.0]).unsqueeze(1)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        layer.base_layer.weight.mul_(row_scales)
        layer.lora_A["default"].weight.copy_(torch.randn(4, D_IN, generator=gen))
        layer.lora_B["default"].weight.copy_(torch.randn(D_OUT, 4, generator=gen) * 0.02)
    base = layer.base_layer.weight.detach()
    delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    rms = (base + delta.detach()).square().mean(dim=1).sqrt()
    assert torch.allclose(row_rms(layer, "default"), rms, rtol=1e-5)
    assert rms.max() / rms.min() > 5  # rows of very different scales
    assert not torch.allclose(rms, base.square().mean(dim=1).sqrt(), rtol=0.01)  # the adapter counts

    x = torch.randn(1, D_IN, generator=gen)
    noise = output_noise(method, model, x)
    assert torch.allclose(noise.std(dim=0), sigma * rms * x.norm(), rtol=0.06)


def test_groups_draw_independent_weights():
    method, model, _ = noise_layer(sigma=0.5, relative=False)
    x = torch.randn(1, D_IN).expand(3, -1)  # the same token three times per group
    with torch.no_grad(), method.sampling(enabled=False):
        mean = model(x)
    with torch.no_grad(), method.sampling(enabled=True, seed=0, groups=2):
        first, second = (model(torch.cat([x, x])) - mean.repeat(2, 1)).chunk(2)
    assert not torch.allclose(first, second, atol=1e-3)
    with pytest.raises(ValueError, match="cannot hold 2 stacked"), method.sampling(groups=2):
        model(torch.randn(3, D_IN))


# ---- method interface ----------------------------------------------------------------------------
def test_config_is_validated():
    assert WeightNoiseConfig().distribution == "gaussian"
    assert build_method("noise", distribution="LAPLACE").config.distribution == "laplace"
    for sigma in (0.0, -0.1):
        with pytest.raises(ConfigError, match=re.escape("method.sigma")):
            build_method("noise", sigma=sigma)
    with pytest.raises(ConfigError, match=re.escape("method.distribution")):
        build_method("noise", distribution="cauchy")


def test_training_steps_are_refused_and_there_is_no_kl():
    method, model = injected("noise", randomize=False)
    assert isinstance(method, WeightNoise) and method.stochastic and method.kl(model) is None
    context = TrainingContext(num_examples=8, batch_size=2, batches_per_epoch=4, total_steps=3)
    with pytest.raises(ConfigError, match=re.escape("train.max_steps must be 0 for noise")):
        method.build_optimization(model, TrainConfig(), context)
    context.total_steps = 0
    assert method.build_optimization(model, TrainConfig(), context).optimizers == {}


def test_save_load_merge_keep_the_mean(tmp_path):
    method, model = injected("noise")
    ids = token_ids()
    with torch.no_grad(), method.sampling(enabled=False):
        mean = model(ids).logits
    folder = method.save_adapter(model, tmp_path / "adapter")
    assert all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in method.adapter_state(model))

    loader = build_method("noise")
    loaded = loader.inject(tiny_llama(0), LORA, TARGETS, "CAUSAL_LM")
    loader.load_adapter(loaded, folder)
    with torch.no_grad(), loader.sampling(enabled=False):
        assert torch.allclose(loaded(ids).logits, mean, atol=1e-5)
    with pytest.warns(UserWarning, match="posterior mean"):
        merged = loader.merge(loaded)
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, mean, atol=1e-4)


def test_source_adapter_is_the_mean(tmp_path):
    torch.manual_seed(0)
    mle = build_method("mle")
    source = mle.inject(OneLinear(D_IN, D_OUT), LoraSettings(r=4, alpha=8), ["proj"], None)
    with torch.no_grad():
        source.base_model.model.proj.lora_B["default"].weight.normal_()
    folder = mle.save_adapter(source, tmp_path / "src")
    x = torch.randn(5, D_IN)
    method, model, _ = noise_layer(source_adapter=str(folder))
    with torch.no_grad(), method.sampling(enabled=False):
        assert torch.allclose(model(x), source(x), atol=1e-6)
    with pytest.raises(ConfigError, match=re.escape("model.lora.r")):
        noise_layer(source_adapter=str(folder), r=2)


# ---- end to end ----------------------------------------------------------------------------------
def test_zero_shot_run_reports_uncertainty(tmp_path, tiny_llama_dir, shared_data):
    overrides = [
        f"model.name={tiny_llama_dir}",
        "method.name=noise",
        "method.sigma=0.05",
        "data.dataset=arc_easy",
        f"data.data_dir={shared_data}",
        "data.max_train_examples=8",
        "data.max_eval_examples=6",
        "data.max_length=96",
        "train.max_steps=0",
        "train.batch_size=2",
        "eval.n_samples=3",
        "eval.batch_size=6",
    ]
    payload = Trainer(load_config(None, overrides), tmp_path / "run", progress=False).run_training()
    assert payload["status"] == "finished"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    flat = json.dumps(metrics)
    assert '"acc"' in flat and '"ece"' in flat
    values = list(_find(metrics, "mutual_information"))
    assert values and all(v > 0 for v in values)


def _find(tree, key: str):
    """Every value stored under ``key`` anywhere in a nested dict/list."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key and isinstance(v, int | float):
                yield v
            else:
                yield from _find(v, key)
    elif isinstance(tree, list):
        for item in tree:
            yield from _find(item, key)
