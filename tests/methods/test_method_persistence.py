"""Saving, loading and merging adapters."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from method_helpers import LORA, TARGETS, injected, randomize_lora, tiny_llama, token_ids
from peft import PeftModel
from safetensors.torch import load_file

from bayespeft.errors import RunDirError
from bayespeft.methods import build_method, read_method_file
from bayespeft.methods.base import ADAPTER_CONFIG, ADAPTER_WEIGHTS, METHOD_FILE


def _adapter_params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("name", ["blob", "blob_laplace"])
def test_round_trip_is_bitwise(tmp_path, name):
    method, model = injected(name)
    with torch.no_grad():  # make rho distinguishable from a fresh init
        for n, p in model.named_parameters():
            if "lora_A_rho" in n:
                p.uniform_(0.01, 0.3)
    out = method.save_adapter(model, tmp_path / "adapter")
    assert {p.name for p in out.iterdir()} >= {ADAPTER_CONFIG, ADAPTER_WEIGHTS, METHOD_FILE}
    stored = read_method_file(out)
    assert stored["method"] == name and stored["mean_only"] is False
    assert stored["config"]["beta"] == method.config.beta
    assert any("lora_A_rho" in k for k in load_file(out / ADAPTER_WEIGHTS))

    fresh_method = build_method(name)
    fresh = fresh_method.inject(tiny_llama(0), LORA, TARGETS, "CAUSAL_LM")
    before = _adapter_params(fresh)
    saved = _adapter_params(model)
    assert not all(torch.equal(before[k], saved[k]) for k in saved)
    fresh_method.load_adapter(fresh, out)
    loaded = _adapter_params(fresh)
    assert loaded.keys() == saved.keys()
    assert sum("lora_A_rho" in k for k in saved) == 5
    for key in saved:
        assert torch.equal(loaded[key], saved[key]), key

    ids = token_ids()
    with method.sampling(False), fresh_method.sampling(False):
        assert torch.equal(_logits(model, ids), _logits(fresh, ids))
    with method.sampling(True, seed=3), fresh_method.sampling(True, seed=3):
        a = _logits(model, ids)
    with fresh_method.sampling(True, seed=3):
        b = _logits(fresh, ids)
    assert torch.equal(a, b)


def test_mean_only_is_a_plain_peft_lora(tmp_path):
    method, model = injected("blob")
    out = method.save_adapter(model, tmp_path / "mean", mean_only=True)
    keys = set(load_file(out / ADAPTER_WEIGHTS))
    assert keys and not any("rho" in k for k in keys)
    assert all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in keys)
    assert read_method_file(out)["mean_only"] is True
    assert json.loads((out / ADAPTER_CONFIG).read_text())["r"] == LORA.r

    plain = PeftModel.from_pretrained(tiny_llama(0), str(out)).eval()
    ids = token_ids()
    with method.sampling(False):
        mean = _logits(model, ids)
    torch.testing.assert_close(_logits(plain, ids), mean, rtol=0, atol=1e-6)

    # the Bayesian method refuses it: the variances are missing
    fresh_method = build_method("blob")
    fresh = fresh_method.inject(tiny_llama(0), LORA, TARGETS, "CAUSAL_LM")
    with pytest.raises(RunDirError, match="missing"):
        fresh_method.load_adapter(fresh, out)


def test_loading_into_another_method_raises(tmp_path):
    method, model = injected("blob")
    out = method.save_adapter(model, tmp_path / "blob")
    mle = build_method("mle")
    plain = mle.inject(tiny_llama(0), LORA, TARGETS, "CAUSAL_LM")
    with pytest.raises(RunDirError, match="unexpected"):
        mle.load_adapter(plain, out)


def test_merge_warns_and_keeps_the_posterior_mean():
    method, model = injected("blob")
    ids = token_ids()
    with method.sampling(False):
        mean = _logits(model, ids)
    with pytest.warns(UserWarning, match="uncertainty"):
        merged = method.merge(model)
    assert not isinstance(merged, PeftModel)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    first, second = _logits(merged, ids), _logits(merged, ids)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, mean, rtol=1e-5, atol=1e-5)


def test_mle_merge_is_silent():
    method, model = injected("mle")
    ids = token_ids()
    before = _logits(model, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        merged = method.merge(model)
    torch.testing.assert_close(_logits(merged, ids), before, rtol=1e-5, atol=1e-5)


def test_merge_with_tied_embeddings_keeps_the_input_embeddings():
    method = build_method("blob")
    model = method.inject(tiny_llama(0, tie=True), LORA, TARGETS, "CAUSAL_LM")
    randomize_lora(model)
    embeddings = model.get_input_embeddings().weight.detach().clone()
    ids = token_ids()
    with method.sampling(False):
        mean = _logits(model, ids)
    with pytest.warns(UserWarning, match="uncertainty"):
        merged = method.merge(model)
    assert torch.equal(merged.get_input_embeddings().weight, embeddings)
    torch.testing.assert_close(_logits(merged, ids), mean, rtol=1e-5, atol=1e-5)
