"""Sweeps: expansion and naming, validation before anything runs, and a real tiny sweep end to end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bayespeft.commands.sweep import add_sweep_parser, run_sweep
from bayespeft.errors import ConfigError, RunDirError
from bayespeft.experiments.sweep import (
    SweepSpec,
    execute_sweep,
    expand_sweep,
    load_sweep_spec,
    parse_grid_option,
    plot_sweep,
    point_summary,
    results_markdown,
)
from bayespeft.training import Trainer


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sweep_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["sweep", *argv])


def test_expansion_order_naming_and_configs(tmp_path):
    spec = SweepSpec(
        overrides=["train.max_steps=7"],
        grid={"method.beta": [0.1, 0.2], "method.gamma": [4, 8]},
        seeds=[1, 2],
        datasets=["arc_easy"],
        output_dir=tmp_path / "sweep",
    )
    points = expand_sweep(spec)
    assert len(points) == 8
    assert points[0].name == "beta=0.1__gamma=4__data=arc_easy__seed=1"
    assert points[1].name == "beta=0.1__gamma=4__data=arc_easy__seed=2"  # seeds vary fastest
    assert points[-1].name == "beta=0.2__gamma=8__data=arc_easy__seed=2"
    last = points[-1]
    assert (last.config.method.beta, last.config.method.gamma, last.config.train.seed) == (0.2, 8.0, 2)
    assert last.config.train.max_steps == 7
    assert last.label == "beta=0.2 gamma=8 data=arc_easy" and last.row == "beta=0.2, gamma=8"
    assert last.values == {"method.beta": 0.2, "method.gamma": 8, "data.dataset": "arc_easy", "train.seed": 2}
    assert not spec.output_dir.exists()


def test_names_are_sanitised_and_disambiguated(tmp_path):
    spec = SweepSpec(
        grid={
            "train.batch_size": [2],
            "eval.batch_size": [4],
            "model.lora.target_modules": [["q_proj", "v_proj"]],
        },
        datasets=["mmlu:college_physics"],
    )
    (point,) = expand_sweep(spec)
    assert (
        point.name == "train.batch_size=2__eval.batch_size=4__target_modules=q_proj+v_proj__data=mmlu-college_physics"
    )
    assert point.config.model.lora.target_modules == ["q_proj", "v_proj"]
    assert point.row == "train.batch_size=2, eval.batch_size=4, target_modules=q_proj+v_proj"


def test_seeds_only_sweep_labels_by_method():
    points = expand_sweep(SweepSpec(overrides=["method.name=mle"], seeds=[3, 4]))
    assert [p.name for p in points] == ["seed=3", "seed=4"]
    assert {p.label for p in points} == {"mle"}


def test_grid_over_group_files(tmp_path):
    configs = tmp_path / "configs"
    (configs / "method").mkdir(parents=True)
    (configs / "method" / "blob.yaml").write_text("name: blob\nbeta: 0.3\n")
    (configs / "method" / "mle.yaml").write_text("name: mle\n")
    (configs / "base.yaml").write_text("method: {name: blob, gamma: 4}\ntrain: {max_steps: 5}\n")
    spec = SweepSpec(base=configs / "base.yaml", grid={"method": ["blob", "mle"]})
    blob, mle = expand_sweep(spec)
    assert (blob.name, mle.name) == ("method=blob", "method=mle")
    assert (blob.config.method.beta, blob.config.method.gamma) == (0.3, 4.0)
    assert mle.config.method.name == "mle" and mle.config.train.max_steps == 5


def test_parse_grid_option():
    grid = parse_grid_option(["method.beta=0.1, 0.2", "method=blob,mle", "model.lora.target_modules=[[q], [q, v]]"])
    assert grid == {
        "method.beta": [0.1, 0.2],
        "method": ["blob", "mle"],
        "model.lora.target_modules": [["q"], ["q", "v"]],
    }
    with pytest.raises(ConfigError, match="expected KEY=V1,V2"):
        parse_grid_option(["method.beta"])
    with pytest.raises(ConfigError, match=r"contradictory sweep: --grid gives method\.beta twice"):
        parse_grid_option(["method.beta=0.1", "method.beta=0.2"])


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        (SweepSpec(), r"empty sweep: give a grid, seeds or datasets"),
        (SweepSpec(grid={"method.beta": []}), r"empty sweep grid: method\.beta has no values"),
        (SweepSpec(seeds=[]), r"empty sweep grid: train\.seed has no values"),
        (
            SweepSpec(grid={"method.beta": [0.1, 0.2]}, overrides=["method.beta=0.3"]),
            r"contradictory sweep: method\.beta is swept and also fixed by override 'method\.beta=0\.3'",
        ),
        (SweepSpec(grid={"train.seed": [1]}, seeds=[1, 2]), r"contradictory sweep: train\.seed .* seeds"),
        (SweepSpec(grid={"data.dataset": ["obqa"]}, datasets=["obqa"]), r"contradictory sweep: data\.dataset"),
        (SweepSpec(grid={"method.beta": [0.1, 0.1]}), r"grid method\.beta lists 0\.1 twice"),
        (
            SweepSpec(grid={"method.betta": [0.1]}),
            r"sweep point betta=0\.1 \(method\.betta=0\.1\): .*unknown key method\.betta",
        ),
        (
            SweepSpec(grid={"method.beta": [0.1, -1]}),
            r"sweep point beta=-1 \(method\.beta=-1\): method\.beta must be > 0",
        ),
        (SweepSpec(grid={"train.max_steps": ["many"]}), r"max_steps=many.*train\.max_steps must be of type int"),
        (SweepSpec(grid={"optim": ["adam"]}), r"sweep grid optim: unknown config group"),
        (SweepSpec(grid={"method": [1]}), r"sweep grid method selects method config files by name"),
        (SweepSpec(seeds=[1, "two"]), r"seeds must be integers, got 'two'"),
        (SweepSpec(seeds=[1], overrides=["train.stepz=3"]), r"unknown key train\.stepz"),
    ],
)
def test_invalid_sweeps_fail_before_writing(tmp_path, spec, pattern):
    spec.output_dir = tmp_path / "sweep"
    with pytest.raises(ConfigError, match=pattern):
        execute_sweep(spec, progress=False)
    assert not spec.output_dir.exists()


def test_missing_output_dir():
    with pytest.raises(ConfigError, match="no output directory"):
        execute_sweep(SweepSpec(seeds=[1]))


def test_spec_file_and_its_errors(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "base: {train: {max_steps: 3}}\noverrides: [method.gamma=4]\n"
        "grid: {method.beta: [0.1, 0.2]}\nseeds: [1]\noutput_dir: out\n"
    )
    spec = load_sweep_spec(path)
    assert spec.base == {"train": {"max_steps": 3}} and spec.output_dir == Path("out")
    assert [p.config.method.gamma for p in expand_sweep(spec)] == [4.0, 4.0]
    for text, pattern in [
        ("grids: {}\n", r"unknown sweep key 'grids'"),
        ("grid: {method.beta: 0.1}\n", r"grid method\.beta must be a list of values"),
        ("- 1\n", r"expected a mapping"),
        ("base: 3\n", r"base must be a config file path or a mapping"),
        ("overrides: method.beta=1\n", r"overrides must be a list"),
        ("grid: [1\n", r"sweep\.yaml:\d+: invalid YAML"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=pattern):
            load_sweep_spec(path)
    with pytest.raises(ConfigError, match="sweep spec not found"):
        load_sweep_spec(tmp_path / "nope.yaml")


def test_cli_dry_run_combines_spec_and_flags(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text("grid: {method.beta: [0.1, 0.2]}\noutput_dir: from-spec\n")
    out = tmp_path / "out"
    args = parse([str(path), "train.max_steps=3", "--grid", "method.gamma=4,8", "--seeds", "1", "-o", str(out)])
    args.dry_run = True
    assert run_sweep(args) == 0
    text = capsys.readouterr().out
    assert "4 points; nothing run" in text
    assert "start  " + str(out / "beta=0.2__gamma=8__seed=1") in text
    assert "train.max_steps=3" in text
    assert not out.exists()
    with pytest.raises(ConfigError, match="--seeds: expected comma-separated integers"):
        run_sweep(parse(["--seeds", "1,x", "-o", str(out)]))
    with pytest.raises(ConfigError, match="one spec file expected"):
        run_sweep(parse([str(path), "other.yaml", "--seeds", "1", "-o", str(out)]))


def fake_runs(spec: SweepSpec, with_kl: bool) -> list:
    """Write a train log and metrics.json for every point of ``spec`` (no training)."""
    points = expand_sweep(spec)
    for i, point in enumerate(points):
        run = spec.output_dir / point.name
        run.mkdir(parents=True)
        records = [
            {"step": s, "nll": 1.0 / s + i, **({"kl": 10.0 * s, "neg_elbo": 2.0 + s} if with_kl else {})}
            for s in range(1, 21)
        ]
        (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        metrics = {"acc": 0.5 + 0.1 * i, "ece": 0.1, "nll": 1.0, "brier": 0.5}
        payload = {
            "method": point.config.method.name,
            "dataset": "arc_easy",
            "seed": point.config.train.seed,
            "metrics": metrics,
        }
        (run / "metrics.json").write_text(json.dumps(payload))
    return points


def test_plots_and_tables_average_seeds(tmp_path):
    spec = SweepSpec(grid={"method.beta": [0.1, 0.2]}, seeds=[1, 2], output_dir=tmp_path / "sweep")
    points = fake_runs(spec, with_kl=True)
    paths = plot_sweep([(p, spec.output_dir / p.name) for p in points], tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["kl.png", "neg_elbo.png", "nll.png"]  # no weighted_kl logged
    finished = [(p, {"summary": point_summary(spec.output_dir / p.name)}) for p in points]
    assert finished[0][1]["summary"] == {
        "final_kl": 200.0,
        "final_weighted_kl": None,
        "neg_elbo": 21.5,
        "acc": 0.5,
        "ece": 0.1,
        "nll": 1.0,
    }  # -ELBO: the mean of the last 2 of 20 steps
    text = results_markdown(finished, spec.output_dir)
    assert "| beta=0.1__seed=2 | 200 | – | 21.5 | 60.00 | 10.00 | 1 |" in text
    assert "| beta=0.1 | 55.00 ± 5.00 |" in text and "| beta=0.2 | **75.00 ± 5.00** |" in text


def test_quantities_no_run_logs_are_skipped(tmp_path):
    spec = SweepSpec(overrides=["method.name=mle"], seeds=[1], output_dir=tmp_path / "sweep")
    points = fake_runs(spec, with_kl=False)
    paths = plot_sweep([(p, spec.output_dir / p.name) for p in points], tmp_path / "plots")
    assert [p.name for p in paths] == ["nll.png"]
    text = results_markdown(
        [(points[0], {"summary": point_summary(spec.output_dir / points[0].name)})], spec.output_dir
    )
    assert "arc_easy neg_elbo" not in text and "arc_easy kl" not in text and "| mle | 50.00 ± 0.00 |" in text


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, tiny_llama_dir, shared_data):
    """A 2-point sweep on the tiny model whose first point was interrupted after one step."""
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    spec = SweepSpec(
        overrides=[
            f"model.name={tiny_llama_dir}",
            "method.name=blob",
            "method.kl_period=epoch",
            f"data.data_dir={shared_data}",
            "data.max_train_examples=12",
            "data.max_eval_examples=4",
            "data.max_length=96",
            "train.max_steps=3",
            "train.batch_size=2",
            "train.lr=0.01",
            "eval.n_samples=2",
            "eval.batch_size=4",
        ],
        grid={"method.beta": [0.1, 0.2]},
        seeds=[1],
        output_dir=out,
    )
    first = expand_sweep(spec)[0]
    paused = Trainer(first.config, out / first.name, progress=False, stop_after_steps=1).run_training()
    assert paused == {"status": "paused", "step": 1}
    manifest = execute_sweep(spec, progress=False)
    return spec, manifest


def test_tiny_sweep_runs_every_point(tiny_sweep):
    spec, manifest = tiny_sweep
    out = spec.output_dir
    assert [(p["name"], p["action"], p["status"]) for p in manifest["points"]] == [
        ("beta=0.1__seed=1", "resume", "finished"),
        ("beta=0.2__seed=1", "start", "finished"),
    ]
    for point in manifest["points"]:
        run = out / point["name"]
        assert (run / "metrics.json").is_file() and (run / "config.yaml").is_file()
        steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3]  # the resumed point continued from its checkpoint
        assert set(point["summary"]) == {"final_kl", "final_weighted_kl", "neg_elbo", "acc", "ece", "nll"}
        assert point["summary"]["final_kl"] > 0
    assert json.loads((out / "sweep.json").read_text())["points"] == manifest["points"]
    for key in ("nll", "kl", "weighted_kl", "neg_elbo"):
        assert (out / "plots" / f"{key}.png").stat().st_size > 0


def test_tiny_sweep_results_table(tiny_sweep):
    spec, _ = tiny_sweep
    text = (spec.output_dir / "results.md").read_text()
    assert sum(line.startswith("| beta=0.") and "__seed=1 |" in line for line in text.splitlines()) == 2
    assert sum(line.startswith(("| beta=0.1 |", "| beta=0.2 |")) for line in text.splitlines()) == 2
    assert "| Point | KL | Weighted KL | −ELBO | ACC (%) | ECE (%) | NLL |" in text
    assert "kl" in text and "neg_elbo" in text


def test_rerun_skips_finished_points(tiny_sweep, capsys):
    spec, _ = tiny_sweep
    files = sorted(spec.output_dir.glob("*/metrics.json"))
    before = [f.stat().st_mtime_ns for f in files]
    manifest = execute_sweep(spec, progress=False)
    assert [p["action"] for p in manifest["points"]] == ["skip", "skip"]
    assert [p["status"] for p in manifest["points"]] == ["finished", "finished"]
    assert [f.stat().st_mtime_ns for f in files] == before
    assert "[2/2] beta=0.2__seed=1: skip" in capsys.readouterr().out


def test_changed_config_is_refused_before_running(tiny_sweep):
    spec, _ = tiny_sweep
    changed = SweepSpec(**{**vars(spec), "overrides": [*spec.overrides, "train.lr=0.02"]})
    manifest = (spec.output_dir / "sweep.json").read_text()
    with pytest.raises(RunDirError, match=r"beta=0\.1__seed=1: holds a run of another config \(train\.lr: 0\.01"):
        execute_sweep(changed, progress=False)
    assert (spec.output_dir / "sweep.json").read_text() == manifest
