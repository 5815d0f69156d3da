"""The run directory: refuse to clobber, overwrite on request, recognise finished runs."""

from __future__ import annotations

import pytest

from bayespeft.errors import RunDirError
from bayespeft.rundir import RunDir


def test_layout(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.config == tmp_path / "run" / "config.yaml"
    assert run.metrics.name == "metrics.json"
    assert run.train_log.name == "train_log.jsonl"
    assert run.adapter.name == "adapter"
    assert run.checkpoints.name == "checkpoints"
    assert run.plots.name == "plots"
    assert run.eval_dir("obqa_test_n10") == tmp_path / "run" / "eval" / "obqa_test_n10"


def test_check_new_accepts_missing_and_empty(tmp_path):
    RunDir(tmp_path / "missing").check_new(overwrite=False, resume=False)
    assert not (tmp_path / "missing").exists()  # checking writes nothing
    (tmp_path / "empty").mkdir()
    RunDir(tmp_path / "empty").check_new(overwrite=False, resume=False)


def test_check_new_refuses_non_empty(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    (root / "sentinel.txt").write_text("keep me")
    with pytest.raises(RunDirError) as info:
        RunDir(root).check_new(overwrite=False, resume=False)
    message = str(info.value)
    assert str(root) in message and "--overwrite" in message and "--resume" in message
    assert (root / "sentinel.txt").read_text() == "keep me"


def test_check_new_refuses_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(RunDirError, match="not a directory"):
        RunDir(path).check_new(overwrite=True, resume=False)
    assert path.read_text() == "x"


def test_check_new_overwrite_allowed_and_deletes_nothing(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    (root / "old.txt").write_text("old")
    RunDir(root).check_new(overwrite=True, resume=False)
    assert (root / "old.txt").read_text() == "old"  # only create() clears


def test_check_new_resume_needs_config(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    (root / "other.txt").write_text("x")
    with pytest.raises(RunDirError, match=r"config\.yaml"):
        RunDir(root).check_new(overwrite=False, resume=True)
    with pytest.raises(RunDirError, match="nothing to resume"):
        RunDir(tmp_path / "missing").check_new(overwrite=False, resume=True)
    (root / "config.yaml").write_text("{}\n")
    RunDir(root).check_new(overwrite=False, resume=True)


def test_create_new(tmp_path):
    run = RunDir(tmp_path / "a" / "run")
    run.create(overwrite=False)
    assert run.root.is_dir() and run.plots.is_dir()


def test_create_with_overwrite_clears(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    (run.root / "old.txt").write_text("old")
    (run.root / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    run.create(overwrite=True)
    assert not (run.root / "old.txt").exists()
    assert not run.checkpoints.exists()
    assert run.plots.is_dir()


def test_create_without_overwrite_keeps_files(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    (run.root / "config.yaml").write_text("keep")
    run.create(overwrite=False)  # resume path: keep everything
    assert run.config.read_text() == "keep"


def test_require_trained(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(RunDirError, match="not a finished bayespeft run"):
        run.require_trained()
    run.root.mkdir()
    run.config.write_text("{}\n")
    with pytest.raises(RunDirError) as info:
        run.require_trained()
    assert "adapter_model.safetensors" in str(info.value) and str(run.root) in str(info.value)
    run.adapter.mkdir()
    (run.adapter / "adapter_model.safetensors").write_bytes(b"")
    run.require_trained()
    run.config.unlink()
    with pytest.raises(RunDirError, match=r"config\.yaml"):
        run.require_trained()
