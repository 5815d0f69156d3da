"""Post-hoc methods start from a source adapter: its LoRA factors and its fresh head come with it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification

from bayespeft.backbones import FRESH_MODULES
from bayespeft.config import LoraSettings
from bayespeft.methods import build_method
from bayespeft.methods.base import ADAPTER_WEIGHTS

TARGETS = ["query", "value", "classifier"]  # as the BERT defaults: LoRA on the fresh head too
SETTINGS = LoraSettings(r=2, alpha=4.0)


def classifier(seed: int) -> BertForSequenceClassification:
    """A tiny BERT whose classification head the checkpoint lacked (so it travels in the adapter)."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, num_labels=3
    )
    model = BertForSequenceClassification(config)
    setattr(model, FRESH_MODULES, ["classifier"])
    return model


def trained_source(folder):
    """An MLE adapter with nonzero LoRA factors and its own head (seed 1)."""
    method = build_method("mle")
    model = method.inject(classifier(1), SETTINGS, TARGETS, None)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.normal_()
    return method.save_adapter(model, folder)


def head_and_lora(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "lora_" in k or "classifier" in k}


@pytest.mark.parametrize("posthoc", ["laplace", "tfb"])
def test_a_posthoc_method_loads_the_source_lora_and_head(tmp_path, posthoc):
    folder = trained_source(tmp_path / "source")
    reference = build_method("mle")
    expected = reference.inject(classifier(7), SETTINGS, TARGETS, None)
    reference.load_adapter(expected, folder)

    method = build_method(posthoc, source_adapter=str(folder))
    model = method.inject(classifier(7), SETTINGS, TARGETS, None)  # another seed: the head must come from folder

    want = head_and_lora(expected)
    got = head_and_lora(model)
    assert any("classifier.base_layer" in k for k in want)
    for key, tensor in want.items():
        torch.testing.assert_close(got[key], tensor, rtol=0, atol=0, msg=key)


def test_a_source_saved_before_heads_travelled_keeps_the_seeded_head(tmp_path):
    folder = trained_source(tmp_path / "source")
    weights = folder / ADAPTER_WEIGHTS
    save_file({k: v for k, v in load_file(weights).items() if "base_layer" not in k}, weights)

    method = build_method("laplace", source_adapter=str(folder))
    model = method.inject(classifier(7), SETTINGS, TARGETS, None)
    seeded = classifier(7).classifier
    head = model.base_model.model.classifier.base_layer
    torch.testing.assert_close(head.weight, seeded.weight, rtol=0, atol=0)
    lora_a = model.base_model.model.classifier.lora_A["default"].weight
    torch.testing.assert_close(lora_a, load_file(weights)["base_model.model.classifier.lora_A.weight"])
