"""Held draws (generation mode): one weight sample per stacked group, fixed for every pass of a block."""

from __future__ import annotations

import pytest
import torch
from method_helpers import LORA, TARGETS, injected, tiny_llama, token_ids

from bayespeft.methods import build_method

# Every method whose samples can be held for generation (a new sampling method adds its row here).
HOLD_METHODS = ["blob", "blob_laplace", "bbb", "mcdropout", "ensemble", "tfb", "noise", "inducing"]
# Methods whose draws are fixed members rather than seeded samples: the seed does not change them.
MEMBER_METHODS = {"ensemble"}


@pytest.fixture(scope="module")
def source_adapter(tmp_path_factory) -> str:
    """A trained-looking mle adapter on the tiny Llama: the starting point tfb needs."""
    method = build_method("mle")
    model = method.inject(tiny_llama(0), LORA, TARGETS, "CAUSAL_LM")
    return str(method.save_adapter(model, tmp_path_factory.mktemp("source") / "adapter"))


def held_method(name: str, source_adapter: str):
    """(method, model) with random LoRA factors; tfb starts from ``source_adapter``."""
    overrides = {"source_adapter": source_adapter} if name == "tfb" else {}
    return injected(name, **overrides)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("name", HOLD_METHODS)
def test_held_draw_is_the_same_weight_for_every_pass_and_length(name, source_adapter):
    method, model = held_method(name, source_adapter)
    ids = token_ids(batch=2, length=6)
    with method.sampling(seed=3, hold=True):
        full = logits(model, ids)
        prefix = logits(model, ids[:, :4])
        again = logits(model, ids)
    torch.testing.assert_close(again, full, rtol=0, atol=0)
    torch.testing.assert_close(prefix, full[:, :4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", HOLD_METHODS)
def test_stacked_held_draws_equal_one_at_a_time_draws(name, source_adapter):
    method, model = held_method(name, source_adapter)
    ids = token_ids(batch=2, length=5)
    samples = 3
    with method.sampling(seed=11, groups=samples, hold=True):
        stacked = logits(model, ids.repeat(samples, 1)).view(samples, 2, 5, -1)
    for draw in range(samples):
        with method.sampling(seed=11, offset=draw, hold=True):
            torch.testing.assert_close(logits(model, ids), stacked[draw], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(stacked[0], stacked[1])


@pytest.mark.parametrize("name", HOLD_METHODS)
def test_held_draws_follow_the_seed_and_leave_the_mean_alone(name, source_adapter):
    method, model = held_method(name, source_adapter)
    ids = token_ids()
    with method.sampling(enabled=False):
        mean = logits(model, ids)
    with method.sampling(seed=5, hold=True):
        first = logits(model, ids)
    with method.sampling(seed=5, hold=True):
        repeat = logits(model, ids)
    with method.sampling(seed=6, hold=True):
        other = logits(model, ids)
    with method.sampling(enabled=False, hold=True):
        held_mean = logits(model, ids)
    torch.testing.assert_close(repeat, first, rtol=0, atol=0)
    if name in MEMBER_METHODS:
        torch.testing.assert_close(other, first, rtol=0, atol=0)
    else:
        assert not torch.allclose(first, other)
    assert not torch.allclose(first, mean)
    torch.testing.assert_close(held_mean, mean, rtol=0, atol=0)
