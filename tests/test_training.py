"""Training runs end to end on a tiny model: resume equals an uninterrupted run, even after SIGKILL."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import adapter_tensors, log_records, tiny_config

from bayespeft.cli import main
from bayespeft.config import load_config
from bayespeft.errors import RunDirError
from bayespeft.training import Trainer, batch_loss, epoch_order, load_examples, unseen_training_examples


def test_epoch_order_is_a_seeded_permutation():
    first = epoch_order(10, seed=3, epoch=0, shuffle=True)
    assert sorted(first) == list(range(10))
    assert first == epoch_order(10, seed=3, epoch=0, shuffle=True)
    assert first != epoch_order(10, seed=3, epoch=1, shuffle=True)
    assert epoch_order(5, seed=3, epoch=0, shuffle=False) == [0, 1, 2, 3, 4]


def test_unseen_training_examples_follow_the_trained_ones(tiny_llama_dir, shared_data):
    """The examples post-hoc fits may validate on are the training split's next ones, none of them trained on."""
    config = tiny_config(tiny_llama_dir, shared_data, "mle")
    trained = load_examples(config, config.data.train_split, config.data.max_train_examples)
    unseen = unseen_training_examples(config)(10)
    assert len(unseen) == 10 and not {e.uid for e in trained} & {e.uid for e in unseen}
    assert unseen == load_examples(config, config.data.train_split, 34)[24:]
    whole = tiny_config(tiny_llama_dir, shared_data, "mle", **{"data.max_train_examples": "null"})
    assert unseen_training_examples(whole) is None


@pytest.mark.parametrize("method", ["blob", "mle"])
def test_paused_and_resumed_run_equals_uninterrupted(tmp_path, tiny_llama_dir, shared_data, method):
    config = tiny_config(tiny_llama_dir, shared_data, method)
    straight = Trainer(config, tmp_path / "straight", progress=False).run_training()
    assert straight["status"] == "finished"

    paused = Trainer(config, tmp_path / "chunked", progress=False, stop_after_steps=3).run_training()
    assert paused == {"status": "paused", "step": 3}
    assert not (tmp_path / "chunked" / "metrics.json").exists()
    resumed = Trainer(config, tmp_path / "chunked", progress=False, resume=True).run_training()
    assert (straight["train"]["resumed_from_step"], resumed["train"]["resumed_from_step"]) == (0, 3)

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


# ---------------------------------------------------------------------------------- nothing lost


def cli_flags(model_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "--model",
        str(model_dir),
        "--method",
        "mle",
        "--dataset",
        "arc_easy",
        "--data-dir",
        str(data_dir),
        "--max-train-examples",
        "24",
        "--max-eval-examples",
        "8",
        "--max-seq-len",
        "96",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "1",
        "--n-samples",
        "2",
        "--max-steps",
        "6",
        "--quiet",
        *extra,
    ]


