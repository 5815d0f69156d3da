"""`bayespeft compare`: validation before anything is written, and a real tiny comparison end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bayespeft.cli import main
from bayespeft.config import load_config
from bayespeft.data.classification import list_classification_datasets
from bayespeft.experiments.compare import CompareSpec, dataset_shorthands, execute_compare
from bayespeft.training import Trainer


def test_shorthands_come_from_the_registries():
    shorthands = dataset_shorthands()
    assert {"arc_easy", "arc_challenge", "obqa", "boolq"} <= set(shorthands["mc"])
    assert not any(name.startswith("mmlu") for name in shorthands["mc"])  # evaluation-only, no training split
    assert shorthands["glue"] == list_classification_datasets()


@pytest.fixture(scope="module")
def base_config(tmp_path_factory, tiny_llama_dir, shared_data) -> Path:
    """A base config for tiny runs, with a blob group file beside it (the other methods have none)."""
    folder = tmp_path_factory.mktemp("configs")
    base = {
        "model": {"name": str(tiny_llama_dir)},
        "data": {
            "data_dir": str(shared_data),
            "max_train_examples": 12,
            "max_eval_examples": 4,
            "max_length": 96,
            "eval_split": "test",  # temperature is fitted on held-out training examples
        },
        "train": {"max_steps": 3, "batch_size": 2, "lr": 0.01},
        "eval": {"n_samples": 2, "batch_size": 4},
    }
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    (folder / "method").mkdir()
    (folder / "method" / "blob.yaml").write_text("name: blob\nkl_period: epoch\n")
    return folder / "base.yaml"


def cli(base: Path, out: Path, *args: str) -> int:
    return main(["compare", "-c", str(base), "-o", str(out), "--quiet", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "blob,blobb", "--datasets", "arc_easy"], "--methods: unknown method 'blobb'"),
        (["--methods", "blob,blob", "--datasets", "arc_easy"], "--methods lists blob twice"),
        (["--methods", "blob", "--datasets", "arc_easy", "--seeds", "1,two"], "--seeds: expected comma-separated"),
        (["--methods", "blob", "--datasets", "arc_easy,arc_esy"], "--datasets arc_esy: unknown multiple-choice"),
        (["--methods", "blob", "--datasets", "rte"], "--datasets rte: data.dataset: rte is a sentence-classification"),
        (
            ["--methods", "blob", "--datasets", "arc_easy,mc"],
            "--datasets (with mc, glue expanded) lists arc_easy twice",
        ),
        (["--methods", "blob", "--datasets", "arc_easy", "--metrics", "acc,f1"], "--metrics: runs on arc_easy do not"),
        (["--methods", "mle", "--datasets", "arc_easy", "train.seed=4"], "compare sets train.seed from --seeds"),
        (["--methods", "mle", "--datasets", "arc_easy", "method.beta=0.1"], "none of the compared methods (mle)"),
        (["--methods", "blob,mle", "--datasets", "arc_easy", "method.beta=-1"], "method.beta must be > 0"),
        (
            ["--methods", "temperature", "--datasets", "arc_easy", "--temperature-split", "test"],
            "--temperature-split test (arc_easy): that is data.eval_split",
        ),
        (
            ["--methods", "temperature", "--datasets", "arc_easy", "data.max_train_examples=null"],
            "none of it is held out",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(base_config, tmp_path, capsys, args, message):
    out = tmp_path / "compare"
    assert cli(base_config, out, *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_shorthand_leaves_out_datasets_without_the_splits(base_config, tmp_path, capsys):
    out = tmp_path / "compare"
    assert cli(base_config, out, "--methods", "mle", "--datasets", "mc", "--seeds", "1", "--dry-run") == 0
    text = capsys.readouterr().out
    assert "leaving out piqa (piqa has no 'train' split" in text  # offline PIQA is a validation sample
    assert "leaving out winogrande_s (winogrande_s has no 'test' split" in text  # data.eval_split is test
    assert "start  " + str(out / "runs" / "method=mle__data=arc_easy__seed=1") in text
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory, base_config):
    """blob, tfb and temperature on two datasets and two seeds; the first MLE source run was interrupted."""
    out = tmp_path_factory.mktemp("compare") / "compare"
    spec = CompareSpec(
        methods=["blob", "tfb", "temperature"],
        datasets=["arc_easy", "obqa"],
        seeds=[1, 2],
        output_dir=out,
        base=base_config,
        overrides=["method.sigma=0.01"],  # tfb's noise scale, fixed (no search); blob has no sigma
    )
    interrupted = out / "runs" / "method=mle__data=arc_easy__seed=1"
    config = load_config(base_config, ["method.name=mle", "data.dataset=arc_easy", "train.seed=1"])
    assert Trainer(config, interrupted, progress=False, stop_after_steps=1).run_training()["status"] == "paused"
    return spec, execute_compare(spec, progress=False)


def test_every_run_finishes_mle_first(tiny_compare):
    spec, manifest = tiny_compare
    points = manifest["points"]
    assert [p["values"]["method"] for p in points] == ["mle"] * 4 + ["blob"] * 4 + ["tfb"] * 4 + ["temperature"] * 4
    assert [p["name"] for p in points[:2]] == ["method=mle__data=arc_easy__seed=1", "method=mle__data=arc_easy__seed=2"]
    assert [p["action"] for p in points] == ["resume"] + ["start"] * 15
    assert all(p["status"] == "finished" for p in points)
    assert [p["reported"] for p in points] == [False] * 4 + [True] * 12  # mle is only the source
    assert manifest["datasets"] == ["arc_easy", "obqa"]
    assert json.loads((spec.output_dir / "compare.json").read_text())["points"] == points


def test_posthoc_runs_start_from_the_mle_run_of_their_dataset_and_seed(tiny_compare):
    spec, _ = tiny_compare
    runs = spec.output_dir / "runs"
    tfb = yaml.safe_load((runs / "method=tfb__data=obqa__seed=2" / "config.yaml").read_text())
    assert tfb["method"]["source_adapter"] == str(runs / "method=mle__data=obqa__seed=2" / "adapter")
    assert (tfb["method"]["sigma"], tfb["train"]["max_steps"], tfb["train"]["seed"]) == (0.01, 0, 2)
    blob = yaml.safe_load((runs / "method=blob__data=obqa__seed=1" / "config.yaml").read_text())
    assert blob["method"]["kl_period"] == "epoch" and "sigma" not in blob["method"]  # the group file
    temperature = runs / "method=temperature__data=arc_easy__seed=1"
    fitted = json.loads((temperature / "temperature.json").read_text())
    assert (fitted["fit_split"], fitted["fit_offset"], fitted["num_examples"]) == ("train", 12, 4)
    assert fitted["source_run"] == str(runs / "method=mle__data=arc_easy__seed=1")
    metrics = json.loads((temperature / "metrics.json").read_text())
    assert metrics["method"] == "temperature" and metrics["split"] == "test"
    assert metrics["metrics"]["temperature"] == pytest.approx(fitted["temperature"])
    assert (temperature / "plots" / "reliability.png").is_file()


def test_report_tables_and_figures(tiny_compare):
    spec, manifest = tiny_compare
    report = spec.output_dir / "report"
    assert manifest["report"]["markdown"] == str(report / "results.md")
    markdown = (report / "results.md").read_text()
    rows = [line.split("|")[1].strip() for line in markdown.splitlines()[2:]]
    assert rows == ["blob", "temperature", "tfb"]  # mle trained as the source only
    assert "arc_easy ACC (%) ↑" in markdown and "obqa NLL ↓" in markdown and "Brier" not in markdown
    assert r"\multicolumn{3}{c}{obqa}" in (report / "results.tex").read_text()
    groups = json.loads((report / "results.json").read_text())["groups"]
    assert len(groups) == 6 and {g["n_seeds"] for g in groups} == {2}
    assert (report / "reliability_grid.png").stat().st_size > 0
    assert (report / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert (report / "metrics.pdf").read_bytes()[:4] == b"%PDF"


def test_rerun_skips_finished_runs(tiny_compare, capsys):
    spec, _ = tiny_compare
    files = sorted((spec.output_dir / "runs").glob("*/metrics.json"))
    before = [f.stat().st_mtime_ns for f in files]
    args = ["--methods", "blob,tfb,temperature", "--datasets", "arc_easy,obqa", "--seeds", "1,2", "method.sigma=0.01"]
    assert cli(spec.base, spec.output_dir, *args) == 0
    text = capsys.readouterr().out
    assert text.count(": skip") == 16 and "16/16 runs finished" in text and "| temperature |" in text
    assert [f.stat().st_mtime_ns for f in files] == before


def test_changed_config_is_refused_before_running(tiny_compare, capsys):
    spec, _ = tiny_compare
    manifest = (spec.output_dir / "compare.json").read_text()
    args = ["--methods", "blob", "--datasets", "arc_easy", "--seeds", "1", "train.lr=0.02"]
    assert cli(spec.base, spec.output_dir, *args) == 2
    assert "holds a run of another config (train.lr: 0.01" in capsys.readouterr().err
    assert (spec.output_dir / "compare.json").read_text() == manifest
