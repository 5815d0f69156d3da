"""Sampling on/off, seeding, nesting and stacked posterior samples (groups) on a tiny Llama."""

from __future__ import annotations

import pytest
import torch
from method_helpers import LORA, TARGETS, injected, linear_layer, tiny_llama, token_ids

from bayespeft.methods import build_method


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_mean_mode_is_deterministic_and_equals_plain_lora_by_hand():
    method, model, layer = linear_layer(d_in=8, d_out=5, r=4, alpha=8)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    x = torch.randn(7, 8)
    with torch.no_grad(), method.sampling(False):
        first, second = model(x), model(x)
    assert torch.equal(first, second)
    w0, b0 = layer.base_layer.weight.detach(), layer.base_layer.bias.detach()
    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    by_hand = x @ w0.T + b0 + (8 / 4) * (x @ a.T) @ b.T
    torch.testing.assert_close(first, by_hand, rtol=1e-6, atol=1e-6)


def test_mean_mode_equals_mle_lora_with_same_weights():
    method, model = injected("blob")
    mle = build_method("mle")
    plain = mle.inject(tiny_llama(0), LORA, TARGETS, "CAUSAL_LM")
    state = {k: v for k, v in model.state_dict().items() if "lora_A_rho" not in k}
    plain.load_state_dict(state, strict=True)
    ids = token_ids()
    with method.sampling(False):
        mean = _logits(model, ids)
    torch.testing.assert_close(mean, _logits(plain, ids), rtol=0, atol=1e-6)


def test_sampling_on_passes_differ():
    method, model = injected("blob")
    ids = token_ids()
    with method.sampling(True):
        first, second = _logits(model, ids), _logits(model, ids)
    assert not torch.allclose(first, second)
    with method.sampling(False):
        mean = _logits(model, ids)
    assert not torch.allclose(first, mean)


def test_default_state_samples():
    _, model = injected("blob")
    ids = token_ids()
    assert not torch.allclose(_logits(model, ids), _logits(model, ids))


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone():
    method, model = injected("blob")
    ids = token_ids()
    with method.sampling(True, seed=5):
        first = _logits(model, ids)
    with method.sampling(True, seed=5):
        second = _logits(model, ids)
    with method.sampling(True, seed=6):
        other = _logits(model, ids)
    assert torch.equal(first, second)
    assert not torch.allclose(first, other)

    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    with method.sampling(True, seed=9):
        _logits(model, ids)
    assert torch.equal(torch.rand(5), expected)


def test_nested_contexts_restore_previous_state():
    method, _ = injected("blob")
    state = method.sampling_state
    assert (state.enabled, state.groups) == (True, 1)
    with method.sampling(False):
        assert (state.enabled, state.groups) == (False, 1)
        with method.sampling(True, groups=3):
            assert (state.enabled, state.groups) == (True, 3)
            with method.sampling(False, groups=2):
                assert (state.enabled, state.groups) == (False, 2)
            assert (state.enabled, state.groups) == (True, 3)
        assert (state.enabled, state.groups) == (False, 1)
    assert (state.enabled, state.groups) == (True, 1)
    with pytest.raises(RuntimeError), method.sampling(False, groups=4):
        raise RuntimeError("boom")
    assert (state.enabled, state.groups) == (True, 1)


def test_stacked_groups_mean_path_is_identical_per_group():
    method, model = injected("blob")
    ids = token_ids(batch=2)
    k = 4
    with method.sampling(False, groups=k):
        stacked = _logits(model, ids.repeat(k, 1)).reshape(k, *ids.shape, -1)
    with method.sampling(False):
        single = _logits(model, ids)
    for g in range(k):
        torch.testing.assert_close(stacked[g], single, rtol=0, atol=1e-6)


def test_stacked_groups_sample_independently():
    method, model = injected("blob")
    ids = token_ids(batch=2)
    k = 4
    with method.sampling(True, groups=k, seed=0):
        stacked = _logits(model, ids.repeat(k, 1)).reshape(k, *ids.shape, -1)
    for g in range(k):
        for h in range(g + 1, k):
            assert not torch.allclose(stacked[g], stacked[h])


def test_stacked_groups_have_the_single_pass_distribution():
    """Per-group spread of the logits matches the spread over separate single-sample passes."""
    method, model = injected("blob")
    ids = token_ids(batch=1, length=3)
    k = 400
    with method.sampling(True, groups=k, seed=1):
        stacked = _logits(model, ids.repeat(k, 1))[:, -1]
    with method.sampling(True, seed=2):
        separate = torch.cat([_logits(model, ids)[:, -1] for _ in range(k)])
    ratio = stacked.std(0) / separate.std(0)
    assert 0.75 < float(ratio.median()) < 1.33
    with method.sampling(False):
        mean = _logits(model, ids)[0, -1]
    spread = separate.std(0) / k**0.5
    assert float(((stacked.mean(0) - mean).abs() / spread).median()) < 3
    assert float(((separate.mean(0) - mean).abs() / spread).median()) < 3


def test_batch_not_divisible_by_groups_raises():
    method, model = injected("blob")
    with pytest.raises(ValueError, match="3"), method.sampling(True, groups=2):
        _logits(model, token_ids(batch=3))
