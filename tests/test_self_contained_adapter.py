"""A trained adapter loads in plain peft, in a fresh process that never imports bayespeft and sets no
seed, and gives the posterior-mean logits exactly, for encoder, causal and seq2seq backbones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bayespeft.backbones import hub_id
from bayespeft.config import ModelConfig, RunConfig, load_config
from bayespeft.methods.base import POSTERIOR_FIELD
from bayespeft.training import Trainer, build_session

INPUT_IDS = [[5, 17, 42, 9, 88, 3], [7, 7, 31, 60, 2, 11]]
DECODER_IDS = [[1, 12, 40], [1, 19, 4]]

# Run in a fresh interpreter: plain transformers + peft, no seed, no bayespeft.
PLAIN_PEFT = """
import json, sys, torch, transformers
from peft import PeftModel
adapter, auto_class, extra, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
assert "bayespeft" not in sys.modules
base_id = json.load(open(adapter + "/adapter_config.json"))["base_model_name_or_path"]
base = getattr(transformers, auto_class).from_pretrained(base_id, **extra.pop("load", {}))
model = PeftModel.from_pretrained(base, adapter).eval()
inputs = {k: torch.tensor(v) for k, v in extra.items()}
with torch.no_grad():
    logits = model(**inputs).logits
torch.save(logits, out)
assert "bayespeft" not in sys.modules
"""


def run_config(model_dir: Path, data_dir: Path, dataset: str, method: str) -> RunConfig:
    return load_config(
        None,
        [
            f"model.name={model_dir}",
            f"method.name={method}",
            f"data.dataset={dataset}",
            f"data.data_dir={data_dir}",
            "data.max_train_examples=8",
            "data.max_eval_examples=4",
            "data.max_length=64",
            "train.max_steps=3",
            "train.batch_size=2",
            "train.lr=0.05",
            "train.seed=7",
            "eval.n_samples=0",
            "eval.batch_size=4",
            *(["method.kl_period=epoch"] if method == "blob" else []),
        ],
    )


def posterior_mean_logits(config: RunConfig, adapter: Path, inputs: dict[str, list]) -> torch.Tensor:
    session = build_session(config)
    session.method.load_adapter(session.model, adapter)
    session.model.eval()
    with torch.no_grad(), session.method.sampling(enabled=False):
        return session.model(**{k: torch.tensor(v) for k, v in inputs.items()}).logits


@pytest.mark.parametrize(
    ("kind", "dataset", "method", "auto_class"),
    [
        ("encoder", "mrpc", "blob", "AutoModelForSequenceClassification"),
        ("causal", "arc_easy", "blob", "AutoModelForCausalLM"),
        ("seq2seq", "dialogsum", "mle", "AutoModelForSeq2SeqLM"),
    ],
)
def test_plain_peft_in_a_fresh_process_gives_the_posterior_mean(
    request, tmp_path, shared_data, kind, dataset, method, auto_class
):
    model_dir = request.getfixturevalue({"encoder": "tiny_bert_dir", "causal": "tiny_llama_dir"}.get(kind, "bart_dir"))
    config = run_config(model_dir, shared_data, dataset, method)
    Trainer(config, tmp_path / "run", progress=False).run_training()
    adapter = tmp_path / "run" / "adapter"
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(model_dir)
    assert (POSTERIOR_FIELD in saved) == (method == "blob")  # plain peft warns about the unknown field

    inputs: dict[str, list] = {"input_ids": INPUT_IDS, "attention_mask": [[1] * 6, [1] * 6]}
    if kind == "seq2seq":
        inputs["decoder_input_ids"] = DECODER_IDS
    expected = posterior_mean_logits(config, adapter, inputs)
    extra = {**inputs, "load": {"num_labels": 2} if kind == "encoder" else {}}
    out = tmp_path / "plain.pt"
    subprocess.run(
        [sys.executable, "-c", PLAIN_PEFT, str(adapter), auto_class, json.dumps(extra), str(out)],
        check=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    plain = torch.load(out)
    assert plain.shape == expected.shape
    assert (plain - expected).abs().max().item() < 1e-5

    card = (adapter / "README.md").read_text()
    score = "| token_nll |" if kind == "seq2seq" else "| nll |"
    for fact in (f"`{method}`", "Posterior:", f"`{dataset}`", score, "model.sampling(seed=0)"):
        assert fact in card, fact


def test_the_encoder_head_travels_frozen_with_the_adapter(tiny_bert_dir, shared_data):
    session = build_session(run_config(tiny_bert_dir, shared_data, "mrpc", "blob"))
    trainable = [n for n, p in session.model.named_parameters() if p.requires_grad]
    assert trainable and not any("modules_to_save" in n for n in trainable)
    state = session.method.adapter_state(session.model)
    assert {k for k in state if ".classifier.base_layer." in k} == {
        "base_model.model.classifier.base_layer.weight",
        "base_model.model.classifier.base_layer.bias",
    }


def test_offline_short_names_record_their_hub_id():
    assert hub_id(ModelConfig(name="minilm-l6")) == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id(ModelConfig(name="SmolLM2-135M")) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id(ModelConfig(name="org/model")) == "org/model"
