"""The command line: bad input gives exit 2, one ``error:`` line naming the culprit, and no files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_arc import ARC_FILES, write_arc

from bayespeft import __version__
from bayespeft.cli import build_parser, main, parse_args
from bayespeft.commands.flags import cli_overrides
from bayespeft.config import load_config
from bayespeft.methods import BlobConfig


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A fake offline data folder in the layout of shared/data (arc_easy only)."""
    return write_arc(tmp_path / "data")


def snapshot(root: Path) -> dict[str, bytes] | None:
    """Every file under ``root`` with its content (None when ``root`` does not exist)."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    return code, out.err


def assert_one_error_line(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got: {err!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--method", "nope"], ["method.name", "nope"]),
        (["--modelwrapper", "nope"], ["method.name", "nope"]),
        (["--dataset", "nope"], ["dataset", "nope"]),
        (["--lora-r", "0"], ["model.lora.r"]),
        (["--bayes-beta", "0"], ["method.beta"]),
        (["--n-samples", "-1"], ["eval.n_samples"]),
        (["--bayes-eval-n-samples", "-1"], ["eval.n_samples"]),
        (["--bayes-eps", "0"], ["method.eps"]),
        (["--method", "mle", "--bayes-beta", "0.3"], ["method.beta"]),
        (["--precision", "fp8"], ["model.precision"]),
        (["--lr", "0"], ["train.lr"]),
        (["train.foo=1"], ["train.foo"]),
        (["method.foo=1"], ["method.foo"]),
        (["train.batch_size=abc"], ["train.batch_size"]),
    ],
)
def test_train_bad_input(capsys, tmp_path, data_dir, flags, needles):
    out = tmp_path / "run"
    code, err = run_cli(capsys, ["train", "-q", "-o", str(out), "--data-dir", str(data_dir), *flags])
    assert code == 2
    assert_one_error_line(err, *needles)
    assert not out.exists()


def test_unknown_model_fails_offline_quickly(tmp_path, data_dir):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    argv = ["train", "-q", "-o", str(out), "--data-dir", str(data_dir), "--model", "not-a-model-xyz"]
    proc = subprocess.run(
        [sys.executable, "-m", "bayespeft.cli", *argv], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, proc.stderr
    assert "model.name" in error_lines[0] and "not-a-model-xyz" in error_lines[0]
    assert proc.stderr.strip().splitlines()[-1] == error_lines[0]
    assert not out.exists()


def test_missing_data_dir(capsys, tmp_path):
    out, missing = tmp_path / "run", tmp_path / "no-such-data"
    code, err = run_cli(capsys, ["train", "-q", "-o", str(out), "--data-dir", str(missing)])
    assert code == 2
    assert_one_error_line(err, str(missing))
    assert not out.exists()


def test_missing_data_file(capsys, tmp_path, data_dir):
    (data_dir / "arc_easy" / ARC_FILES["validation"]).unlink()
    out = tmp_path / "run"
    code, err = run_cli(capsys, ["train", "-q", "-o", str(out), "--data-dir", str(data_dir)])
    assert code == 2
    assert_one_error_line(err, ARC_FILES["validation"], "not found")
    assert not out.exists()


def test_malformed_data_file_names_file_and_line(capsys, tmp_path, data_dir):
    path = data_dir / "arc_easy" / ARC_FILES["train"]
    lines = path.read_text().splitlines()
    lines[2] = '{"id": "broken", "question": '
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    code, err = run_cli(capsys, ["train", "-q", "-o", str(out), "--data-dir", str(data_dir)])
    assert code == 2
    assert_one_error_line(err, f"{path}:3")
    assert not out.exists()


def test_bad_row_content_names_file_and_line(capsys, tmp_path, data_dir):
    path = data_dir / "arc_easy" / ARC_FILES["train"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[4]["answerKey"] = "Z"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    code, err = run_cli(capsys, ["train", "-q", "-o", str(out), "--data-dir", str(data_dir)])
    assert code == 2
    assert_one_error_line(err, f"{path}:5")
    assert not out.exists()


def test_missing_config_file(capsys, tmp_path):
    out, config = tmp_path / "run", tmp_path / "nope.yaml"
    code, err = run_cli(capsys, ["train", "-q", "-o", str(out), "--config", str(config)])
    assert code == 2
    assert_one_error_line(err, str(config))
    assert not out.exists()


def test_invalid_yaml_config(capsys, tmp_path):
    out, config = tmp_path / "run", tmp_path / "bad.yaml"
    config.write_text("train:\n  lr: [1,\n")
    code, err = run_cli(capsys, ["train", "-q", "-o", str(out), "--config", str(config)])
    assert code == 2
    assert_one_error_line(err, f"{config}:")
    assert not out.exists()


# ---------------------------------------------------------------------------------- run directory


def existing_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    (out / "sentinel.txt").write_text("precious results")
    (out / "metrics.json").write_text('{"acc": 0.5}')
    return out


def test_existing_run_dir_refused(capsys, tmp_path, data_dir):
    out = existing_run(tmp_path)
    before = snapshot(out)
    code, err = run_cli(capsys, ["train", "-q", "-o", str(out), "--data-dir", str(data_dir)])
    assert code == 2
    assert_one_error_line(err, str(out), "--overwrite")
    assert snapshot(out) == before
    assert (out / "sentinel.txt").read_text() == "precious results"


@pytest.mark.parametrize("flags", [["--dataset", "nope"], ["--lora-r", "0"], ["--bayes-eps", "0"]])
def test_overwrite_with_bad_input_keeps_old_run(capsys, tmp_path, data_dir, flags):
    out = existing_run(tmp_path)
    before = snapshot(out)
    code, err = run_cli(capsys, ["train", "-q", "-o", str(out), "--data-dir", str(data_dir), "--overwrite", *flags])
    assert code == 2
    assert_one_error_line(err)
    assert snapshot(out) == before


def test_resume_and_overwrite_exclude_each_other(capsys, tmp_path, data_dir):
    out = existing_run(tmp_path)
    before = snapshot(out)
    code, err = run_cli(capsys, ["train", "-q", "-o", str(out), "--data-dir", str(data_dir), "--resume", "--overwrite"])
    assert code == 2
    assert_one_error_line(err, "--resume", "--overwrite")
    assert snapshot(out) == before


def test_resume_without_config(capsys, tmp_path, data_dir):
    out = existing_run(tmp_path)
    before = snapshot(out)
    code, err = run_cli(capsys, ["train", "-q", "-o", str(out), "--data-dir", str(data_dir), "--resume"])
    assert code == 2
    assert_one_error_line(err, str(out), "config.yaml")
    assert snapshot(out) == before


def test_resume_missing_folder(capsys, tmp_path, data_dir):
    out = tmp_path / "never-ran"
    code, err = run_cli(capsys, ["train", "-q", "-o", str(out), "--data-dir", str(data_dir), "--resume"])
    assert code == 2
    assert_one_error_line(err, str(out))
    assert not out.exists()


def test_evaluate_unfinished_run(capsys, tmp_path):
    out = existing_run(tmp_path)
    before = snapshot(out)
    code, err = run_cli(capsys, ["evaluate", "-q", "--run-dir", str(out)])
    assert code == 2
    assert_one_error_line(err, str(out), "not a finished bayespeft run")
    assert snapshot(out) == before


def test_evaluate_run_without_adapter(capsys, tmp_path):
    out = existing_run(tmp_path)
    (out / "config.yaml").write_text("method:\n  name: blob\n")
    before = snapshot(out)
    code, err = run_cli(capsys, ["evaluate", "-q", "--run-dir", str(out)])
    assert code == 2
    assert_one_error_line(err, "adapter_model.safetensors")
    assert snapshot(out) == before


def test_evaluate_missing_run_dir(capsys, tmp_path):
    out = tmp_path / "nothing"
    code, err = run_cli(capsys, ["evaluate", "-q", "--run-dir", str(out)])
    assert code == 2
    assert_one_error_line(err, str(out))
    assert not out.exists()


# ---------------------------------------------------------------------------------- flags


def parse_config(argv: list[str]):
    return load_config(None, cli_overrides(build_parser().parse_args(["train", "-o", "unused", *argv])))


def test_reference_flag_aliases():
    config = parse_config(
        [
            "--modelwrapper",
            "blob",
            "--bayes-beta",
            "0.3",
            "--bayes-eval-n-samples",
            "7",
            "--bayes-inference-notsample",
            "--lora-r",
            "4",
            "--max-train-steps",
            "9",
        ]
    )
    assert isinstance(config.method, BlobConfig)
    assert config.method.beta == pytest.approx(0.3)
    assert config.eval.n_samples == 0  # --bayes-inference-notsample: posterior mean
    assert config.model.lora.r == 4
    assert config.train.max_steps == 9


def test_more_flag_aliases():
    config = parse_config(
        [
            "--bayes-eval-n-samples",
            "7",
            "--bayes-eps",
            "-3",
            "--bayes-gamma",
            "4",
            "--bayes-kllr",
            "0.002",
            "--opt-wd",
            "0.01",
            "--max-seq-len",
            "128",
            "--adam-epsilon",
            "1e-6",
            "--lr",
            "5e-4",
            "--lora-targets",
            "q_proj, v_proj",
            "--model",
            "smollm2-135m",
            "--dataset",
            "obqa",
        ]
    )
    assert config.eval.n_samples == 7
    assert config.method.eps == pytest.approx(-3.0)
    assert config.method.gamma == pytest.approx(4.0)
    assert config.method.kl_lr == pytest.approx(0.002)
    assert config.train.weight_decay == pytest.approx(0.01)
    assert config.data.max_length == 128
    assert config.train.adam_eps == pytest.approx(1e-6)
    assert config.train.lr == pytest.approx(5e-4)
    assert config.model.lora.target_modules == ["q_proj", "v_proj"]
    assert config.model.name == "smollm2-135m"
    assert config.data.dataset == "obqa"


def test_flags_win_over_positional_overrides():
    config = parse_config(["method.beta=0.1", "train.seed=7", "--bayes-beta", "0.5"])
    assert config.method.beta == pytest.approx(0.5)
    assert config.train.seed == 7


def test_overrides_between_and_after_flags():
    args = parse_args(["train", "method.beta=0.1", "-o", "x", "train.seed=7", "--lora-r", "2", "eval.n_bins=5"])
    config = load_config(None, cli_overrides(args))
    assert config.method.beta == pytest.approx(0.1)
    assert config.train.seed == 7
    assert config.eval.n_bins == 5
    assert config.model.lora.r == 2
    assert args.output_dir == Path("x")


def test_unknown_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(["train", "-o", "x", "--no-such-flag", "train.seed=7"])
    assert info.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["train", "train.seed=7", "-o", "x", "stray"])


def test_positional_without_equals_is_a_config_error(capsys, tmp_path):
    code, err = run_cli(capsys, ["train", "-o", str(tmp_path / "run"), "stray"])
    assert code == 2
    assert_one_error_line(err, "stray", "key=value")
    assert not (tmp_path / "run").exists()


def test_switch_flags():
    config = parse_config(["--bayes-klreweighting", "--bayes-datasetrescaling"])
    assert config.method.kl_schedule == "cyclic"
    assert config.method.kl_period == "dataset_rescaled"


def test_flag_for_parameter_the_method_lacks():
    with pytest.raises(Exception) as info:
        parse_config(["--method", "mle", "--bayes-beta", "0.3"])
    assert "method.beta" in str(info.value)


def test_version_in_process(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_version_subprocess():
    proc = subprocess.run(
        [sys.executable, "-m", "bayespeft.cli", "--version"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"bayespeft {__version__}"


def test_help_imports_no_torch():
    """Building every sub-command's parser (what ``--help`` does) imports neither torch nor transformers nor peft."""
    code = (
        "import sys; from bayespeft.cli import build_parser; build_parser(); "
        "print([m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    helped = subprocess.run(
        [sys.executable, "-m", "bayespeft.cli", "train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0 and "--output-dir" in helped.stdout and "blob" in helped.stdout


def test_non_finite_predictions_are_a_one_line_error():
    import torch

    from bayespeft.errors import NumericalError
    from bayespeft.evaluation import check_finite

    probs = torch.full((3, 2, 4), 0.25)
    check_finite(probs, "predicted probabilities")
    probs[1, 0, 2] = float("nan")
    with pytest.raises(NumericalError, match="1 of 3 examples are NaN or infinite") as info:
        check_finite(probs, "predicted probabilities")
    assert "\n" not in str(info.value)


def test_paused_overwrite_rerun_names_the_run_not_the_staging(capsys, tmp_path, tiny_llama_dir, shared_data):
    out = tmp_path / "run"
    flags = ["--model", str(tiny_llama_dir), "--method", "mle", "--data-dir", str(shared_data), "-q"]
    flags += ["--max-train-examples", "8", "--max-eval-examples", "4", "--max-seq-len", "96", "--batch-size", "2"]
    flags += ["--max-steps", "4", "--checkpoint-every", "1", "--n-samples", "1"]
    assert main(["train", "-o", str(out), *flags]) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main(["train", "-o", str(out), "--overwrite", *flags, "--stop-after-steps", "2"]) == 0
    assert f"bayespeft train -o {out} --resume" in capsys.readouterr().out
    assert snapshot(out) == before
    assert main(["train", "-o", str(out), "--resume", "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert snapshot(out) != before
