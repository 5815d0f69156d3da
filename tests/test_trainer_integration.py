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


def test_resuming_from_a_trainer_checkpoint_continues_the_same_run(tmp_path, tiny_bert_dir):
    """A BLoB run stopped after a checkpoint and resumed ends where the uninterrupted run ends: the
    variances, both optimisers, the KL schedule's step count and the RNG all come back."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback, TrainingArguments

    import bayespeft

    module = example()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)

    class StopAfterTwo(TrainerCallback):  # a crash after the checkpoint of step 2
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    def trainer(output_dir: Path, callbacks: list | None = None) -> bayespeft.BayesianTrainer:
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
        args = TrainingArguments(
            output_dir=str(output_dir),
            max_steps=4,
            per_device_train_batch_size=4,
            learning_rate=1e-2,
            save_strategy="steps",
            save_steps=2,
            report_to=[],
            use_cpu=True,
            seed=0,
        )
        wrapped = bayespeft.wrap(model, "blob", r=4, alpha=8)
        return bayespeft.BayesianTrainer(
            model=wrapped,
            args=args,
            train_dataset=module.dataset(tokenizer, 4),
            processing_class=tokenizer,
            callbacks=callbacks,
        )

    straight = trainer(tmp_path / "straight")
    straight.train()
    crashed = trainer(tmp_path / "resumed", [StopAfterTwo()])
    crashed.train()
    assert crashed.step_owner.rule.step_count == 2
    resumed = trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))

    assert resumed.step_owner.rule.step_count == straight.step_owner.rule.step_count == 4
    expected = straight.bayesian.peft_model.state_dict()
    got = resumed.bayesian.peft_model.state_dict()
    trained = [name for name in expected if "lora_" in name]
    assert any("lora_A_rho" in name for name in trained)
    for name in trained:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
