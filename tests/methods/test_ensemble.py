"""Deep ensemble of LoRA adapters: members, per-group selection, mean mode, training, persistence, merge."""

from __future__ import annotations

import math

import pytest
import torch
from method_helpers import LORA, TARGETS, injected, linear_layer, tiny_llama, token_ids
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from bayespeft.config import TrainConfig
from bayespeft.errors import ConfigError
from bayespeft.methods import TrainingContext, build_method, read_method_file
from bayespeft.methods.base import ADAPTER_WEIGHTS
from bayespeft.methods.ensemble import EnsembleLora, mean_delta_weight, member_weights

K = 3
CHOICES = [3, 11, 29, 42]


class FakeTask:
    """Last-position logits over a few tokens, the batch stacked sample-major (as the real tasks)."""

    def class_logits(self, model, batch, repeats: int = 1) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=batch["input_ids"].repeat(repeats, 1)).logits[:, -1, CHOICES]


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _layers(model) -> list[LoraLayer]:
    return [m for m in model.modules() if isinstance(m, LoraLayer) and len(m.lora_A) > 0]


def _member_model(model, member: int):
    """A plain (mle) LoRA model on the same backbone holding ``member``'s weights."""
    plain = build_method("mle").inject(tiny_llama(0), LORA, TARGETS, "CAUSAL_LM").eval()
    with torch.no_grad():
        for mine, theirs in zip(_layers(model), _layers(plain), strict=True):
            a, b = member_weights(mine, "default")
            theirs.lora_A["default"].weight.copy_(a[member])
            theirs.lora_B["default"].weight.copy_(b[member])
    return plain


def _adapter_params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


# ---- config and injection ----------------------------------------------------------------------
def test_registered_with_size_as_train_groups():
    method = build_method("ensemble")
    assert isinstance(method, EnsembleLora) and method.stochastic
    assert method.config.size == 3 and method.train_groups == 3
    assert build_method("ensemble", size=5).train_groups == 5


@pytest.mark.parametrize("size", [1, 0, -2, 2.5, True])
def test_invalid_size_names_the_field(size):
    with pytest.raises(ConfigError, match=r"method\.size"):
        build_method("ensemble", size=size)


def test_num_draws_is_the_member_count_for_any_n():
    method = build_method("ensemble", size=4)
    assert method.num_draws(0) == 1
    assert [method.num_draws(n) for n in (1, 4, 10, 100)] == [4, 4, 4, 4]


def test_members_are_initialised_independently_like_peft():
    _, model = injected("ensemble", randomize=False, size=4)
    layers = _layers(model)
    assert len(layers) == 5  # q, v in two blocks + lm_head
    for layer in layers:
        assert {"lora_A_members", "lora_B_members"} <= set(layer.adapter_layer_names)
        members_a, members_b = layer.lora_A_members["default"], layer.lora_B_members["default"]
        assert members_a.requires_grad and members_b.requires_grad
        a, b = member_weights(layer, "default")
        assert a.shape == (4, LORA.r, layer.in_features) and b.shape == (4, layer.out_features, LORA.r)
        assert torch.count_nonzero(b) == 0  # every member starts at the backbone, as peft's B = 0
        bound = 1 / math.sqrt(layer.in_features)  # peft's Kaiming-uniform(a = sqrt 5) on lora_A
        assert a.abs().max() <= bound and a.abs().max() > 0.8 * bound
        for i in range(4):
            for j in range(i + 1, 4):
                assert not torch.allclose(a[i], a[j]), (i, j)


