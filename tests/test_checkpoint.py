"""Tests for crash-safe, pickle-free checkpoint I/O."""

from __future__ import annotations

import inspect
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bayespeft import checkpoint as ckpt
from bayespeft.checkpoint import (
    capture_rng_state,
    find_latest_checkpoint,
    load_tensors,
    load_training_checkpoint,
    optimizer_state_from_files,
    optimizer_state_to_files,
    prune_checkpoints,
    read_json,
    restore_rng_state,
    save_tensors_atomic,
    save_training_checkpoint,
    scheduler_state_from_json,
    scheduler_state_to_json,
    write_json_atomic,
)
from bayespeft.errors import BayesPeftError, RunDirError


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)
        y = torch.randn(16, 2, generator=gen)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def _assert_state_dicts_equal(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index, param_state in a["state"].items():
        other = b["state"][index]
        assert param_state.keys() == other.keys()
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                assert isinstance(other[name], torch.Tensor)
                assert value.dtype == other[name].dtype
                assert torch.equal(value, other[name]), (index, name)
            else:
                assert type(value) is type(other[name])
                assert value == other[name]


OPTIMIZERS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adamw-amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.95)),
    "sgd": lambda p: torch.optim.SGD(p, lr=1e-1),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=1e-1, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_optimizer_round_trip_is_exact_and_resumes_bitwise(kind: str, tmp_path: Path) -> None:
    make = OPTIMIZERS[kind]
    model = _model()
    optimizer = make(model.parameters())
    _train(model, optimizer, steps=3, seed=1)

    tensors, meta = optimizer_state_to_files(optimizer)
    save_tensors_atomic(tmp_path / "opt.safetensors", tensors)
    write_json_atomic(tmp_path / "opt.json", meta)
    restored = optimizer_state_from_files(load_tensors(tmp_path / "opt.safetensors"), read_json(tmp_path / "opt.json"))
    _assert_state_dicts_equal(optimizer.state_dict(), restored)
    assert isinstance(restored["param_groups"][0].get("betas", ()), tuple)

    clone = _model()
    clone.load_state_dict(model.state_dict())
    clone_optimizer = make(clone.parameters())
    clone_optimizer.load_state_dict(restored)
    _train(model, optimizer, steps=3, seed=2)
    _train(clone, clone_optimizer, steps=3, seed=2)
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(p, q)
    _assert_state_dicts_equal(optimizer.state_dict(), clone_optimizer.state_dict())


def test_optimizer_float_step_keeps_its_kind() -> None:
    model = _model()
    optimizer = torch.optim.Adam(model.parameters())
    _train(model, optimizer, steps=2, seed=0)
    state = optimizer.state_dict()
    for param_state in state["state"].values():
        param_state["step"] = float(param_state["step"])
    optimizer.load_state_dict(state)
    tensors, meta = optimizer_state_to_files(optimizer)
    meta = json.loads(json.dumps(meta))
    restored = optimizer_state_from_files(tensors, meta)
    _assert_state_dicts_equal(optimizer.state_dict(), restored)


def _warmup_decay(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / (total - warmup))

    return factor


def test_lambda_lr_round_trip_gives_identical_lr_sequence(tmp_path: Path) -> None:
    def make(model: torch.nn.Module):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_decay(3, 10))

    model = _model()
    optimizer, scheduler = make(model)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    write_json_atomic(tmp_path / "sched.json", scheduler_state_to_json(scheduler))
    restored = scheduler_state_from_json(read_json(tmp_path / "sched.json"))
    assert restored == scheduler.state_dict()
    assert restored["lr_lambdas"] == [None]

    clone_optimizer, clone_scheduler = make(_model())
    clone_optimizer.load_state_dict(optimizer.state_dict())
    clone_scheduler.load_state_dict(restored)
    original, resumed = [], []
    for opt, sched, out in ((optimizer, scheduler, original), (clone_optimizer, clone_scheduler, resumed)):
        for _ in range(8):
            opt.step()
            sched.step()
            out.append(sched.get_last_lr()[0])
    assert original == resumed
    assert original[-1] == 0.0


def test_rng_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.normal()  # leave a cached gaussian in numpy's state
    random.gauss(0, 1)
    tensors, meta = capture_rng_state()
    save_tensors_atomic(tmp_path / "rng.safetensors", tensors)
    write_json_atomic(tmp_path / "rng.json", meta)
    expected = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], random.gauss(0, 1))

    torch.rand(100)
    np.random.rand(100)
    random.random()
    restore_rng_state(load_tensors(tmp_path / "rng.safetensors"), read_json(tmp_path / "rng.json"))
    got = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], random.gauss(0, 1))
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2:] == got[2:]


def test_write_json_atomic_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json_atomic(path, {"step": 1, "where": tmp_path, "loss": float("inf")})
    before = path.read_text()
    assert read_json(path) == {"step": 1, "where": str(tmp_path), "loss": float("inf")}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"step": 2, "bad": object()})
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_read_json_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match=r"missing\.json"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "a": 1,\n  oops\n}\n')
    with pytest.raises(RunDirError, match=r"bad\.json:3:3: malformed JSON"):
        read_json(bad)


