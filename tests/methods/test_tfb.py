"""TFB: SVD reparameterisation, the sigma -> rho map, the noise it induces, the search, a full run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from method_helpers import OneLinear

from bayespeft.config import LoraSettings, TrainConfig, load_config
from bayespeft.errors import ConfigError, RunDirError
from bayespeft.methods import TrainingContext, build_method
from bayespeft.methods.blob import posterior_std
from bayespeft.methods.tfb import TfbConfig, TfbLora, reparameterize, search_sigma
from bayespeft.training import Trainer

D_IN, D_OUT, RANK, ALPHA = 16, 12, 4, 8.0
SETTINGS = LoraSettings(r=RANK, alpha=ALPHA)


def source_adapter(folder: Path, seed: int = 1) -> Path:
    """An mle adapter on one Linear with random, well-conditioned A and B, saved in peft format."""
    torch.manual_seed(0)
    method = build_method("mle")
    model = method.inject(OneLinear(D_IN, D_OUT), SETTINGS, ["proj"], None)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer = model.base_model.model.proj
        layer.lora_A["default"].weight.copy_(torch.randn(RANK, D_IN, generator=gen))
        layer.lora_B["default"].weight.copy_(torch.randn(D_OUT, RANK, generator=gen) * torch.tensor([2.0, 1, 0.5, 0.1]))
    return method.save_adapter(model, folder)


def tfb_layer(source: Path, lora: LoraSettings = SETTINGS, **overrides):
    """(method, model, LoRA layer) of TFB on one Linear, source weights loaded."""
    torch.manual_seed(0)
    method = build_method("tfb", source_adapter=str(source), **overrides)
    model = method.inject(OneLinear(D_IN, D_OUT), lora, ["proj"], None)
    return method, model, model.base_model.model.proj


def factors(layer) -> tuple[torch.Tensor, torch.Tensor]:
    return layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone()


# ---- reparameterisation and rho -----------------------------------------------------------------
def test_source_weights_are_loaded_and_svd_keeps_the_product(tmp_path):
    source = source_adapter(tmp_path / "src")
    method, model, layer = tfb_layer(source)
    saved = build_method("mle")
    reference = saved.inject(OneLinear(D_IN, D_OUT), SETTINGS, ["proj"], None)
    saved.load_adapter(reference, source)
    A, B = factors(reference.base_model.model.proj)
    assert torch.equal(factors(layer)[0], A) and torch.equal(factors(layer)[1], B)

    method.reparameterize_layers(model)
    new_A, new_B = factors(layer)
    torch.testing.assert_close(new_B @ new_A, B @ A, atol=1e-5, rtol=1e-5)
    d = torch.linalg.svdvals(B)
    gram = new_B.T @ new_B  # orthogonal columns scaled by the singular values: diag(d^2)
    torch.testing.assert_close(gram, torch.diag(d.square()), atol=1e-5, rtol=1e-5)


def test_layers_with_fewer_outputs_than_the_rank_keep_the_product():
    """A 2-class head with r = 4: full SVD, B' = [U diag(d), 0]; noise on the zero columns never reaches the output."""
    gen = torch.Generator().manual_seed(3)
    A, B = torch.randn(RANK, D_IN, generator=gen), torch.randn(2, RANK, generator=gen)
    new_A, new_B = reparameterize(A, B)
    assert new_A.shape == A.shape and new_B.shape == B.shape
    torch.testing.assert_close(new_B @ new_A, B @ A, atol=1e-5, rtol=1e-5)
    assert torch.equal(new_B[:, 2:], torch.zeros(2, RANK - 2))
    torch.testing.assert_close(new_B[:, :2].T @ new_B[:, :2], torch.diag(torch.linalg.svdvals(B).square()))
    noise = torch.zeros_like(new_A)
    noise[2:] = torch.randn(RANK - 2, D_IN, generator=gen) * 1e4
    torch.testing.assert_close(new_B @ (new_A + noise), B @ A, atol=1e-4, rtol=1e-5)