# ---- draws --------------------------------------------------------------------------------------
def test_each_stacked_group_uses_its_own_member():
    method, model = injected("ensemble")
    ids = token_ids(batch=2)
    with method.sampling(True, groups=K):
        stacked = _logits(model, ids.repeat(K, 1)).view(K, *ids.shape, -1)
    for g in range(K):
        torch.testing.assert_close(stacked[g], _logits(_member_model(model, g), ids), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(stacked[0], stacked[1])
    with method.sampling(True):  # one group, offset 0: member 0 = peft's own adapter
        torch.testing.assert_close(_logits(model, ids), stacked[0], rtol=1e-5, atol=1e-5)


def test_offset_picks_members_and_out_of_range_draws_fail():
    method, model = injected("ensemble")
    ids = token_ids(batch=2)
    with method.sampling(True, groups=K):
        everyone = _logits(model, ids.repeat(K, 1)).view(K, *ids.shape, -1)
    with method.sampling(True, groups=2, offset=1):
        later = _logits(model, ids.repeat(2, 1)).view(2, *ids.shape, -1)
    torch.testing.assert_close(later, everyone[1:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="members"), method.sampling(True, groups=2, offset=2):
        _logits(model, ids.repeat(2, 1))
    with pytest.raises(ValueError, match="rows"), method.sampling(True, groups=2):
        _logits(model, ids[:1].repeat(3, 1))


@pytest.mark.parametrize("per_pass", [1, 2, 3, 8])
def test_predictive_samples_visit_every_member_once_and_average_probabilities(per_pass):
    method, model = injected("ensemble")
    ids = token_ids(batch=3, length=5)
    batch = {"input_ids": ids, "labels": torch.zeros(3, dtype=torch.long)}
    with method.sampling(True, seed=0):
        probs = method.predictive_samples(model, FakeTask(), batch, n_samples=10, samples_per_pass=per_pass)
    assert probs.shape == (3, K, len(CHOICES))
    members = torch.stack(
        [torch.softmax(_logits(_member_model(model, g), ids)[:, -1, CHOICES], -1) for g in range(K)], dim=1
    )
    torch.testing.assert_close(probs, members, rtol=1e-5, atol=1e-6)
    member_logits = torch.stack([_logits(_member_model(model, g), ids)[:, -1, CHOICES] for g in range(K)], 1)
    torch.testing.assert_close(probs.mean(1), torch.softmax(member_logits, -1).mean(1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(probs.mean(1), torch.softmax(member_logits.mean(1), -1), atol=1e-4)


# ---- mean mode ----------------------------------------------------------------------------------
def test_mean_mode_is_the_average_member_output_on_one_layer():
    """For a single linear layer the mean weight's output is the average of the members' outputs."""
    method, model, layer = linear_layer("ensemble", d_in=8, d_out=4, size=K)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        layer.lora_B_members["default"].normal_()
    x = torch.randn(5, 8)
    with torch.no_grad():
        with method.sampling(False):
            mean = model(x)
        with method.sampling(True, groups=K):
            members = model(x.repeat(K, 1)).view(K, 5, 4)
        direct = x @ (layer.get_base_layer().weight + mean_delta_weight(layer, "default")).T
    torch.testing.assert_close(mean, members.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean, direct + layer.get_base_layer().bias, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(members[0], members[1])


def test_mean_mode_differs_from_every_member():
    method, model = injected("ensemble")
    ids = token_ids()
    with method.sampling(False):
        mean = _logits(model, ids)
    with method.sampling(True, groups=K):
        stacked = _logits(model, ids.repeat(K, 1)).view(K, *ids.shape, -1)
    assert all(not torch.allclose(mean, stacked[g]) for g in range(K))


# ---- training -----------------------------------------------------------------------------------
def test_stacked_loss_gives_each_member_a_1_over_k_share_of_its_own_gradient():
    method, model = injected("ensemble")
    ids = token_ids()
    with method.sampling(True, groups=K):
        model(input_ids=ids.repeat(K, 1), labels=ids.repeat(K, 1)).loss.backward()
    head = model.base_model.model.lm_head
    for g in (1, 2):
        plain = _member_model(model, g)
        plain(input_ids=ids, labels=ids).loss.backward()
        expected = plain.base_model.model.lm_head.lora_B["default"].weight.grad / K
        torch.testing.assert_close(head.lora_B_members["default"].grad[g - 1], expected, rtol=1e-4, atol=1e-6)


def test_short_training_run_moves_every_member_differently():
    method, model = injected("ensemble", randomize=False)
    context = TrainingContext(num_examples=8, batch_size=2, batches_per_epoch=4, total_steps=6)
    opt = method.build_optimization(model, TrainConfig(lr=1e-2, warmup_ratio=0.0), context)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A_members" in n for n in trainable) and any("lora_B_members" in n for n in trainable)
    before = _adapter_params(model)
    ids = token_ids()
    model.train()
    losses = []
    for _ in range(6):  # the training loop's pattern: the batch stacked train_groups times
        copies = method.train_groups
        with method.sampling(True, groups=copies):
            nll = model(input_ids=ids.repeat(copies, 1), labels=ids.repeat(copies, 1)).loss
        losses.append(opt.step(nll, lambda loss: loss.backward())["nll"])
    assert losses[-1] < losses[0]
    for name, value in _adapter_params(model).items():
        assert not torch.equal(value, before[name]), name
    for layer in _layers(model):
        a, b = (t.detach() for t in member_weights(layer, "default"))
        assert all(b[k].abs().sum() > 0 for k in range(K))  # every member left the backbone
        for i in range(K):
            for j in range(i + 1, K):
                assert not torch.allclose(b[i], b[j]) and not torch.allclose(a[i], a[j])


# ---- persistence and merge ---------------------------------------------------------------------
def test_save_load_round_trip_keeps_every_member(tmp_path):
    method, model = injected("ensemble")
    with torch.no_grad():  # injection draws the same A members for the same seed: move them
        for layer in _layers(model):
            layer.lora_A_members["default"].mul_(-2)
    out = method.save_adapter(model, tmp_path / "adapter")
    stored = load_file(out / ADAPTER_WEIGHTS)
    members = {k: v for k, v in stored.items() if "_members" in k}
    assert len(members) == 2 * 5
    assert all(v.shape[0] == K - 1 for v in members.values())
    assert read_method_file(out)["config"] == {"size": K} and read_method_file(out)["mean_only"] is False

    fresh_method, fresh = injected("ensemble", randomize=False)
    saved, before = _adapter_params(model), _adapter_params(fresh)
    assert saved.keys() == before.keys()
    assert not any(torch.equal(saved[k], before[k]) for k in saved if "_members" in k)
    fresh_method.load_adapter(fresh, out)
    loaded = _adapter_params(fresh)
    for key in saved:
        assert torch.equal(loaded[key], saved[key]), key
    ids = token_ids()
    for enabled, groups in ((False, 1), (True, K)):
        with method.sampling(enabled, groups=groups), fresh_method.sampling(enabled, groups=groups):
            assert torch.equal(_logits(model, ids.repeat(groups, 1)), _logits(fresh, ids.repeat(groups, 1)))


def test_mean_only_save_is_refused(tmp_path):
    method, model = injected("ensemble")
    with pytest.raises(ConfigError, match="mean_only"):
        method.save_adapter(model, tmp_path / "mean", mean_only=True)
    assert not (tmp_path / "mean" / ADAPTER_WEIGHTS).exists()


def test_merge_folds_the_mean_weight_and_warns():
    method, model = injected("ensemble")
    ids = token_ids()
    with method.sampling(False):
        mean = _logits(model, ids)
    with pytest.warns(UserWarning, match="merging.*diversity is lost"):
        merged = method.merge(model)
    assert not isinstance(merged, PeftModel)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged.eval(), ids), mean, rtol=1e-5, atol=1e-5)


def test_safe_merge_and_unmerge_use_the_mean_delta():
    method, model, layer = linear_layer("ensemble", size=K)
    with torch.no_grad():
        layer.lora_B_members["default"].normal_()
    original = layer.get_base_layer().weight.detach().clone()
    x = torch.randn(3, 8)
    with torch.no_grad(), method.sampling(False):
        mean = model(x)
        layer.merge(safe_merge=True)
        torch.testing.assert_close(layer.get_base_layer().weight, original + mean_delta_weight(layer, "default"))
        torch.testing.assert_close(model(x), mean, rtol=1e-5, atol=1e-5)
        layer.unmerge()
    torch.testing.assert_close(layer.get_base_layer().weight, original, rtol=0, atol=1e-6)