def run_main(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_diverging_run_stops_and_keeps_finite_checkpoints(capsys, tmp_path, tiny_llama_dir, shared_data):
    run = tmp_path / "run"
    code, err = run_main(capsys, ["train", "-o", str(run), *cli_flags(tiny_llama_dir, shared_data, "--lr", "1e6")])
    assert code == 2
    line = error_line(err)
    assert "step 3:" in line and "not finite" in line and "--resume --lr" in line and "last checkpoint (step 2)" in line
    assert not (run / "metrics.json").exists() and not (run / "adapter").exists()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]  # both kept: nothing non-finite pushed them out
    for name in checkpoints:
        weights = load_file(run / "checkpoints" / name / "trainable.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values()), name
    assert [r["step"] for r in log_records(run)] == [1, 2]


def test_resume_after_divergence_with_a_lower_lr(capsys, monkeypatch, tmp_path, tiny_llama_dir, shared_data):
    """A NaN loss at step 3 (injected) stops the run at checkpoint-2; --resume --lr goes on from there."""
    run = tmp_path / "run"
    losses = []

    def nan_at_step_3(*args, **kwargs):
        nll, scores = batch_loss(*args, **kwargs)
        losses.append(nll)
        return (nll * float("nan") if len(losses) == 3 else nll), scores

    monkeypatch.setattr("bayespeft.training.batch_loss", nan_at_step_3)
    code, err = run_main(capsys, ["train", "-o", str(run), *cli_flags(tiny_llama_dir, shared_data), "--lr", "0.02"])
    assert code == 2
    assert "step 3: nll=nan is not finite" in error_line(err) and "last checkpoint (step 2)" in error_line(err)
    monkeypatch.undo()
    code, err = run_main(capsys, ["train", "-o", str(run), "--resume", "--quiet", "--lr", "0.01"])
    assert code == 0, err
    assert load_config(run / "config.yaml").train.lr == 0.01
    records = log_records(run)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert records[1]["lr"] == pytest.approx(0.02 * 4 / 6)  # linear decay; logged after step 2
    assert records[2]["lr"] == pytest.approx(0.01 * 3 / 6)  # the schedule goes on at the new rate
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(math.isfinite(metrics["metrics"][k]) for k in ("acc", "ece", "nll"))


def test_resume_refuses_other_config_changes(capsys, tmp_path, tiny_llama_dir, shared_data):
    run = tmp_path / "run"
    code, _ = run_main(
        capsys, ["train", "-o", str(run), *cli_flags(tiny_llama_dir, shared_data), "--stop-after-steps", "2"]
    )
    assert code == 0
    before = tree(run)
    code, err = run_main(capsys, ["train", "-o", str(run), "--resume", "--batch-size", "4"])
    assert code == 2
    assert "train.batch_size" in error_line(err) and "--resume" in error_line(err)
    assert tree(run) == before


def test_failed_overwrite_rerun_keeps_the_old_run(capsys, tmp_path, tiny_llama_dir, shared_data):
    run = tmp_path / "run"
    flags = cli_flags(tiny_llama_dir, shared_data)
    assert run_main(capsys, ["train", "-o", str(run), *flags])[0] == 0
    before = tree(run)
    code, err = run_main(capsys, ["train", "-o", str(run), "--overwrite", *flags, "--lr", "1e6"])
    assert code == 2 and "not finite" in error_line(err)
    assert tree(run) == before  # metrics.json and everything else byte-identical
    assert (tmp_path / ".run.bayespeft-new" / "checkpoints").is_dir()  # the failed rerun, beside it
    code, err = run_main(capsys, ["train", "-o", str(run), "--overwrite", *flags, "--lr", "0.02"])
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert load_config(run / "config.yaml").train.lr == 0.02
    assert (run / "metrics.json").read_bytes() != before["metrics.json"]


def test_killed_overwrite_rerun_keeps_the_old_run_and_resumes(tmp_path, tiny_llama_dir, shared_data):
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "bayespeft.cli", "train", "-o", str(run)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    flags = cli_flags(tiny_llama_dir, shared_data)
    subprocess.run([*cli, *flags], check=True, env=env, capture_output=True)
    before = tree(run)
    staging = tmp_path / ".run.bayespeft-new"
    long_run = [*flags[:-2], "40", "--quiet"]  # --max-steps 40
    process = subprocess.Popen(
        [*cli, "--overwrite", *long_run], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (staging / "checkpoints" / "checkpoint-3" / "COMPLETE").exists():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert tree(run) == before
    subprocess.run([*cli, "--resume", "--quiet"], check=True, env=env, capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert [r["step"] for r in log_records(run)] == list(range(1, 41))


def test_resume_drops_a_torn_log_line_and_skips_a_corrupt_checkpoint(tmp_path, tiny_llama_dir, shared_data):
    config = tiny_config(tiny_llama_dir, shared_data, "mle")
    straight = Trainer(config, tmp_path / "straight", progress=False).run_training()
    run = tmp_path / "run"
    Trainer(config, run, progress=False, stop_after_steps=4).run_training()
    (run / "checkpoints" / "checkpoint-4" / "trainable.safetensors").write_bytes(b"not safetensors")
    with (run / "train_log.jsonl").open("a") as handle:
        handle.write('{"step": 5, "nll": 0.7')  # a kill while appending
    resumed = Trainer(config, run, progress=False, resume=True).run_training()
    assert log_records(run) == log_records(tmp_path / "straight")
    assert resumed["metrics"] == straight["metrics"]


def test_resume_refuses_a_finished_run_without_checkpoints(tmp_path, tiny_llama_dir, shared_data):
    config = tiny_config(tiny_llama_dir, shared_data, "mle")
    run = tmp_path / "run"
    Trainer(config, run, progress=False).run_training()
    shutil.rmtree(run / "checkpoints")
    before = tree(run)
    with pytest.raises(RunDirError, match=r"has finished.*no checkpoint.*--overwrite"):
        Trainer(config, run, progress=False, resume=True)
    assert tree(run) == before


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


def test_eval_every_writes_the_log_before_the_next_checkpoint(monkeypatch, tmp_path, tiny_llama_dir, shared_data):
    """Each held-out evaluation reaches train_log.jsonl at once: a run that stops before its first checkpoint
    (a NaN injected at step 5) has already written the steps up to its last evaluation."""
    from bayespeft.errors import NumericalError

    losses = []

    def nan_at_step_5(*args, **kwargs):
        nll, scores = batch_loss(*args, **kwargs)
        losses.append(nll)
        return (nll * float("nan") if len(losses) == 5 else nll), scores

    monkeypatch.setattr("bayespeft.training.batch_loss", nan_at_step_5)
    extra = {"train.eval_every": "2", "train.eval_n_samples": "0", "train.checkpoint_every": "100"}
    run = tmp_path / "run"
    with pytest.raises(NumericalError, match="step 5"):
        Trainer(tiny_config(tiny_llama_dir, shared_data, "mle", **extra), run, progress=False).run_training()
    assert not (run / "checkpoints").is_dir() or not any((run / "checkpoints").iterdir())
    records = log_records(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "eval_nll" in r] == [2, 4]


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