def test_rho_encodes_omega_per_row(tmp_path):
    method, model, layer = tfb_layer(source_adapter(tmp_path / "src"))
    method.reparameterize_layers(model)
    _, B = factors(layer)
    d = torch.linalg.vector_norm(B, dim=0)
    method.set_sigma(model, 0.01)
    G = posterior_std(layer.lora_A_rho["default"].detach(), method.config.parameterization)
    expected = (0.01 / (d + 1e-6)).unsqueeze(1).expand(-1, D_IN)
    torch.testing.assert_close(G, expected, rtol=1e-5, atol=0)
    assert torch.allclose(layer.lora_A_rho["default"] ** 2, G)


def test_softplus_parameterization_inverts_to_the_same_omega(tmp_path):
    method, model, layer = tfb_layer(source_adapter(tmp_path / "src"), eps=-6.0)
    method.reparameterize_layers(model)
    method.set_sigma(model, 0.01)
    d = torch.linalg.vector_norm(factors(layer)[1], dim=0)
    G = posterior_std(layer.lora_A_rho["default"].detach(), method.config.parameterization)
    torch.testing.assert_close(G[:, 0], 0.01 / (d + 1e-6), rtol=1e-4, atol=0)


def test_induced_weight_noise_has_scale_sigma(tmp_path):
    """Through the Flipout forward: one-hot inputs read out columns of B' dA' = sigma U z."""
    sigma, draws = 0.05, 4000
    method, model, layer = tfb_layer(source_adapter(tmp_path / "src"))
    method.reparameterize_layers(model)
    method.set_sigma(model, sigma)
    x = torch.zeros(draws, D_IN)
    x[:, 3] = 1.0
    with torch.no_grad():
        with method.sampling(False):
            mean = model(x)
        with method.sampling(True, seed=0, groups=draws):
            sampled = model(x)
    noise = (sampled - mean) / layer.scaling["default"]  # column 3 of B' dA', one draw per row
    _, B = factors(layer)
    U = B / torch.linalg.vector_norm(B, dim=0)
    in_span = noise @ U @ U.T
    torch.testing.assert_close(in_span, noise, atol=1e-6, rtol=1e-4)
    z = noise @ U / sigma  # isotropic in the column space of B: unit variance, uncorrelated
    torch.testing.assert_close(z.T @ z / draws, torch.eye(RANK), atol=0.08, rtol=0)
    per_entry = noise.var(dim=0).mean()  # sigma^2 r / out on average over the out entries
    assert per_entry == pytest.approx(sigma**2 * RANK / D_OUT, rel=0.08)


# ---- the search -----------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [0.0013, 0.0071, 0.0149])
def test_search_finds_the_largest_sigma_within_tolerance(threshold):
    tolerance, low, high, iterations = 0.003, 0.001, 0.015, 10
    sigma, trace = search_sigma(lambda s: tolerance * s / threshold, low, high, tolerance, iterations)
    assert len(trace) == iterations
    assert sigma <= threshold < sigma + (high - low) / 2**iterations
    assert all(metric <= tolerance for s, metric in trace if s <= sigma)
    assert max(s for s, metric in trace if metric <= tolerance) == sigma


def test_search_edges_and_early_stop():
    sigma, trace = search_sigma(lambda s: 1.0, 0.001, 0.015, 0.003, 5)
    assert sigma == 0.001 and len(trace) == 5  # nothing accepted: the lower bound
    sigma, trace = search_sigma(lambda s: 0.0, 0.001, 0.015, 0.003, 10, min_width=0.001)
    assert len(trace) == 4  # 0.014 / 2^4 < 0.001
    assert sigma == trace[-1][0] and sigma > 0.014


# ---- validation and errors -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"sigma": 0.0}, "method.sigma"),
        ({"sigma": -0.01}, "method.sigma"),
        ({"sigma_max": 0.001, "sigma_min": 0.001}, "method.sigma_max"),
        ({"tolerance": 0.0}, "method.tolerance"),
        ({"anchor_size": 0}, "method.anchor_size"),
        ({"criterion": "kl"}, "method.criterion"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=re.escape(field) + " must"):
        TfbConfig(source_adapter="somewhere", **overrides).validate()


def test_source_adapter_is_required_and_must_exist(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("method.source_adapter: TFB needs a trained adapter")):
        build_method("tfb")
    with pytest.raises(RunDirError, match="nowhere"):
        tfb_layer(tmp_path / "nowhere")
    source_adapter(tmp_path / "run" / "adapter")
    with pytest.raises(RunDirError, match="a run directory"):
        tfb_layer(tmp_path / "run")


