"""The run directory: refuse to clobber, overwrite on request, recognise finished runs."""

from __future__ import annotations

import json

import pytest

from bayespeft import __version__
from bayespeft.errors import ConfigError, RunDirError
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


def test_check_new_overwrite_allowed_on_a_run_and_deletes_nothing(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create()
    run.config.write_text("{}\n")
    run.metrics.write_text("{}\n")
    run.check_new(overwrite=True, resume=False)
    assert run.metrics.read_text() == "{}\n"  # checking deletes nothing
    assert run.build_target(overwrite=True) == run.staging  # the rerun is built beside it


def test_overwrite_refuses_foreign_files(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create()
    run.config.write_text("{}\n")
    (run.root / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"notes\.txt.*bayespeft did not write"):
        run.check_new(overwrite=True, resume=False)
    assert (run.root / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_a_folder_that_is_no_run(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    (root / "config.yaml").write_text("{}\n")  # config.yaml alone (no marker, metrics, adapter or log)
    with pytest.raises(RunDirError, match="not a bayespeft run"):
        RunDir(root).check_new(overwrite=True, resume=False)


def test_overwrite_accepts_a_run_made_before_the_marker(tmp_path):
    root = tmp_path / "run"
    (root / "adapter").mkdir(parents=True)
    (root / "config.yaml").write_text("train:\n  tracking_project: tb\n")
    (root / "metrics.json").write_text("{}\n")
    (root / "tb").mkdir()  # the tracker folder its config names
    (root / ".metrics.json.abc123.tmp").write_text("")  # an atomic write a kill interrupted
    RunDir(root).check_new(overwrite=True, resume=False)
    (root / "other").mkdir()
    with pytest.raises(RunDirError, match="holds other"):
        RunDir(root).check_new(overwrite=True, resume=False)


@pytest.mark.parametrize("where", ["cwd", "parent of cwd", "home", "repository"])
def test_overwrite_refuses_protected_folders(tmp_path, monkeypatch, where):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    target = {"cwd": work, "parent of cwd": tmp_path, "home": tmp_path / "home", "repository": tmp_path / "repo"}[where]
    target.mkdir(exist_ok=True)
    if where == "repository":
        (target / ".git").mkdir()
    with pytest.raises(RunDirError, match="--overwrite refused"):
        RunDir(target).check_new(overwrite=True, resume=False)
    assert target.is_dir()


def test_output_under_a_file_or_unwritable(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        RunDir(tmp_path / "file" / "run").check_new(overwrite=False, resume=False)
    monkeypatch.setattr("bayespeft.rundir.os.access", lambda path, mode: False)
    with pytest.raises(RunDirError, match="cannot write"):
        RunDir(tmp_path / "new" / "run").check_new(overwrite=False, resume=False)
    assert not (tmp_path / "new").exists()


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


def test_create_new_writes_the_marker(tmp_path):
    run = RunDir(tmp_path / "a" / "run")
    run.create()
    assert run.root.is_dir() and run.plots.is_dir()
    marker = json.loads(run.marker.read_text())
    assert marker["bayespeft_version"] == __version__ and marker["created"]


def test_create_keeps_files(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    (run.root / "config.yaml").write_text("keep")
    run.create()  # resume path: keep everything
    assert run.config.read_text() == "keep"


def test_replace_with_swaps_and_clears_only_runs(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create()
    run.metrics.write_text("old")
    staged = run.staging
    staged.create()
    staged.metrics.write_text("new")
    run.replace_with(staged)
    assert run.metrics.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_replace_refuses_when_a_foreign_file_arrived(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create()
    run.staging.create()
    (run.root / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"notes\.txt"):
        run.replace_with(run.staging)
    assert (run.root / "notes.txt").read_text() == "mine" and run.staging.marker.is_file()


@pytest.mark.parametrize("staged_finished", [True, False])
def test_recover_an_interrupted_swap(tmp_path, staged_finished):
    run = RunDir(tmp_path / "run")
    run.create()
    run.metrics.write_text("old")
    run.staging.create()
    if staged_finished:
        run.staging.metrics.write_text("new")
    run.root.rename(tmp_path / ".run.bayespeft-old")  # killed between the two renames
    run.recover()
    assert run.metrics.read_text() == ("new" if staged_finished else "old")
    assert not (tmp_path / ".run.bayespeft-old").exists()


def test_clear_staging_refuses_foreign_content(tmp_path):
    run = RunDir(tmp_path / "run")
    run.staging.root.mkdir()
    (run.staging.root / "mine.txt").write_text("x")
    with pytest.raises(RunDirError, match="move it away"):
        run.clear_staging()
    assert (run.staging.root / "mine.txt").exists()


def test_eval_dir_takes_plain_names_only(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.eval_dir("obqa_test_n10") == tmp_path / "run" / "eval" / "obqa_test_n10"
    for bad in ("..", ".", "../x", "a/b", "", ".hidden", "a\\b"):
        with pytest.raises(ConfigError, match="--name"):
            run.eval_dir(bad)


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
