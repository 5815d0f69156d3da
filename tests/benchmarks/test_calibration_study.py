"""benchmarks/calibration_study.py: the paired comparisons behind the report's target lines."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "calibration_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("calibration_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def predictions(confidence: float, labels: list[int], correct: list[bool]) -> dict:
    """Two-class predictions that put ``confidence`` on the predicted class."""
    probs = []
    for label, right in zip(labels, correct, strict=True):
        predicted = label if right else 1 - label
        row = [1 - confidence, 1 - confidence]
        row[predicted] = confidence
        probs.append(row)
    return {"ids": list(range(len(labels))), "labels": labels, "probs": probs}


def small_spec(datasets: list[str]) -> dict:
    """A two-seed grid of MLE, BLoB and MAP whose budget runs MAP on the first seed only."""
    return {
        "methods": ["mle", "blob", "map"],
        "backbones": {
            "b": {
                "train_examples": 8,
                "epochs": 2,
                "eval_every_epochs": 1,
                "seeds": [1, 2],
                "seeds_for": {"mle": [1, 2], "blob": [1, 2]},
                "overrides": ["train.batch_size=4"],
                "datasets": {d: [] for d in datasets},
            }
        },
    }


@pytest.fixture
def store(study):
    """300 examples, 60 % answered right by every method: 'calibrated' says 0.6, the others 0.95."""
    rng = random.Random(0)
    labels = [rng.randrange(2) for _ in range(300)]
    correct = [i % 5 < 3 for i in range(300)]
    return {
        study.run_key("b", "d", "laplace", 1): predictions(0.6, labels, correct),
        study.run_key("b", "d", "temperature", 1): predictions(0.95, labels, correct),
        study.run_key("b", "d", "mle", 1): predictions(0.95, labels, correct),
    }


def test_the_paired_interval_against_temperature_has_the_right_sign(study, store):
    better = study.paired_bootstrap(store, "b", "d", "laplace", [1], 200, reference="temperature")
    point, low, high = better["ece"]
    assert point == pytest.approx(0.0 - 0.35, abs=1e-6)  # ECE 0 against 0.35
    assert low <= point <= high < 0
    worse = study.paired_bootstrap(store, "b", "d", "temperature", [1], 200, reference="laplace")
    assert worse["ece"][0] == pytest.approx(0.35, abs=1e-6) and worse["ece"][1] > 0
    assert study.paired_bootstrap(store, "b", "d", "laplace", [1], 200)["ece"] == better["ece"]  # MLE by default


def test_the_target_line_names_the_best_bayesian_method_with_its_interval(study, store):
    groups = {
        ("b", "d", method): [{"seed": 1, "acc": 0.6, "ece": ece, "nll": nll}]
        for method, ece, nll in (("mle", 0.35, 1.2), ("laplace", 0.0, 0.67), ("temperature", 0.35, 1.2))
    }
    lines = study.targets("b", ["d"], groups, ["mle", "laplace", "temperature"], store, 100)
    assert "best Bayesian laplace ECE 0.000 vs temperature 0.350 (ΔECE **-0.350** [" in lines[1]
    assert lines[-1].endswith("the best Bayesian method beats temperature on 1")


def test_probe_targets_judge_each_setting_against_the_right_mle(study):
    """A probe with its own MLE (same overrides) is judged against it, another against the grid's MLE."""
    grid_mle = {"backbone": "b", "dataset": "d", "method": "mle", "seed": 1, "acc": 0.60, "ece": 0.40, "nll": 2.0}
    grid_blob = {**grid_mle, "method": "blob", "acc": 0.62, "ece": 0.30, "nll": 1.0}
    groups = {("b", "d", "mle"): [grid_mle], ("b", "d", "blob"): [grid_blob]}
    strong = {**grid_blob, "ece": 0.10, "nll": 1.5, "acc": 0.595, "extra": "method.kl_lr=0.05"}
    strong["train_nll_last_epoch"] = 0.387
    own_mle = {**grid_mle, "ece": 0.15, "nll": 1.6, "extra": "targets=[q]"}
    narrow = {**grid_blob, "ece": 0.10, "nll": 1.5, "extra": "targets=[q]"}
    lines = study.probe_targets([strong, own_mle, narrow], groups)
    rows = [line for line in lines if line.startswith("| b |")]
    assert rows[0].startswith("| b | package defaults (grid) | d | 1 | 0.620 | 0.300 | 1.000 | x0.75 | x0.50 |")
    assert rows[1].endswith(
        "| `method.kl_lr=0.05` | d | 1 | 0.595 | 0.100 | 1.500 | x0.25 | x0.75 | -0.005 | met | 0.387 |"
    )
    assert rows[2].endswith("| x0.67 | x0.94 | +0.020 | not met | nan |")  # against its own MLE, not the grid's
    assert "- b, `method.kl_lr=0.05`: met on 1 of 1 (d)" in lines
    assert "- b, package defaults (grid): met on 0 of 1 (none)" in lines