def test_source_lora_shape_must_match(tmp_path):
    source = source_adapter(tmp_path / "src")
    with pytest.raises(ConfigError, match=re.escape("model.lora.r")):
        tfb_layer(source, LoraSettings(r=2, alpha=ALPHA))
    with pytest.raises(ConfigError, match=re.escape("model.lora.alpha")):
        tfb_layer(source, LoraSettings(r=RANK, alpha=2 * ALPHA))


def test_training_steps_and_empty_anchor_are_refused(tmp_path):
    method, model, _ = tfb_layer(source_adapter(tmp_path / "src"))
    context = TrainingContext(num_examples=8, batch_size=2, batches_per_epoch=4, total_steps=5)
    with pytest.raises(ConfigError, match=re.escape("train.max_steps must be 0 for tfb")):
        method.build_optimization(model, TrainConfig(), context)
    context.total_steps = 0
    assert method.build_optimization(model, TrainConfig(), context).optimizers == {}
    with pytest.raises(ConfigError, match="anchor set is empty"):
        method.fit_posthoc(model, None, [], None, None)


# ---- end to end ------------------------------------------------------------------------------------
def run_config(model_dir: Path, data_dir: Path, method: str, steps: int, *extra: str):
    return load_config(
        None,
        [
            f"model.name={model_dir}",
            f"method.name={method}",
            "data.dataset=arc_easy",
            f"data.data_dir={data_dir}",
            "data.max_train_examples=12",
            "data.max_eval_examples=6",
            "data.max_length=96",
            f"train.max_steps={steps}",
            "train.batch_size=2",
            "train.lr=0.05",
            "eval.n_samples=0",
            "eval.batch_size=6",
            *extra,
        ],
    )


def test_tfb_run_after_an_mle_run(tmp_path, tiny_llama_dir, shared_data):
    mle_run, tfb_run = tmp_path / "mle", tmp_path / "tfb"
    Trainer(run_config(tiny_llama_dir, shared_data, "mle", 4), mle_run, progress=False).run_training()
    extra = [f"method.source_adapter={mle_run / 'adapter'}", "method.anchor_size=6", "method.search_samples=3"]
    extra += ["method.search_iterations=4", "method.sigma_max=0.5", "method.sigma_min=0.01"]
    config = run_config(tiny_llama_dir, shared_data, "tfb", 0, *extra)
    payload = Trainer(config, tfb_run, progress=False).run_training()
    assert payload["status"] == "finished"

    record = json.loads((tfb_run / "metrics.json").read_text())["train"]
    assert 0.01 <= record["sigma"] < 0.5 and record["anchor_size"] == 6 and record["criterion"] == "nll"
    assert len(record["sigma_search"]) == 4
    accepted = [s for s, metric in record["sigma_search"] if metric <= record["tolerance"]]
    assert record["sigma"] == max(accepted, default=0.01)
    saved = json.loads((tfb_run / "adapter" / "bayespeft_method.json").read_text())
    assert saved["method"] == "tfb" and saved["config"]["sigma"] == record["sigma"]
    assert config.method.sigma is None  # the run's config is not rewritten

    def probs(run: Path) -> torch.Tensor:
        lines = (run / "predictions.jsonl").read_text().splitlines()
        return torch.tensor([json.loads(line)["probs"] for line in lines])

    torch.testing.assert_close(probs(tfb_run), probs(mle_run), atol=1e-5, rtol=1e-4)  # mean: B'A' = BA


def test_given_sigma_skips_the_search(tmp_path):
    method, model, layer = tfb_layer(source_adapter(tmp_path / "src"), sigma=0.02)
    assert isinstance(method, TfbLora)
    record = method.fit_posthoc(model, None, [], None, None)
    assert record["sigma"] == 0.02 and record["sigma_search"] == [] and method.config.sigma == 0.02
    d = torch.linalg.vector_norm(factors(layer)[1], dim=0)
    G = posterior_std(layer.lora_A_rho["default"].detach(), method.config.parameterization)
    torch.testing.assert_close(G[:, 0], 0.02 / (d + 1e-6), rtol=1e-5, atol=0)
