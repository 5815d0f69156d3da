"""Training runs end to end on a tiny model: resume equals an uninterrupted run, even after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bayespeft.config import load_config
from bayespeft.training import Trainer, epoch_order


def tiny_config(model_dir: Path, data_dir: Path, method: str = "blob", steps: int = 6, **extra: str):
    overrides = [
        f"model.name={model_dir}",
        f"method.name={method}",
        "data.dataset=arc_easy",
        f"data.data_dir={data_dir}",
        "data.max_train_examples=24",
        "data.max_eval_examples=8",
        "data.max_length=96",
        f"train.max_steps={steps}",
        "train.batch_size=2",
        "train.lr=0.01",
        "train.checkpoint_every=2",
        "eval.n_samples=3",
        "eval.batch_size=4",
        *(f"{k}={v}" for k, v in extra.items()),
    ]
    if method.startswith("blob"):
        overrides += ["method.kl_period=epoch"]
    return load_config(None, overrides)


def adapter_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def log_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "step_time_s"} for line in lines]


def test_epoch_order_is_a_seeded_permutation():
    first = epoch_order(10, seed=3, epoch=0, shuffle=True)
    assert sorted(first) == list(range(10))
    assert first == epoch_order(10, seed=3, epoch=0, shuffle=True)
    assert first != epoch_order(10, seed=3, epoch=1, shuffle=True)
    assert epoch_order(5, seed=3, epoch=0, shuffle=False) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("method", ["blob", "mle"])
def test_paused_and_resumed_run_equals_uninterrupted(tmp_path, tiny_llama_dir, shared_data, method):
    config = tiny_config(tiny_llama_dir, shared_data, method)
    straight = Trainer(config, tmp_path / "straight", progress=False).run_training()
    assert straight["status"] == "finished"

    paused = Trainer(config, tmp_path / "chunked", progress=False, stop_after_steps=3).run_training()
    assert paused == {"status": "paused", "step": 3}
    assert not (tmp_path / "chunked" / "metrics.json").exists()
    resumed = Trainer(config, tmp_path / "chunked", progress=False, resume=True).run_training()

    a, b = adapter_tensors(tmp_path / "straight"), adapter_tensors(tmp_path / "chunked")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert log_records(tmp_path / "straight") == log_records(tmp_path / "chunked")
    assert straight["metrics"] == resumed["metrics"]


def test_training_writes_the_run_layout(tmp_path, tiny_llama_dir, shared_data):
    run = tmp_path / "run"
    payload = Trainer(tiny_config(tiny_llama_dir, shared_data), run, progress=False).run_training()
    for name in (
        "config.yaml",
        "metrics.json",
        "predictions.jsonl",
        "train_log.jsonl",
        "plots/reliability.png",
        "plots/training.png",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "blob" and metrics["dataset"] == "arc_easy" and metrics["n_samples"] == 3
    assert metrics["metrics"]["num_examples"] == 8
    assert metrics["train"]["kl_period"] == 12  # 24 examples / batch 2 = 12 batches per epoch
    assert payload["metrics"] == metrics["metrics"]
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert {"nll", "kl", "weighted_kl", "neg_elbo", "pi", "lr"} <= records[0].keys()
    assert records[0]["weighted_kl"] == pytest.approx(records[0]["pi"] * records[0]["kl"])
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 8
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6"]


def test_sigkilled_run_resumes_to_the_same_result(tmp_path, tiny_llama_dir, shared_data):
    """A real kill: the process dies between checkpoints, --resume finishes the job identically."""
    common = [
        "--model",
        str(tiny_llama_dir),
        "--dataset",
        "arc_easy",
        "--data-dir",
        str(shared_data),
        "--max-train-examples",
        "24",
        "--max-eval-examples",
        "8",
        "--max-seq-len",
        "96",
        "--batch-size",
        "2",
        "--lr",
        "0.01",
        "--checkpoint-every",
        "1",
        "--n-samples",
        "2",
        "--max-steps",
        "40",
        "method.kl_period=epoch",
        "--quiet",
    ]
    cli = [sys.executable, "-m", "bayespeft.cli", "train"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([*cli, "-o", str(tmp_path / "straight"), *common], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [*cli, "-o", str(killed), *common], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "checkpoint-3" / "COMPLETE").exists():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists()

    subprocess.run([*cli, "-o", str(killed), "--resume", "--quiet"], check=True, env=env, capture_output=True)
    a, b = adapter_tensors(tmp_path / "straight"), adapter_tensors(killed)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert log_records(tmp_path / "straight") == log_records(killed)


@pytest.mark.parametrize(("method", "n_samples"), [("blob", 0), ("blob", 2), ("mle", 0)])
def test_eval_every_logs_what_evaluating_the_checkpoint_gives(tmp_path, tiny_llama_dir, shared_data, method, n_samples):
    """Held-out scores logged at steps 2, 4, 6 equal a separate `evaluate --checkpoint` of those steps."""
    from bayespeft.cli import main

    config = tiny_config(
        tiny_llama_dir,
        shared_data,
        method,
        **{"train.eval_every": "2", "train.eval_n_samples": str(n_samples), "train.keep_checkpoints": "3"},
    )
    run = tmp_path / "run"
    Trainer(config, run, progress=False).run_training()
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_nll" in r] == [2, 4, 6]
    assert all({"eval_acc", "eval_ece", "eval_nll", "eval_brier"} <= r.keys() for r in records if r["step"] % 2 == 0)
    for step in (2, 4):
        name = f"step{step}"
        assert main(["evaluate", "--run-dir", str(run), "--checkpoint", str(step), "--n-samples", str(n_samples),
                     "--name", name, "--quiet"]) == 0  # fmt: skip
        scores = json.loads((run / "eval" / name / "metrics.json").read_text())["metrics"]
        logged = records[step - 1]
        for key in ("acc", "ece", "nll", "brier"):
            assert logged[f"eval_{key}"] == pytest.approx(scores[key], abs=1e-6), (step, key)
    assert records[1]["eval_nll"] != records[3]["eval_nll"]  # the weights moved between the evaluations


def test_eval_every_leaves_training_unchanged(tmp_path, tiny_llama_dir, shared_data):
    """Evaluating during training (here with posterior draws) does not disturb the training RNG or weights."""
    plain = tiny_config(tiny_llama_dir, shared_data, "blob")
    watched = tiny_config(tiny_llama_dir, shared_data, "blob", **{"train.eval_every": "3", "train.eval_n_samples": "2"})
    Trainer(plain, tmp_path / "plain", progress=False).run_training()
    Trainer(watched, tmp_path / "watched", progress=False).run_training()
    a, b = adapter_tensors(tmp_path / "plain"), adapter_tensors(tmp_path / "watched")
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_early_stopping_keeps_the_best_heldout_weights(tmp_path, tiny_llama_dir, shared_data):
    """A learning rate that wrecks the model: training stops once the held-out NLL stops falling, and the
    final evaluation (posterior mean) is that of the best evaluated step."""
    extra = {
        "train.eval_every": "1",
        "train.early_stopping_patience": "2",
        "train.max_steps": "12",
        "train.lr": "3.0",
        "eval.n_samples": "0",
    }
    run = tmp_path / "run"
    payload = Trainer(tiny_config(tiny_llama_dir, shared_data, "mle", **extra), run, progress=False).run_training()
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    stop = payload["train"]["early_stopping"]
    best = min(records, key=lambda r: r["eval_nll"])
    assert stop["stopped_at_step"] == records[-1]["step"] < 12
    assert stop["best_step"] == best["step"] == stop["stopped_at_step"] - 2
    assert payload["metrics"]["nll"] == pytest.approx(best["eval_nll"], abs=1e-6)


def test_an_evaluation_split_overlapping_the_training_data_is_refused(tmp_path, tiny_llama_dir, shared_data, capsys):
    from bayespeft.cli import main

    run = tmp_path / "run"
    args = ["train", "-o", str(run), "--quiet", "--model", str(tiny_llama_dir), "--dataset", "arc_easy",
            "--data-dir", str(shared_data), "--max-train-examples", "24", "--eval-split", "train",
            "--max-eval-examples", "8", "--max-steps", "2"]  # fmt: skip
    assert main(args) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: data.eval_split: 8 of the 8 evaluation examples are also training examples")
    assert len(message.splitlines()) == 1
    assert not run.exists()
