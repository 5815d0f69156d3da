"""MC dropout on LoRA: dropout forced on/off by sampling, its rate, training, and the MC mean."""

from __future__ import annotations

import pytest
import torch
from method_helpers import LORA, TARGETS, injected, linear_layer, tiny_llama, token_ids
from torch import nn

from bayespeft.config import LoraSettings, TrainConfig
from bayespeft.errors import ConfigError
from bayespeft.methods import McDropoutLora, Optimization, TrainingContext, build_method


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _dropouts(model) -> list[nn.Module]:
    return [m for n, m in model.named_modules() if "lora_dropout." in n]


def test_registered_and_dropout_rate_overrides_lora_settings():
    method = build_method("mcdropout", dropout=0.3)
    assert isinstance(method, McDropoutLora) and method.stochastic
    model = method.inject(tiny_llama(0), LoraSettings(r=4, alpha=8, dropout=0.05), TARGETS, "CAUSAL_LM")
    dropouts = _dropouts(model)
    assert len(dropouts) == 5  # q, v in two blocks + lm_head
    assert all(type(d) is nn.Dropout and d.p == 0.3 for d in dropouts)
    assert model.peft_config["default"].lora_dropout == 0.3


@pytest.mark.parametrize("p", [0, 1, -0.1, 1.5])
def test_invalid_rate_names_the_field(p):
    with pytest.raises(ConfigError, match=r"method\.dropout"):
        build_method("mcdropout", dropout=p)


def test_eval_mode_sampling_draws_masks_and_is_seedable():
    method, model = injected("mcdropout", dropout=0.3)
    model.eval()
    ids = token_ids()
    with method.sampling(True):
        first, second = _logits(model, ids), _logits(model, ids)
    assert not torch.allclose(first, second)
    with method.sampling(True, seed=5):
        a = _logits(model, ids)
    with method.sampling(True, seed=5):
        b = _logits(model, ids)
    with method.sampling(True, seed=6):
        c = _logits(model, ids)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_sampling_off_is_deterministic_and_equals_lora_without_dropout():
    method, model = injected("mcdropout", dropout=0.3)
    plain = build_method("mle").inject(tiny_llama(0), LORA, TARGETS, "CAUSAL_LM")  # LORA has dropout 0
    plain.load_state_dict(model.state_dict())
    ids = token_ids()
    model.train()  # sampling off wins over train mode
    with method.sampling(False):
        first, second = _logits(model, ids), _logits(model, ids)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, _logits(plain.eval(), ids), rtol=0, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_dropout_modes_are_restored_after_nested_blocks(training):
    method, model = injected("mcdropout")
    model.train(training)
    dropouts = _dropouts(model)
    with method.sampling(True):
        assert all(d.training for d in dropouts)
        with method.sampling(False, groups=2):
            assert not any(d.training for d in dropouts)
        assert all(d.training for d in dropouts)
    assert all(d.training is training for d in dropouts)
    with pytest.raises(RuntimeError), method.sampling(not training, seed=1):
        raise RuntimeError("boom")
    assert all(d.training is training for d in dropouts)
    assert model.training is training


def test_stacked_groups_sample_independently():
    method, model = injected("mcdropout", dropout=0.3)
    model.eval()
    ids = token_ids(batch=2)
    k = 4
    with method.sampling(True, groups=k, seed=0):
        stacked = _logits(model, ids.repeat(k, 1)).reshape(k, *ids.shape, -1)
    for g in range(k):
        for h in range(g + 1, k):
            assert not torch.allclose(stacked[g], stacked[h])


def test_training_steps_with_the_base_optimization():
    method, model = injected("mcdropout", dropout=0.2)
    context = TrainingContext(num_examples=8, batch_size=2, batches_per_epoch=4, total_steps=8)
    opt = method.build_optimization(model, TrainConfig(lr=1e-2, warmup_ratio=0.0), context)
    assert type(opt) is Optimization and list(opt.optimizers) == ["main"]
    assert method.kl(model) is None
    ids = token_ids()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    losses = []
    for step in range(8):
        with method.sampling(True, seed=step):
            logs = opt.step(model(input_ids=ids, labels=ids).loss, lambda loss: loss.backward())
        losses.append(logs["nll"])
    assert set(logs) == {"nll", "lr"}
    assert losses[-1] < losses[0]
    assert all(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters() if n in before)


def test_mc_mean_approaches_the_deterministic_output():
    """Inverted dropout is unbiased: on one linear layer the MC average tends to the no-dropout output."""
    method, model, layer = linear_layer("mcdropout", d_in=8, d_out=4, dropout=0.5)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    model.eval()
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    k = 4000
    with torch.no_grad(), method.sampling(True, groups=k, seed=0):
        draws = model(x.repeat(k, 1)).reshape(k, 3, 4)
    with torch.no_grad(), method.sampling(False):
        mean = model(x)
    assert draws.std(0).min() > 0.1  # the masks do reach the output
    error = (draws.mean(0) - mean).abs() / (draws.std(0) / k**0.5)
    assert float(error.max()) < 4.5


def test_merge_is_the_deterministic_output():
    method, model = injected("mcdropout")
    ids = token_ids()
    with method.sampling(False):
        mean = _logits(model, ids)
    with pytest.warns(UserWarning, match="uncertainty"):
        merged = method.merge(model)
    torch.testing.assert_close(_logits(merged.eval(), ids), mean, rtol=1e-5, atol=1e-5)
