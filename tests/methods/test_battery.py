"""The shared method battery: every generic property, checked for every method in one table.

Adding a method is one row in ``METHOD_CONFIGS`` (registered name + config overrides); every test
below is parametrised over the table. Each case is a tiny random Llama with LoRA on q_proj,
v_proj and lm_head whose adapter tensors are perturbed deterministically, so that B is nonzero
and posterior noise reaches the output.
"""

from __future__ import annotations

import atexit
import functools
import math
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from method_helpers import LORA, TARGETS, tiny_llama, token_ids

from bayespeft.config import TrainConfig
from bayespeft.errors import ConfigError, RunDirError
from bayespeft.methods import Method, TrainingContext, build_method, method_names
from bayespeft.predictive import posterior_predictive, posterior_predictive_from_probs

# ---- the table ----------------------------------------------------------------------------------
SOURCE_ADAPTER = "<source adapter>"  # an override value replaced by a saved mle adapter (methods built on one)


def _row(name: str, overrides: dict):
    """One battery case."""
    return pytest.param(name, overrides, id=name)


METHOD_CONFIGS = [
    _row("mle", {}),
    _row("map", {}),
    _row("blob", {}),
    _row("blob_laplace", {}),
    _row("bbb", {}),
    _row("mcdropout", {"dropout": 0.2}),
    _row("ensemble", {"size": 3}),
    _row("inducing", {}),
    _row("tfb", {"source_adapter": SOURCE_ADAPTER, "sigma": 0.01}),
    _row("noise", {"sigma": 0.05}),
    _row("laplace", {"source_adapter": SOURCE_ADAPTER, "prior_optimization": "none", "link_samples": 16}),
]

# Training-free methods: the optimisation check asserts that training is refused instead.
TRAINING_FREE = {"laplace", "noise", "tfb"}
# Post-hoc predictive methods: forward passes are deterministic, the predictive is sampled.
PREDICTIVE_ONLY = {"laplace"}

battery = pytest.mark.parametrize(("name", "overrides"), METHOD_CONFIGS)

CHOICES = [3, 11, 29, 42]  # the token ids the fake task scores as classes
CONTEXT = TrainingContext(num_examples=8, batch_size=2, batches_per_epoch=4, total_steps=8)
TRAIN = TrainConfig(lr=1e-2, warmup_ratio=0.0)