def test_a_probe_of_another_method_is_judged_as_a_control_under_its_name(study):
    """A MAP probe is a row of its own, named by its method, against the grid's MLE; a BLoB probe with the
    same overrides stays a separate setting; the probe's own MLE is a reference, never a row."""
    grid_mle = {"backbone": "b", "dataset": "d", "method": "mle", "seed": 1, "acc": 0.60, "ece": 0.40, "nll": 2.0}
    groups = {("b", "d", "mle"): [grid_mle]}
    control = {**grid_mle, "method": "map", "acc": 0.58, "ece": 0.10, "nll": 1.0, "extra": "method.weight_decay=20"}
    blob = {**control, "method": "blob", "acc": 0.61}
    lines = study.probe_targets([control, blob], groups)
    rows = [line for line in lines if line.startswith("| b |")]
    assert len(rows) == 2
    assert any(row.startswith("| b | map `method.weight_decay=20` | d | 1 | 0.580 |") for row in rows)
    assert any(row.startswith("| b | `method.weight_decay=20` | d | 1 | 0.610 |") for row in rows)
    assert "- b, map `method.weight_decay=20`: met on 0 of 1 (none)" in lines  # 2 points below MLE
    assert "- b, `method.weight_decay=20`: met on 1 of 1 (d)" in lines
    own = {**grid_mle, "extra": "method.weight_decay=20", "acc": 0.50}
    lines = study.probe_targets([control, own], groups)
    rows = [line for line in lines if line.startswith("| b |")]
    assert len(rows) == 1 and rows[0].endswith("| x0.25 | x0.50 | +0.080 | met | nan |")  # against its own MLE


WRITER = """
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("calibration_study", {script!r})
study = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = study
spec.loader.exec_module(study)
path, name = Path(sys.argv[1]), sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()
for seed in range(40):
    record = {{"backbone": name, "dataset": "d", "method": "mle", "seed": seed}}
    def add(results, store, record=record):
        results["runs"].append(record)
        store[study.run_key(name, "d", "mle", seed)] = {{"ids": [seed]}}
        return True
    study.update_results(path, add)
"""


def test_two_processes_recording_into_one_results_file_lose_nothing(study, tmp_path):
    """Each process reads, appends and rewrites 40 times at once; the lock keeps every record of both."""
    results = tmp_path / "study.json"
    source = WRITER.format(script=str(SCRIPT))
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", source, str(results), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    for writer in writers:  # both imported: start them together
        assert writer.stdout.readline().strip() == "ready"
    for writer in writers:
        writer.stdin.write("go\n")
        writer.stdin.flush()
    for writer in writers:
        writer.communicate(timeout=120)
        assert writer.returncode == 0
    runs = study.load_results(results)["runs"]
    assert sorted((r["backbone"], r["seed"]) for r in runs) == sorted(
        (name, seed) for name in ("first", "second") for seed in range(40)
    )
    assert len(study.load_predictions_store(study.predictions_path(results))) == 80
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.json", "study_predictions.json.gz"]


