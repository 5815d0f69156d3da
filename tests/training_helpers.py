"""The small training run the Trainer tests share: tiny Llama on 24 ARC-Easy questions, and readers of its output."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from bayespeft.config import RunConfig, load_config


def tiny_config(model_dir: Path, data_dir: Path, method: str = "blob", steps: int = 6, **extra: str) -> RunConfig:
    """24 ARC-Easy questions on the tiny Llama, batches of 2 unless ``extra`` (dotted overrides) says otherwise.

    BLoB methods take the epoch KL period, so a run this short still reaches the full KL weight.
    """
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
        *(["method.kl_period=epoch"] if method.startswith("blob") else []),
        *(f"{k}={v}" for k, v in extra.items()),
    ]
    return load_config(None, overrides)


def adapter_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """The saved adapter of a run."""
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def log_records(run_dir: Path) -> list[dict]:
    """The run's training log without the step times, which differ between otherwise equal runs."""
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "step_time_s"} for line in lines]