# ---- helpers ------------------------------------------------------------------------------------
def perturb_adapter(model: torch.nn.Module, seed: int = 1, scale: float = 0.5) -> None:
    """Deterministically move every trainable ``lora_`` tensor off its init.

    Means (A, B, ...) are replaced by N(0, scale^2) draws; std parameters (names with ``rho``)
    get a small additive nudge so they stay in their initialised regime.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" not in name or not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=gen).to(p.dtype)
            if "rho" in name:
                p.add_(0.02 * noise)
            else:
                p.copy_(scale * noise)


@functools.cache
def source_adapter() -> str:
    """A perturbed mle adapter on the battery's model and LoRA shape, saved once per session."""
    method = build_method("mle")
    model = method.inject(tiny_llama(0), LORA, TARGETS, "CAUSAL_LM")
    perturb_adapter(model, seed=2)
    folder = Path(tempfile.mkdtemp(prefix="battery-source-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return str(method.save_adapter(model, folder / "adapter"))


def make(name: str, overrides: dict, seed: int = 0, perturb: bool = True) -> tuple[Method, torch.nn.Module]:
    assert name in method_names(), f"method {name!r} is not registered"
    overrides = {k: source_adapter() if v == SOURCE_ADAPTER else v for k, v in overrides.items()}
    method = build_method(name, **overrides)
    model = method.inject(tiny_llama(seed), LORA, TARGETS, "CAUSAL_LM")
    if perturb:
        perturb_adapter(model)
    model.eval()
    return method, model


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def adapter_tensors(model) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items() if "lora_" in n}


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class FakeTask:
    """The minimum a task offers ``predictive_samples``: last-position logits over a few tokens."""

    def class_logits(self, model, batch, repeats: int) -> torch.Tensor:
        ids = batch["input_ids"].repeat(repeats, 1)  # sample-major stacking
        with torch.no_grad():
            return model(input_ids=ids).logits[:, -1, CHOICES]


# ---- coverage -----------------------------------------------------------------------------------
def test_every_registered_method_is_in_the_battery():
    covered = {p.values[0] for p in METHOD_CONFIGS}
    missing = sorted(set(method_names()) - covered)
    assert not missing, f"add a row to METHOD_CONFIGS for: {missing}"


# ---- 1. save / load round trip ------------------------------------------------------------------
@battery
def test_save_load_round_trip(tmp_path, name, overrides):
    method, model = make(name, overrides)
    method.save_adapter(model, tmp_path / "adapter")

    fresh_method, fresh = make(name, overrides, perturb=False)
    saved, before = adapter_tensors(model), adapter_tensors(fresh)
    assert saved.keys() == before.keys() and saved
    assert not all(torch.equal(saved[k], before[k]) for k in saved), "fresh model already equals the saved one"
    fresh_method.load_adapter(fresh, tmp_path / "adapter")
    loaded = adapter_tensors(fresh)
    for key in saved:
        assert torch.equal(loaded[key], saved[key]), key

    ids = token_ids()
    with method.sampling(False):
        mean = logits(model, ids)
    with fresh_method.sampling(False):
        assert torch.equal(logits(fresh, ids), mean)
    if method.stochastic:
        with method.sampling(True, seed=3):
            sample = logits(model, ids)
        with fresh_method.sampling(True, seed=3):
            assert torch.equal(logits(fresh, ids), sample)


# ---- 2. sampling on / off -----------------------------------------------------------------------
@battery
def test_sampling_on_off(name, overrides):
    method, model = make(name, overrides)
    ids = token_ids()
    with method.sampling(False):
        mean = logits(model, ids)
    # draws are numbered by offset (ensemble members); other methods draw afresh on every pass
    with method.sampling(True):
        first = logits(model, ids)
    with method.sampling(True, offset=1):
        second = logits(model, ids)
    if name in PREDICTIVE_ONLY:  # weights are never sampled: uncertainty enters in the predictive
        assert torch.equal(first, mean) and torch.equal(second, mean)
    elif method.stochastic:
        assert not torch.allclose(first, second), "two sampled passes agree"
        assert not torch.allclose(first, mean), "a sampled pass equals the mean"
        with method.sampling(True, seed=5, offset=1):
            a = logits(model, ids)
        with method.sampling(True, seed=5, offset=1):
            b = logits(model, ids)
        assert torch.equal(a, b), "seeded sampling does not reproduce"
    else:
        assert torch.equal(first, mean) and torch.equal(second, mean)


# ---- 3. mean mode is deterministic --------------------------------------------------------------
@battery
@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
def test_mean_mode_is_deterministic(name, overrides, train_mode):
    method, model = make(name, overrides)
    model.train(train_mode)
    ids = token_ids()
    with method.sampling(False):
        first, second = logits(model, ids), logits(model, ids)
    assert torch.equal(first, second)
    model.eval()
    with method.sampling(False):
        assert torch.equal(logits(model, ids), first), "train-mode mean differs from eval-mode mean"


# ---- 4. KL ------------------------------------------------------------------------------------------
@battery
def test_kl_is_none_or_a_finite_nonnegative_float64_scalar(name, overrides):
    method, model = make(name, overrides)
    kl = method.kl(model)
    if kl is None:  # non-variational (mle, map, mcdropout): no KL term
        return
    assert isinstance(kl, torch.Tensor) and kl.dim() == 0
    assert kl.dtype == torch.float64
    value = float(kl.detach())
    assert math.isfinite(value) and value >= 0


# ---- 5. finite outputs in fp32 and bf16 ---------------------------------------------------------
@battery
@pytest.mark.parametrize("precision", ["fp32", "bf16", "autocast"])
def test_finite_outputs(name, overrides, precision):
    method, model = make(name, overrides)
    if precision == "bf16":
        model.to(torch.bfloat16)
    ids = token_ids()
    for enabled in (False, True):
        with method.sampling(enabled, seed=0):
            if precision == "autocast":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = logits(model, ids)
            else:
                out = logits(model, ids)
        assert torch.isfinite(out).all(), f"non-finite logits with sampling={enabled}"
        if precision == "bf16":
            assert out.dtype == torch.bfloat16


# ---- 6. predictive probabilities ----------------------------------------------------------------
@battery
def test_predictive_probabilities_sum_to_one(name, overrides):
    method, model = make(name, overrides)
    ids = token_ids(batch=3, length=5)
    batch = {"input_ids": ids, "labels": torch.zeros(3, dtype=torch.long)}
    task = FakeTask()
    if name in PREDICTIVE_ONLY:  # its predictive needs the fitted posterior (tested in test_laplace.py)
        with pytest.raises(RunDirError, match="no fitted posterior"):
            method.predictive_samples(model, task, batch, n_samples=4, samples_per_pass=2)
        return
    with method.sampling(True, seed=0):
        probs = method.predictive_samples(model, task, batch, n_samples=4, samples_per_pass=2)
    draws = method.num_draws(4)
    assert draws >= (2 if method.stochastic else 1) and (method.stochastic or draws == 1)
    assert probs.shape == (3, draws, len(CHOICES))
    assert torch.isfinite(probs).all() and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, draws), rtol=0, atol=1e-5)
    predictive = posterior_predictive_from_probs(probs)
    torch.testing.assert_close(predictive, probs.mean(1))
    torch.testing.assert_close(predictive.sum(-1), torch.ones(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(posterior_predictive(probs.log()), predictive, rtol=0, atol=1e-5)
    if method.stochastic:
        assert not torch.allclose(probs[:, 0], probs[:, 1]), "stacked draws agree"

    with method.sampling(True, seed=0):
        mean_probs = method.predictive_samples(model, task, batch, n_samples=0, samples_per_pass=2)
    assert mean_probs.shape == (3, 1, len(CHOICES))
    torch.testing.assert_close(mean_probs.sum(-1), torch.ones(3, 1), rtol=0, atol=1e-5)
    with method.sampling(False):
        expected = torch.softmax(logits(model, ids)[:, -1, CHOICES].float(), -1)
    torch.testing.assert_close(mean_probs[:, 0], expected, rtol=0, atol=1e-6)


# ---- 7. one optimisation step -------------------------------------------------------------------
@battery
def test_one_optimization_step(name, overrides):
    method, model = make(name, overrides)
    model.train()
    if name in TRAINING_FREE:
        with pytest.raises(ConfigError, match=r"train\.max_steps must be 0"):
            method.build_optimization(model, TRAIN, CONTEXT)
        return
    opt = method.build_optimization(model, TRAIN, CONTEXT)
    groups = method.train_groups
    ids = token_ids().repeat(groups, 1)
    before = trainable(model)
    with method.sampling(True, seed=0, groups=groups):
        nll = model(input_ids=ids, labels=ids).loss
    logs = opt.step(nll, lambda loss: loss.backward())
    assert logs and all(math.isfinite(v) for v in logs.values()), logs
    assert "nll" in logs
    after = trainable(model)
    assert any(not torch.equal(before[k], after[k]) for k in before), "no trainable tensor moved"
    assert all(torch.isfinite(t).all() for t in after.values())
    assert all(p.grad is None for p in model.parameters()), "gradients left after the step"


# ---- 8. merge -----------------------------------------------------------------------------------------
@battery
def test_merge_equals_mean_and_warns_iff_stochastic(name, overrides):
    method, model = make(name, overrides)
    ids = token_ids()
    with method.sampling(False):
        mean = logits(model, ids)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = method.merge(model)
    merge_warnings = [w for w in caught if issubclass(w.category, UserWarning) and "merging" in str(w.message)]
    assert bool(merge_warnings) == method.stochastic, [str(w.message) for w in caught]
    merged.eval()
    torch.testing.assert_close(logits(merged, ids), mean, rtol=1e-5, atol=1e-5)
