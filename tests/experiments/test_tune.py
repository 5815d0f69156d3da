"""Tune: Pareto front on a hand example, space/objective parsing and errors, a tiny study end to end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bayespeft.commands.tune import add_tune_parser, run_tune
from bayespeft.errors import ConfigError
from bayespeft.experiments.tune import (
    TuneSpec,
    carve_validation,
    execute_tune,
    pareto_front,
    parse_objectives,
    parse_space,
)

OBJECTIVES = [("acc", "max"), ("ece", "min"), ("nll", "min")]


def test_pareto_front_hand_example():
    points = [
        {"acc": 0.80, "ece": 0.05, "nll": 0.50},  # 0 front
        {"acc": 0.70, "ece": 0.10, "nll": 0.60},  # 1 dominated by 0
        {"acc": 0.90, "ece": 0.20, "nll": 0.40},  # 2 front (best acc, nll)
        {"acc": 0.80, "ece": 0.05, "nll": 0.50},  # 3 duplicate of 0: kept
        {"acc": 0.80, "ece": 0.05, "nll": 0.55},  # 4 tie on acc/ece, worse nll: dominated by 0
        {"acc": 0.60, "ece": 0.01, "nll": 0.90},  # 5 front (best ece)
        {"acc": 0.95, "ece": None, "nll": 0.10},  # 6 missing value: never on the front
        {"acc": 0.50, "ece": 0.30, "nll": float("nan")},  # 7 NaN: never
    ]
    assert pareto_front(points, OBJECTIVES) == [0, 2, 3, 5]
    assert pareto_front(points, [("acc", "maximize"), ("ece", "minimize")]) == [0, 2, 3, 4, 5]  # 4 ties 0 in 2-D
    assert pareto_front(points, [("acc", "max")]) == [6]  # only the objectives named count
    assert pareto_front(points, [("ece", "min")]) == [5]
    assert pareto_front([], OBJECTIVES) == []
    with pytest.raises(ValueError, match="direction"):
        pareto_front(points, [("acc", "up")])


def test_space_and_objective_parsing():
    space = parse_space(
        [
            "method.beta=log:0.05:0.5",
            "train.lr=float:1e-4:1e-2",
            "model.lora.r=int:4:16",
            "method.kl_schedule=cat:cyclic,uniform",
        ]
    )
    assert space["method.beta"].to_dict() == {"kind": "log", "low": 0.05, "high": 0.5}
    assert space["model.lora.r"].to_dict() == {"kind": "int", "low": 4, "high": 16}
    assert space["method.kl_schedule"].choices == ("cyclic", "uniform")
    assert parse_space({"method.beta": "log:0.05:0.5"})["method.beta"].text == "log:0.05:0.5"
    assert parse_objectives("acc:max, ece:min,nll:minimize") == [
        ("acc", "maximize"),
        ("ece", "minimize"),
        ("nll", "minimize"),
    ]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["method.beta"], "expected KEY=SPEC"),
        (["method.beta=normal:0:1"], "expected log:LO:HI"),
        (["method.beta=log:0:1"], "lower bound > 0"),
        (["method.beta=float:1:0.5"], "lower bound must be below"),
        (["model.lora.r=int:4:8.5"], "must be integers"),
        (["method.beta=log:a:b"], "must be numbers"),
        (["method.kl_schedule=cat:"], "at least one value"),
        (["method.beta=log:0.1:1", "method.beta=log:0.1:2"], "twice"),
        (["data.eval_split=cat:validation,test"], "splits are fixed"),
        (["beta=log:0.1:1"], "dotted config key"),
    ],
)
def test_bad_space(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(items)


@pytest.mark.parametrize(("text", "message"), [("acc", "METRIC:max"), ("acc:up", "METRIC:max"), ("", "no objectives")])
def test_bad_objectives(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_objectives(text)


def test_carve_is_deterministic_and_disjoint():
    items = list(range(20))
    train, held = carve_validation(items, 0.2, seed=3)
    assert (train, held) == carve_validation(items, 0.2, seed=3)
    assert len(held) == 4 and sorted(train + held) == items and not set(train) & set(held)
    assert carve_validation(items, 0.2, seed=4)[1] != held
    with pytest.raises(ConfigError, match="fraction"):
        carve_validation(items, 1.0, seed=0)


def tiny_spec(model_dir: Path, data_dir: Path, out: Path, **changes) -> TuneSpec:
    spec = TuneSpec(
        overrides=[
            f"model.name={model_dir}",
            "method.name=blob",
            "method.kl_period=epoch",
            "data.dataset=arc_easy",
            f"data.data_dir={data_dir}",
            "data.max_train_examples=16",
            "data.max_length=96",
            "train.max_steps=2",
            "train.batch_size=2",
            "train.checkpoint_every=2",
            "eval.n_samples=2",
            "eval.batch_size=4",
        ],
        space=parse_space(["method.beta=log:0.05:0.5", "train.lr=log:1e-4:1e-2"]),
        objectives=parse_objectives("acc:max,ece:min,nll:min"),
        trials=3,
        output_dir=out,
        validation_fraction=0.25,
    )
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def test_input_errors_before_running(tmp_path, tiny_llama_dir, shared_data):
    out = tmp_path / "tune"
    with pytest.raises(ConfigError, match="objective f1: runs on arc_easy do not report"):
        execute_tune(tiny_spec(tiny_llama_dir, shared_data, out, objectives=parse_objectives("acc:max,f1:max")))
    spec = tiny_spec(tiny_llama_dir, shared_data, out)
    spec.overrides.append("data.eval_split=test")
    with pytest.raises(ConfigError, match=r"data\.eval_split=test: tune never reads the test split"):
        execute_tune(spec)
    spec = tiny_spec(tiny_llama_dir, shared_data, out, space=parse_space(["model.lora.r=int:0:4"]))
    with pytest.raises(ConfigError, match=r"model\.lora\.r"):
        execute_tune(spec)
    spec = tiny_spec(tiny_llama_dir, shared_data, out)
    spec.overrides.append("method.beta=0.1")
    with pytest.raises(ConfigError, match="searched and also fixed"):
        execute_tune(spec)
    assert not out.exists()


def test_tiny_tune_end_to_end_and_shared_study(tmp_path, tiny_llama_dir, shared_data):
    out = tmp_path / "tune"
    summary = execute_tune(tiny_spec(tiny_llama_dir, shared_data, out), progress=False)
    assert summary["this_run"] == [0, 1, 2]
    assert summary["storage"] == f"sqlite:///{out.resolve() / 'study.db'}"
    assert (out / "study.db").is_file()
    for n in range(3):
        run = out / "trials" / f"trial-{n}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["split"] == "train" and metrics["metrics"]["num_examples"] == 4  # 25% of 16 held out
    carve = json.loads((out / "validation.json").read_text())
    assert (carve["num_train"], carve["num_heldout"]) == (12, 4)
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3
    assert set(trials[0]["params"]) == {"method.beta", "train.lr"}
    front = [t["trial"] for t in trials if t["pareto"]]
    assert front == pareto_front([t["values"] for t in trials], OBJECTIVES) and front
    table = (out / "pareto.md").read_text()
    assert "| Trial | method.beta | train.lr | acc | ece | nll |" in table
    for name in ("pareto_acc_ece.png", "pareto_acc_nll.png", "pareto_3d.png"):
        assert (out / "plots" / name).stat().st_size > 0

    other = tiny_spec(tiny_llama_dir, shared_data, out, space=parse_space(["method.beta=log:0.01:0.5"]))
    with pytest.raises(ConfigError, match=r"search space: method.beta is log:0.05:0.5 in the study, log:0.01:0.5 here"):
        execute_tune(other)
    other = tiny_spec(tiny_llama_dir, shared_data, out, objectives=parse_objectives("acc:max,ece:min"))
    with pytest.raises(ConfigError, match="objectives: acc:maximize,ece:minimize,nll:minimize in the study"):
        execute_tune(other)

    # a second worker (CLI, other sampler seed) with the same space adds trials to the same study
    parser = argparse.ArgumentParser()
    add_tune_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "tune",
            *tiny_spec(tiny_llama_dir, shared_data, out).overrides,
            "--space",
            "method.beta=log:0.05:0.5",
            "--space",
            "train.lr=log:1e-4:1e-2",
            "--objectives",
            "acc:max,ece:min,nll:min",
            "--trials",
            "1",
            "--validation-fraction",
            "0.25",
            "--seed",
            "1",
            "--sampler",
            "random",
            "-o",
            str(out),
            "-q",
        ]
    )
    assert run_tune(args) == 0
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert [t["trial"] for t in trials] == [0, 1, 2, 3]
    assert (out / "trials" / "trial-3" / "metrics.json").is_file()