def finished_blob_run(study, unit, work: Path, train: dict | None = None) -> Path:
    """A run folder of ``unit``'s BLoB run as a finished run leaves it (``train``: metrics.json's train block)."""
    run_dir = study.unit_dir(unit, work) / "runs" / "method=blob__data=d__seed=1"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("{}\n")
    (run_dir / "predictions.jsonl").write_text('{"id": 0, "label": 1, "probs": [0.25, 0.75]}\n')
    metrics = {"acc": 1.0, "ece": 0.25, "nll": 0.29, "brier": 0.125, "num_examples": 1}
    payload = {"metrics": metrics, "split": "test", "n_samples": 10, **({"train": train} if train else {})}
    (run_dir / "metrics.json").write_text(json.dumps(payload))
    return run_dir


def test_extra_overrides_reach_the_command_and_name_the_record(study, tmp_path):
    """`run --extra` appends its overrides after the spec's and records them as the run's `extra`."""
    unit = study.Unit("b", "d", 1, ("blob",), ("train.batch_size=4",), 2, 8, 4, extra=("method.kl_lr=0.05",))
    assert study.compare_command(unit, tmp_path)[-2:] == ["train.batch_size=4", "method.kl_lr=0.05"]
    run_dir = finished_blob_run(study, unit, tmp_path)
    record, _ = study.run_record(unit, "blob", run_dir, tmp_path, "cpu")
    assert record["extra"] == "method.kl_lr=0.05"
    assert record["command"].endswith("train.batch_size=4 method.kl_lr=0.05")
    plain, _ = study.run_record(study.dataclasses.replace(unit, extra=()), "blob", run_dir, tmp_path, "cpu")
    assert "extra" not in plain


def test_a_resumed_run_says_where_its_wall_time_starts(study, tmp_path):
    """wall_s spans the last process only, so a run resumed from a checkpoint records the step it resumed at."""
    unit = study.Unit("b", "d", 1, ("blob",), ("train.batch_size=4",), 2, 8, 4)
    straight = finished_blob_run(study, unit, tmp_path, {"steps": 4, "resumed_from_step": 0})
    assert "resumed_at_step" not in study.run_record(unit, "blob", straight, tmp_path, "cpu")[0]
    resumed = finished_blob_run(study, unit, tmp_path, {"steps": 4, "resumed_from_step": 2})
    assert study.run_record(unit, "blob", resumed, tmp_path, "cpu")[0]["resumed_at_step"] == 2


def probe_run(method: str, extra: str | None) -> dict:
    record = {"backbone": "b", "dataset": "d", "method": method, "seed": 1, "ece": 0.1, "run": "r"}
    return record | ({"extra": extra} if extra else {})


def test_add_probes_appends_each_run_once_under_its_name(study, tmp_path):
    source, probes = tmp_path / "probe.json", tmp_path / "probes.json"
    study.write_json_atomic(source, {"runs": [probe_run("mle", "x=1"), probe_run("blob", "x=1")]})
    study.write_json_atomic(probes, {"about": "kept", "probes": [probe_run("blob", "x=2") | {"probe": "x=2"}]})
    study.add_probes(source, probes, None)
    study.add_probes(source, probes, None)  # again: nothing new
    study.add_probes(source, probes, "named")
    written = study.json.loads(probes.read_text())
    assert written["about"] == "kept"
    assert [(p["method"], p["extra"], p["probe"]) for p in written["probes"]] == [
        ("blob", "x=2", "x=2"),
        ("mle", "x=1", "x=1"),
        ("blob", "x=1", "x=1"),
        ("mle", "x=1", "named"),
        ("blob", "x=1", "named"),
    ]
    assert all("run" not in p for p in written["probes"][1:])


def test_add_probes_refuses_a_grid_run_and_leaves_the_probes_file_alone(tmp_path):
    source, probes = tmp_path / "grid.json", tmp_path / "probes.json"
    source.write_text('{"runs": [{"backbone": "b", "dataset": "d", "method": "blob", "seed": 1}]}')
    probes.write_text('{"probes": []}')
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "add-probes", str(source), "--to", str(probes)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {source}: run b/d/blob/1 has no `extra` overrides, so it is not a probe"
    assert probes.read_text() == '{"probes": []}'


