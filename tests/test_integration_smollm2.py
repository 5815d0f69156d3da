"""The real offline model: BLoB fine-tunes SmolLM2-135M-Instruct on an ARC-Easy slice, then evaluates."""

from __future__ import annotations

import json

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from bayespeft.cli import main
from bayespeft.config import load_config
from bayespeft.training import build_session, load_examples


def test_blob_on_smollm2_arc_easy_slice(tmp_path, shared_data, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "-o",
            str(run),
            "--quiet",
            "--model",
            "smollm2-135m",
            "--method",
            "blob",
            "--dataset",
            "arc_easy",
            "--data-dir",
            str(shared_data),
            "--max-train-examples",
            "32",
            "--max-eval-examples",
            "12",
            "--max-steps",
            "6",
            "--batch-size",
            "4",
            "--lr",
            "5e-4",
            "--n-samples",
            "3",
            "--eval-batch-size",
            "6",
            "--kl-period",
            "epoch",
            "--checkpoint-every",
            "3",
        ]
    )
    assert code == 0
    assert "blob on arc_easy (validation, N=3): ACC" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    scores = metrics["metrics"]
    assert scores["num_examples"] == 12 and scores["num_samples"] == 3
    assert 0 <= scores["acc"] <= 1 and 0 <= scores["ece"] <= 1 and scores["nll"] > 0
    assert scores["mutual_information"] >= 0
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 12
    assert all(abs(sum(r["probs"]) - 1) < 1e-5 for r in records)
    assert all(len(r["probs"]) == 4 for r in records)  # the first 12 ARC-Easy dev questions have 4 choices

    # Re-evaluate with the posterior mean (N = 0): deterministic, written under eval/.
    assert main(["evaluate", "--run-dir", str(run), "--quiet", "--n-samples", "0", "--name", "mean"]) == 0
    mean = json.loads((run / "eval" / "mean" / "metrics.json").read_text())
    assert mean["n_samples"] == 0 and mean["metrics"]["mutual_information"] == 0.0
    assert (run / "eval" / "mean" / "reliability.png").stat().st_size > 10_000

    # The adapter loads into plain peft and reproduces the posterior-mean class probabilities.
    config = load_config(run / "config.yaml", ["eval.n_samples=0"])
    session = build_session(config)
    session.method.load_adapter(session.model, run / "adapter")
    examples = load_examples(config, "validation", 4)
    batch = session.task.collate(session.task.encode(examples))
    with torch.no_grad(), session.method.sampling(False):
        ours = session.task.class_logits(session.model.eval(), batch)
    base = AutoModelForCausalLM.from_pretrained(session.model.base_model.model.config._name_or_path)
    plain = PeftModel.from_pretrained(base, run / "adapter").eval()
    with torch.no_grad():
        theirs = session.task.class_logits(plain, batch)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