def test_save_tensors_handles_shared_and_noncontiguous(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {"base": base, "view": base[1], "transposed": base.t()}
    save_tensors_atomic(tmp_path / "t.safetensors", tensors, metadata={"note": "x"})
    loaded = load_tensors(tmp_path / "t.safetensors")
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value)


def test_corrupt_safetensors_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_tensors_atomic(path, {"w": torch.ones(64)})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(RunDirError, match=r"weights\.safetensors"):
        load_tensors(path)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(RunDirError, match=r"weights\.safetensors"):
        load_tensors(path)


def _training_objects():
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_decay(2, 20))
    for _ in range(3):
        _train(model, optimizer, steps=1, seed=5)
        scheduler.step()
    return model, optimizer, scheduler


def _save(directory: Path, step: int) -> None:
    model, optimizer, scheduler = _training_objects()
    save_training_checkpoint(
        directory,
        trainable=dict(model.named_parameters()),
        optimizers={"main": optimizer},
        schedulers={"main": scheduler},
        state={"step": step},
    )


def test_training_checkpoint_round_trip(tmp_path: Path) -> None:
    model, optimizer, scheduler = _training_objects()
    state = {"step": 30, "epoch": 1, "batch": 7, "kl_counter": 30, "out": tmp_path}
    directory = tmp_path / "checkpoint-30"
    torch.manual_seed(11)
    save_training_checkpoint(
        directory,
        trainable=dict(model.named_parameters()),
        optimizers={"main": optimizer},
        schedulers={"main": scheduler},
        state=state,
    )
    expected_draw = torch.rand(3)
    assert (directory / "COMPLETE").is_file()
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint-30"}

    loaded = load_training_checkpoint(directory)
    assert loaded.state == {**state, "out": str(tmp_path)}
    for name, param in model.named_parameters():
        assert torch.equal(loaded.trainable[name], param)
    _assert_state_dicts_equal(optimizer.state_dict(), loaded.optimizers["main"])
    assert loaded.schedulers["main"] == scheduler.state_dict()
    restore_rng_state(loaded.rng_tensors, loaded.rng_meta)
    assert torch.equal(torch.rand(3), expected_draw)

    # Overwriting the same folder swaps in the new one and removes the old.
    _save(directory, step=31)
    assert load_training_checkpoint(directory).state == {"step": 31}
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint-30"}


def test_interrupted_swap_is_recovered(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoint-5"
    _save(directory, step=5)
    # Simulate a crash after the old folder was renamed away but before the new one moved in.
    os.replace(directory, tmp_path / ".checkpoint-5.old")
    assert find_latest_checkpoint(tmp_path) == directory
    assert load_training_checkpoint(directory).state == {"step": 5}
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint-5"}


def test_incomplete_checkpoint_raises_naming_folder(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoint-9"
    _save(directory, step=9)
    (directory / "COMPLETE").unlink()
    with pytest.raises(RunDirError, match="checkpoint-9"):
        load_training_checkpoint(directory)


def test_corrupt_file_in_checkpoint_raises_naming_it(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoint-9"
    _save(directory, step=9)
    (directory / "optimizer-main.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(RunDirError, match=r"checkpoint-9.*optimizer-main\.safetensors"):
        load_training_checkpoint(directory)


def test_find_latest_and_prune(tmp_path: Path) -> None:
    assert find_latest_checkpoint(tmp_path / "nope") is None
    for step in (10, 20, 30):
        _save(tmp_path / f"checkpoint-{step}", step=step)
    (tmp_path / "checkpoint-40").mkdir()  # crashed writer: no COMPLETE marker
    (tmp_path / "checkpoint-40" / "state.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-30"

    removed = prune_checkpoints(tmp_path, keep=2)
    assert removed == [tmp_path / "checkpoint-10"]
    assert {p.name for p in tmp_path.iterdir()} == {
        "checkpoint-20",
        "checkpoint-30",
        "checkpoint-40",
        "notes",
    }
    with pytest.raises(BayesPeftError):
        prune_checkpoints(tmp_path, keep=0)


def test_bad_names_and_unencodable_state_are_rejected(tmp_path: Path) -> None:
    _, optimizer, _ = _training_objects()
    with pytest.raises(BayesPeftError, match="optimizer name"):
        save_training_checkpoint(
            tmp_path / "checkpoint-1", trainable={}, optimizers={"a/b": optimizer}, schedulers={}, state={}
        )
    optimizer.param_groups[0]["hook"] = print
    with pytest.raises(BayesPeftError, match=r"param_groups\.0\.hook: cannot store"):
        optimizer_state_to_files(optimizer)


def test_module_never_unpickles() -> None:
    source = inspect.getsource(ckpt)
    assert "pickle" not in source
    assert "torch.load" not in source
    assert "torch.save" not in source