def test_probe_verdicts_count_datasets_judged_on_the_seed_means(study):
    """Two seeds of one dataset make one verdict, on their means: a met seed and a missed one can fail together."""
    run = {"backbone": "b", "dataset": "d", "method": "mle", "acc": 0.5, "ece": 0.4, "nll": 1.0}
    mle = [run | {"seed": seed} for seed in (1, 2)]
    groups = {("b", "d", "mle"): mle}
    probe = {"backbone": "b", "dataset": "d", "method": "blob", "extra": "k=1", "ece": 0.1, "nll": 0.8}
    lines = study.probe_targets([probe | {"seed": 1, "acc": 0.5}, probe | {"seed": 2, "acc": 0.47}], groups)
    assert [line.split(" | ")[10] for line in lines if line.startswith("| b |")] == ["met", "not met"]
    assert "- b, `k=1`: met on 0 of 1 (none)" in lines  # mean ACC 0.485: 1.5 points below MLE
    lines = study.probe_targets([probe | {"seed": 1, "acc": 0.5}, probe | {"seed": 2, "acc": 0.495}], groups)
    assert "- b, `k=1`: met on 1 of 1 (d, mean of 2 seeds)" in lines


def test_add_probes_keeps_each_probes_predictions_under_its_name(study, tmp_path):
    source, probes = tmp_path / "probe.json", tmp_path / "probes.json"
    study.write_json_atomic(source, {"runs": [probe_run("blob", "x=1")]})
    ran = predictions(0.9, [0, 1, 1], [True, True, False])
    study.save_predictions_store(study.predictions_path(source), {"b/d/blob/1": ran})
    study.add_probes(source, probes, None)
    study.add_probes(source, probes, "named")
    stored = study.load_predictions_store(tmp_path / "probes_predictions.json.gz")
    assert stored == {"b/d/blob/1@x=1": ran, "b/d/blob/1@named": ran}


def test_probe_rows_give_delta_acc_a_paired_interval_where_predictions_are_stored(study):
    """Same 300 questions: the probe answers 60 % right, the grid's MLE 50 %; a seed without stored
    predictions keeps the plain difference, and the verdict's interval needs every seed's."""
    labels = [i % 2 for i in range(300)]
    mle_run = {"backbone": "b", "dataset": "d", "method": "mle", "acc": 0.5, "ece": 0.4, "nll": 1.0}
    groups = {("b", "d", "mle"): [mle_run | {"seed": seed} for seed in (1, 2)]}
    probe = {"backbone": "b", "dataset": "d", "method": "blob", "extra": "k=1", "probe": "p", "acc": 0.6}
    probe |= {"ece": 0.1, "nll": 0.8}
    store = {study.run_key("b", "d", "mle", s): predictions(0.9, labels, [i % 2 == 0 for i in range(300)])
             for s in (1, 2)}  # fmt: skip
    probe_store = {"b/d/blob/1@p": predictions(0.6, labels, [i % 5 < 3 for i in range(300)])}
    lines = study.probe_targets([probe | {"seed": 1}, probe | {"seed": 2}], groups, store, probe_store, 200)
    cells = [line.split(" | ")[9] for line in lines if line.startswith("| b | `k=1`")]
    point, interval = cells[0].split(" [")
    low, high = (float(x) for x in interval.rstrip("]").split(", "))
    assert point == "**+0.100**" and 0 < low < 0.1 < high
    assert cells[1] == "+0.100"
    assert "- b, `k=1`: met on 1 of 1 (d, mean of 2 seeds)" in lines
    probe_store["b/d/blob/2@p"] = probe_store["b/d/blob/1@p"]
    lines = study.probe_targets([probe | {"seed": 1}, probe | {"seed": 2}], groups, store, probe_store, 200)
    assert lines[-1].startswith("- b, `k=1`: met on 1 of 1 (d, mean of 2 seeds); ΔACC over the seeds: d **+0.100** [")


