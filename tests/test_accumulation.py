"""Gradient accumulation and train.epochs in our own loop: N micro-batches of b are one batch of N x b."""

from __future__ import annotations

import pytest
import torch
from training_helpers import adapter_tensors, log_records, tiny_config

from bayespeft.config import load_config
from bayespeft.errors import ConfigError
from bayespeft.methods.kl_schedule import KLSchedule, kl_weight
from bayespeft.training import Trainer

# a large Adam epsilon makes the update proportional to the gradient, so a wrongly scaled one shows
SGD_LIKE = {"train.shuffle": "false", "train.adam_eps": "10", "train.lr": "1", "train.warmup_ratio": "0"}


def train(tmp_path, name: str, model_dir, data_dir, method: str, steps: int, **extra: str) -> dict:
    config = tiny_config(model_dir, data_dir, method, steps, **extra)
    return Trainer(config, tmp_path / name, progress=False).run_training()


def test_accumulated_micro_batches_equal_one_large_batch_for_mle(tmp_path, tiny_llama_dir, shared_data):
    common = {**SGD_LIKE, "eval.n_samples": "0"}
    train(tmp_path, "big", tiny_llama_dir, shared_data, "mle", 2, **common, **{"train.batch_size": "4"})
    train(
        tmp_path,
        "acc",
        tiny_llama_dir,
        shared_data,
        "mle",
        2,
        **common,
        **{"train.batch_size": "2", "train.gradient_accumulation_steps": "2"},
    )
    train(tmp_path, "small", tiny_llama_dir, shared_data, "mle", 2, **common, **{"train.batch_size": "2"})
    big, acc, small = (adapter_tensors(tmp_path / n) for n in ("big", "acc", "small"))
    for key in big:
        torch.testing.assert_close(acc[key], big[key], rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(small[k], big[k], rtol=1e-4, atol=1e-6) for k in big)  # the comparison can fail
    big_log, acc_log = log_records(tmp_path / "big"), log_records(tmp_path / "acc")
    assert [r["step"] for r in acc_log] == [1, 2]
    for a, b in zip(acc_log, big_log, strict=True):
        assert a["nll"] == pytest.approx(b["nll"], rel=1e-5)  # the logged NLL is the mean over all micro-batches
        assert a["batch_acc"] == pytest.approx(b["batch_acc"])


def test_accumulation_applies_the_kl_once_per_optimiser_step_and_resumes(tmp_path, tiny_llama_dir, shared_data):
    extra = {"train.gradient_accumulation_steps": "3"}  # 24 examples / (2 x 3) = 4 optimiser steps per epoch
    config = tiny_config(tiny_llama_dir, shared_data, "blob", 6, **extra)
    straight = Trainer(config, tmp_path / "straight", progress=False).run_training()
    records = log_records(tmp_path / "straight")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in records] == [0, 0, 0, 0, 1, 1]
    assert straight["train"]["kl_period"] == 4  # the epoch period counts optimiser steps
    schedule = KLSchedule(config.method.kl_schedule)
    assert [r["pi"] for r in records] == [kl_weight(s, 4, schedule) for s in range(1, 7)]

    Trainer(config, tmp_path / "chunked", progress=False, stop_after_steps=3).run_training()
    Trainer(config, tmp_path / "chunked", progress=False, resume=True).run_training()
    a, b = adapter_tensors(tmp_path / "straight"), adapter_tensors(tmp_path / "chunked")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert log_records(tmp_path / "chunked") == records


def test_epochs_derive_the_steps_from_the_training_set(tmp_path, tiny_llama_dir, shared_data):
    extra = {"train.epochs": "2", "train.gradient_accumulation_steps": "2", "eval.n_samples": "0"}
    result = train(tmp_path, "run", tiny_llama_dir, shared_data, "mle", 200, **extra)
    assert result["status"] == "finished" and result["train"]["steps"] == 12
    records = log_records(tmp_path / "run")
    assert len(records) == 12 and {r["epoch"] for r in records} == {0, 1}  # 24 / (2 x 2) = 6 steps per epoch
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.train.epochs == 2 and saved.train.max_steps == 200  # resume compares against what was asked


@pytest.mark.parametrize(("key", "value"), [("train.epochs", "0"), ("train.gradient_accumulation_steps", "0")])
def test_bad_epochs_and_accumulation_name_the_field(key, value):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [f"{key}={value}"])
