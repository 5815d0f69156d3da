"""The stock-Trainer example trains BLoB on a tiny model: the KL term follows its schedule per
optimiser step, the second optimiser moves the variances, and the saved adapter reloads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from bayespeft import BayesianPeftModel
from bayespeft.methods.kl_schedule import KLSchedule, kl_weight

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "trainer_blob.py"


def example():
    spec = importlib.util.spec_from_file_location("trainer_blob", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_trainer_example_applies_the_kl_on_schedule(tmp_path, tiny_bert_dir):
    trainer = example().main(["--model", str(tiny_bert_dir), "--output-dir", str(tmp_path), "--max-steps", "6"])
    rule = trainer.step_owner.rule
    period, schedule = rule.period, rule.schedule
    assert rule.step_count == 6 and set(rule.optimizers) == {"main", "kl"}  # BLoB's two optimisers both ran
    steps = [entry for entry in trainer.state.log_history if "pi" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3, 4, 5, 6]
    assert [entry["pi"] for entry in steps] == [kl_weight(s, period, KLSchedule(schedule)) for s in range(1, 7)]
    assert all(entry["kl"] > 0 and entry["weighted_kl"] == pytest.approx(entry["pi"] * entry["kl"]) for entry in steps)
    assert "eval_accuracy" in trainer.state.log_history[-1] or any("eval_loss" in e for e in trainer.state.log_history)

    loaded = BayesianPeftModel.from_pretrained(str(tiny_bert_dir), tmp_path / "adapter")
    trained = trainer.bayesian.peft_model.state_dict()
    for name, tensor in loaded.peft_model.state_dict().items():
        if "lora_A_rho" in name or "lora_B" in name:
            assert torch.equal(tensor, trained[name]), name


@pytest.mark.parametrize("method", ["mle", "mcdropout", "ensemble"])
def test_every_trainable_method_runs_under_the_trainer(tmp_path, tiny_bert_dir, method):
    trainer = example().main(
        ["--model", str(tiny_bert_dir), "--output-dir", str(tmp_path), "--max-steps", "2", "--method", method]
    )
    assert trainer.step_owner.rule.step_count == 2
    assert (tmp_path / "adapter" / "bayespeft_method.json").is_file()
