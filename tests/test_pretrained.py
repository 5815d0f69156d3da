"""BayesianPeftModel: save_pretrained / from_pretrained reproduce the posterior mean and seeded draws
exactly; push_to_hub goes through huggingface_hub's API (mocked: no network); plain peft warns."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from peft import PeftModel
from transformers import AutoModelForCausalLM

import bayespeft.pretrained
from bayespeft import BayesianPeftModel
from bayespeft.backbones import PEFT_TASK_TYPES, load_backbone, lora_targets
from bayespeft.config import LoraSettings, ModelConfig
from bayespeft.methods import build_method
from bayespeft.methods.base import POSTERIOR_FIELD

INPUTS = {"input_ids": torch.tensor([[5, 17, 42, 9], [7, 31, 60, 2]]), "attention_mask": torch.ones(2, 4, dtype=int)}


def trained_like(model_dir: Path, method_name: str, num_labels: int | None = None) -> BayesianPeftModel:
    """The backbone with a method's adapter whose every tensor is moved off its initial value."""
    config = ModelConfig(name=str(model_dir), lora=LoraSettings(r=4, alpha=8))
    model, _, kind = load_backbone(config, num_labels=num_labels)
    method = build_method(method_name)
    peft_model = method.inject(model, config.lora, lora_targets(model, config), PEFT_TASK_TYPES[kind])
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return BayesianPeftModel(peft_model.eval(), method)


def outputs(model: BayesianPeftModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(posterior-mean logits, logits of the draw seeded 11)."""
    with torch.no_grad():
        with model.sampling(enabled=False):
            mean = model(**INPUTS).logits
        with model.sampling(seed=11):
            draw = model(**INPUTS).logits
    return mean, draw


@pytest.mark.parametrize(("method", "backbone"), [("blob", "tiny_llama_dir"), ("blob", "tiny_bert_dir")])
def test_round_trip_reproduces_the_mean_and_a_seeded_draw(request, tmp_path, method, backbone):
    model_dir = request.getfixturevalue(backbone)
    original = trained_like(model_dir, method, num_labels=3 if backbone == "tiny_bert_dir" else None)
    mean, draw = outputs(original)
    assert not torch.equal(mean, draw)  # the draw is a real sample
    original.save_pretrained(tmp_path / "adapter")

    loaded = BayesianPeftModel.from_pretrained(str(model_dir), tmp_path / "adapter")  # no seed, fresh base
    loaded_mean, loaded_draw = outputs(loaded)
    assert torch.equal(loaded_mean, mean)
    assert torch.equal(loaded_draw, draw)
    probs = loaded.predict_proba(n_samples=4, seed=0, **INPUTS)
    assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]))


def test_generate_holds_one_draw_per_sequence(tmp_path, tiny_llama_dir):
    trained_like(tiny_llama_dir, "blob").save_pretrained(tmp_path / "adapter")
    model = BayesianPeftModel.from_pretrained(str(tiny_llama_dir), tmp_path / "adapter")
    runs = []
    for seed in (1, 1):
        with model.sampling(seed=seed, hold=True):
            runs.append(model.generate(input_ids=INPUTS["input_ids"][:1], max_new_tokens=6, do_sample=False))
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (1, 10)


def test_plain_peft_warns_that_it_drops_the_posterior(tmp_path, tiny_llama_dir):
    trained_like(tiny_llama_dir, "blob").save_pretrained(tmp_path / "blob")
    trained_like(tiny_llama_dir, "mle").save_pretrained(tmp_path / "mle")
    with pytest.warns(UserWarning, match=POSTERIOR_FIELD):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "blob")
    assert POSTERIOR_FIELD not in (tmp_path / "mle" / "adapter_config.json").read_text()


def test_push_to_hub_uploads_the_full_adapter_and_loads_back(monkeypatch, tmp_path, tiny_llama_dir):
    """HfApi's create_repo / upload_folder and snapshot_download are replaced by a local 'hub' folder."""
    hub, calls = tmp_path / "hub", []

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **_):
        calls.append(("create_repo", repo_id, private, exist_ok, self.token))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, *, repo_id, folder_path, commit_message, revision=None, create_pr=False, **_):
        calls.append(("upload_folder", repo_id, commit_message, revision, create_pr))
        shutil.copytree(folder_path, hub / repo_id)
        return f"https://huggingface.co/{repo_id}/commit/1"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(bayespeft.pretrained, "snapshot_download", lambda repo_id, revision=None: str(hub / repo_id))

    original = trained_like(tiny_llama_dir, "blob")
    url = original.push_to_hub("me/blob-tiny", private=True, token="t0k", commit_message="first", create_pr=True)
    assert url.endswith("/commit/1")
    assert calls == [
        ("create_repo", "me/blob-tiny", True, True, "t0k"),
        ("upload_folder", "me/blob-tiny", "first", None, True),
    ]
    uploaded = {p.name for p in (hub / "me/blob-tiny").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "bayespeft_method.json"} <= uploaded

    loaded = BayesianPeftModel.from_pretrained(str(tiny_llama_dir), "me/blob-tiny")
    for got, want in zip(outputs(loaded), outputs(original), strict=True):
        assert torch.equal(got, want)
