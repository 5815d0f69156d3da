"""Optional experiment tracking (train.report_to): config checks, the CLI flag, and TensorBoard end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bayespeft import training
from bayespeft.cli import main, parse_args
from bayespeft.commands.flags import cli_overrides
from bayespeft.config import load_config
from bayespeft.errors import ConfigError
from bayespeft.training import Trainer, make_accelerator


def test_tracking_is_off_by_default():
    config = load_config(None)
    assert config.train.report_to == [] and config.train.tracking_project == "bayespeft"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.report_to=[tensorbord]", "train.report_to has unknown tracker 'tensorbord'"),
        ("train.report_to=[wandb, WandB]", "train.report_to lists a tracker twice"),
        ("train.tracking_project=' '", "train.tracking_project must not be empty"),
    ],
)
def test_bad_tracking_config_names_the_field(item, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [item])


def test_report_to_flag_takes_a_comma_separated_list():
    args = parse_args(["train", "-o", "run", "--report-to", "TensorBoard, wandb"])
    assert load_config(None, cli_overrides(args)).train.report_to == ["tensorboard", "wandb"]


def test_missing_tracker_package_is_a_one_line_config_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(training._TRACKER_AVAILABLE, "wandb", lambda: False)
    config = load_config(None, ["train.report_to=tensorboard,wandb"])
    with pytest.raises(
        ConfigError, match=r"train\.report_to: tracker wandb needs the wandb package \(pip install wandb\)"
    ):
        make_accelerator(config, tmp_path)
    run = tmp_path / "run"
    assert main(["train", "-o", str(run), "--report-to", "wandb", "--dataset", "arc_easy"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: train.report_to: tracker wandb needs the wandb package (pip install wandb)"
    )
    assert not run.exists()


def test_only_training_runs_are_tracked():
    """Sessions of evaluate, calibrate and ood (no run directory to log into) get no trackers."""
    pytest.importorskip("tensorboard")
    assert make_accelerator(load_config(None, ["train.report_to=[tensorboard]"])).log_with == []


def test_tensorboard_events_hold_the_train_log_and_final_metrics(tmp_path, tiny_llama_dir, shared_data):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = load_config(
        None,
        [
            f"model.name={tiny_llama_dir}",
            "method.name=blob",
            "method.kl_period=epoch",
            "data.dataset=arc_easy",
            f"data.data_dir={shared_data}",
            "data.max_train_examples=8",
            "data.max_eval_examples=4",
            "data.max_length=96",
            "train.max_steps=3",
            "train.batch_size=2",
            "eval.n_samples=2",
            "train.report_to=[tensorboard]",
            "train.tracking_project=tiny",
        ],
    )
    run = tmp_path / "run"
    payload = Trainer(config, run, progress=False).run_training()
    events = EventAccumulator(str(run / "tiny"))
    events.Reload()
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    for key in ("nll", "kl", "lr", "batch_acc"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in log], rel=1e-6)
    for key in ("acc", "ece", "nll"):
        (final,) = events.Scalars(f"eval/{key}")
        assert (final.step, final.value) == (3, pytest.approx(payload["metrics"][key], rel=1e-6))
    (hparams,) = Path(run / "tiny").glob("*/hparams.yml")  # the resolved config, flattened
    text = hparams.read_text()
    assert "train.lr:" in text and "method.name: blob" in text