def test_paired_compares_any_two_stored_runs_and_refuses_an_unknown_key(study, tmp_path):
    """A probe and a grid run from two results files; 60 % against 50 % right on the same 300 questions."""
    labels = [i % 2 for i in range(300)]
    grid, probes = tmp_path / "grid.json", tmp_path / "probes.json"
    study.save_predictions_store(
        study.predictions_path(grid), {"b/d/mle/1": predictions(0.9, labels, [i % 2 == 0 for i in range(300)])}
    )
    study.save_predictions_store(
        study.predictions_path(probes), {"b/d/map/1@wd": predictions(0.6, labels, [i % 5 < 3 for i in range(300)])}
    )
    (line,) = study.paired_runs("b/d/map/1@wd", "b/d/mle/1", [grid, probes], 200)
    assert line.startswith("b/d/map/1@wd minus b/d/mle/1 (300 examples, 95 % paired bootstrap): ΔACC **+0.100** [")
    assert "ΔECE **-0.400** [" in line  # 0.6 on 60 % right (ECE 0) against 0.9 on 50 % (ECE 0.4)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "paired", "b/d/blob/1", "b/d/mle/1", "--results", str(grid)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: b/d/blob/1: no stored predictions under that key in {study.predictions_path(grid)}"
    )


def test_every_seed_lifts_the_per_method_seed_budget(study):
    """The spec runs MAP on the first seed only; a caller naming MAP and seed 2 gets that run."""
    spec = small_spec(["d"])
    budget = {u.seed: u.methods for u in study.plan(spec, ["b"], None, "data")}
    assert budget == {1: ("mle", "blob", "map"), 2: ("mle", "blob")}
    lifted = {u.seed: u.methods for u in study.plan(spec, ["b"], None, "data", every_seed=True)}
    assert lifted == {1: ("mle", "blob", "map"), 2: ("mle", "blob", "map")}


def test_run_with_named_methods_and_seeds_plans_a_control_beyond_the_budget(tmp_path):
    """`run --methods map --seeds 2 --dry-run` on the real spec plans and validates MAP's seed 2 (before: nothing)."""
    command = [sys.executable, str(SCRIPT), "run", "--backbone", "smollm2-135m", "--datasets", "winogrande_s"]
    command += ["--methods", "map", "--seeds", "2", "--dry-run", "--out", str(tmp_path / "r.json")]
    result = subprocess.run([*command, "--work-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "running 1 with" in result.stdout
    assert "smollm2-135m/winogrande_s/seed2: ok" in result.stdout


def test_grid_gaps_name_each_planned_run_not_yet_recorded(study):
    """The report's coverage line: planned runs from the spec (seeds_for included) minus the recorded ones."""
    spec = small_spec(["d", "e"])
    recorded = {study.run_key("b", "d", m, s) for m in ("mle", "blob") for s in (1, 2)}
    recorded |= {study.run_key("b", "d", "map", 1), study.run_key("b", "e", "mle", 1)}
    assert study.grid_gaps(spec, "b", recorded) == [
        "- grid: 6 of 10 planned runs recorded; still to run:",
        "  - e: seed 1 of map; seeds 1, 2 of blob; seed 2 of mle",
    ]
    everything = recorded | {study.run_key("b", "e", m, s) for m in ("mle", "blob") for s in (1, 2)}
    everything.add(study.run_key("b", "e", "map", 1))
    assert study.grid_gaps(spec, "b", everything) == ["- grid: 10 of 10 planned runs recorded"]


def test_status_counts_the_real_grid_against_a_results_file(tmp_path):
    """`status` on an empty results file: every planned run of each backbone is still to run."""
    (tmp_path / "r.json").write_text('{"runs": []}', encoding="utf-8")
    command = [sys.executable, str(SCRIPT), "status", "--out", str(tmp_path / "r.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # minilm-l6: 9 methods x 3 seeds x 5 datasets; smollm2-135m: MLE and BLoB on 2 seeds, the other 7 on one
    assert "minilm-l6:" in lines and "- grid: 0 of 135 planned runs recorded; still to run:" in lines
    assert "smollm2-135m:" in lines and "- grid: 0 of 55 planned runs recorded; still to run:" in lines
