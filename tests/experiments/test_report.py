import argparse
import json
import math

import matplotlib
import matplotlib.image
import pytest

from bayespeft.commands.report import add_report_parser, run_report
from bayespeft.errors import BayesPeftError, ConfigError, RunDirError
from bayespeft.experiments.report import (
    AggregateRow,
    aggregate,
    collect_results,
    latex_escape,
    load_predictions,
    plot_reliability_grid,
    to_latex,
    to_markdown,
    write_report,
)

matplotlib.use("Agg")

SEEDS = (1, 2, 3)
# Per-seed scores on arc_easy; obqa has ACC 0.1 lower and the rest the same.
SCORES = {
    "blob": {
        "acc": [0.60, 0.62, 0.64],
        "ece": [0.04, 0.05, 0.06],
        "nll": [0.9, 1.0, 1.1],
        "brier": [0.5, 0.5, 0.5],
    },
    "map": {
        "acc": [0.63, 0.63, 0.66],
        "ece": [0.10, 0.12, 0.14],
        "nll": [1.2, 1.2, 1.2],
        "brier": [0.5, 0.5, 0.5],
    },
}


def write_run(directory, method, dataset, seed, n_samples=10, scores=None, n_records=20):
    directory.mkdir(parents=True, exist_ok=True)
    if scores is None:
        i = SEEDS.index(seed)
        scores = {name: values[i] for name, values in SCORES[method].items()}
        if dataset == "obqa":
            scores["acc"] -= 0.1
        scores |= {"entropy": 0.9, "mutual_information": 0.01 if method == "blob" else 0.0}
    payload = {
        "method": method,
        "model": "smollm2-135m",
        "dataset": dataset,
        "split": "validation",
        "seed": seed,
        "n_samples": n_samples,
        "metrics": {**scores, "num_examples": n_records, "num_samples": n_samples, "n_bins": 15},
        "train": {"steps": 3},
    }
    (directory / "metrics.json").write_text(json.dumps(payload))
    with open(directory / "predictions.jsonl", "w") as fh:
        for k in range(n_records):
            confidence = 0.3 + 0.7 * k / n_records
            correct = (k + seed) % 3 != 0 if method == "blob" else k % 2 == 0
            record = {
                "id": f"q{k}",
                "dataset": dataset,
                "label": 0,
                "prediction": 0 if correct else 1,
                "confidence": confidence,
                "probs": [confidence, 1 - confidence],
                "entropy": 0.5,
                "mutual_information": 0.0,
                "correct": correct,
            }
            fh.write(json.dumps(record) + "\n")
    return directory


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for method in SCORES:
        for dataset in ("arc_easy", "obqa"):
            for seed in SEEDS:
                write_run(root / f"{method}_{dataset}_s{seed}", method, dataset, seed)
    return root


def pstd(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def test_collect_results_finds_every_run(runs):
    rows = collect_results([runs])
    assert len(rows) == 12
    row = next(r for r in rows if r.method == "blob" and r.dataset == "obqa" and r.seed == 2)
    assert row.model == "smollm2-135m" and row.split == "validation" and row.n_samples == 10
    assert row.metrics["acc"] == pytest.approx(0.52)
    assert row.source == runs / "blob_obqa_s2" / "metrics.json"
    assert row.predictions_path == runs / "blob_obqa_s2" / "predictions.jsonl"
    # The same run given twice (directly and through its parent) is read once.
    assert len(collect_results([runs, runs / "blob_obqa_s2"])) == 12


def test_eval_dirs_are_picked_up_and_checkpoints_skipped(tmp_path):
    run = write_run(tmp_path / "run", "blob", "arc_easy", 1)
    write_run(run / "eval" / "obqa_test_n10", "blob", "obqa", 1)
    bad = run / "checkpoints" / "checkpoint-5"
    bad.mkdir(parents=True)
    (bad / "metrics.json").write_text("{not json")
    rows = collect_results([run])
    assert [(r.dataset, r.source.parent.name) for r in rows] == [("arc_easy", "run"), ("obqa", "obqa_test_n10")]
    only_eval = collect_results([run / "eval" / "obqa_test_n10"])
    assert [r.dataset for r in only_eval] == ["obqa"]
    assert collect_results([run / "metrics.json"])[0].dataset == "arc_easy"


def test_aggregate_mean_and_population_std(runs):
    aggs = aggregate(collect_results([runs]))
    assert [(a.key["dataset"], a.key["method"], a.key["n_samples"]) for a in aggs] == [
        ("arc_easy", "blob", 10),
        ("arc_easy", "map", 10),
        ("obqa", "blob", 10),
        ("obqa", "map", 10),
    ]
    blob = aggs[0]
    assert blob.n_seeds == 3 and blob.seeds == (1, 2, 3)
    assert blob.mean["acc"] == pytest.approx(0.62)
    # Population std (ddof=0): deviations -0.02, 0, 0.02 -> sqrt(8e-4 / 3).
    assert blob.std["acc"] == pytest.approx(math.sqrt(8e-4 / 3))
    assert blob.std["acc"] == pytest.approx(pstd(SCORES["blob"]["acc"]))
    assert blob.mean["ece"] == pytest.approx(0.05)
    assert blob.std["brier"] == 0.0
    assert list(blob.mean) == ["acc", "ece", "nll", "brier", "entropy", "mutual_information"]
    assert "num_examples" not in blob.mean
    assert aggs[3].mean["acc"] == pytest.approx(0.54)
    assert aggs[3].std["acc"] == pytest.approx(math.sqrt(2e-4))


def test_aggregate_other_grouping_and_bad_field(runs):
    rows = collect_results([runs])
    by_method = aggregate(rows, group_by=("method", "dataset"))
    assert len(by_method) == 4 and list(by_method[0].key) == ["method", "dataset"]
    with pytest.raises(ConfigError, match="unknown group-by field 'seed'"):
        aggregate(rows, group_by=("seed",))


def test_duplicate_seed_names_both_files(runs, tmp_path):
    write_run(tmp_path / "again" / "blob_arc_easy_s2", "blob", "arc_easy", 2)
    rows = collect_results([runs, tmp_path / "again"])
    with pytest.raises(RunDirError, match="seed 2 appears twice") as info:
        aggregate(rows)
    message = str(info.value)
    assert str(runs / "blob_arc_easy_s2" / "metrics.json") in message
    assert str(tmp_path / "again" / "blob_arc_easy_s2" / "metrics.json") in message


def test_malformed_metrics_json_names_the_file(runs):
    bad = runs / "map_obqa_s3" / "metrics.json"
    bad.write_text('{"method": "map",')
    with pytest.raises(RunDirError, match=r"map_obqa_s3/metrics.json:1:") as info:
        collect_results([runs])
    assert str(bad) in str(info.value)
    bad.write_text(json.dumps({"method": "map", "dataset": "obqa", "seed": "one", "metrics": {}}))
    with pytest.raises(RunDirError, match="field 'seed' must be an integer"):
        collect_results([runs])
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(RunDirError, match="expected a JSON object"):
        collect_results([bad])


def test_empty_input_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BayesPeftError, match=r"no metrics.json found under .*empty"):
        collect_results([tmp_path / "empty"])
    with pytest.raises(BayesPeftError, match="no run directories given"):
        collect_results([])
    with pytest.raises(RunDirError, match="missing: no such run directory"):
        collect_results([tmp_path / "missing"])
    with pytest.raises(BayesPeftError, match="no results"):
        to_markdown([])


def test_markdown_table(runs):
    md = to_markdown(aggregate(collect_results([runs])))
    lines = md.splitlines()
    assert lines[0] == (
        "| Method | N | arc_easy ACC (%) ↑ | arc_easy ECE (%) ↓ | arc_easy NLL ↓ | arc_easy Brier ↓ "
        "| obqa ACC (%) ↑ | obqa ECE (%) ↓ | obqa NLL ↓ | obqa Brier ↓ |"
    )
    assert lines[1] == "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|"
    assert len(lines) == 4
    blob, map_ = lines[2], lines[3]
    # arc_easy: ACC 62.00 ± 1.63 (map is best), ECE 5.00 ± 0.82 (best), NLL 1.00 ± 0.08 (best), Brier tie.
    assert blob.startswith("| blob | 10 | 62.00 ± 1.63 | **5.00 ± 0.82** | **1.00 ± 0.08** | **0.50 ± 0.00** |")
    assert map_.startswith("| map | 10 | **64.00 ± 1.41** | 12.00 ± 1.63 | 1.20 ± 0.00 | **0.50 ± 0.00** |")
    assert map_.endswith("| **54.00 ± 1.41** | 12.00 ± 1.63 | 1.20 ± 0.00 | **0.50 ± 0.00** |")


def test_markdown_options_and_unknown_metric(runs):
    aggs = aggregate(collect_results([runs]))
    md = to_markdown(aggs, metrics=("acc", "mutual_information"), scale={}, digits=3)
    assert "| arc_easy ACC ↑ | arc_easy MI |" in md
    assert "| **0.640 ± 0.014** | 0.000 ± 0.000 |" in md  # MI has no best, never bold
    with pytest.raises(ConfigError, match=r"unknown metric 'auroc'.*acc, ece, nll, brier"):
        to_markdown(aggs, metrics=("acc", "auroc"))


def test_latex_table(runs, tmp_path):
    write_run(tmp_path / "more" / "run", "blob_lora", "arc_easy", 1, scores={"acc": 0.5, "ece": 0.3})
    aggs = aggregate(collect_results([runs, tmp_path / "more"]))
    tex = to_latex(aggs, metrics=("acc", "ece"))
    lines = tex.splitlines()
    assert lines[0] == r"\begin{tabular}{llcccc}"
    assert lines[1] == r"\toprule"
    assert lines[2] == r" &  & \multicolumn{2}{c}{arc\_easy} & \multicolumn{2}{c}{obqa} \\"
    assert lines[3] == r"\cmidrule(lr){3-4} \cmidrule(lr){5-6}"
    metric_headers = r"ACC (\%) $\uparrow$ & ECE (\%) $\downarrow$"
    assert lines[4] == rf"Method & $N$ & {metric_headers} & {metric_headers} \\"
    assert lines[5] == r"\midrule"
    assert lines[6] == (
        r"blob & 10 & 62.00 $\pm$ 1.63 & \textbf{5.00 $\pm$ 0.82} & 52.00 $\pm$ 1.63 & \textbf{5.00 $\pm$ 0.82} \\"
    )
    assert lines[7] == r"blob\_lora & 10 & 50.00 $\pm$ 0.00 & 30.00 $\pm$ 0.00 & -- & -- \\"
    assert lines[8].startswith(r"map & 10 & \textbf{64.00 $\pm$ 1.41} & 12.00 $\pm$ 1.63 & ")
    assert lines[-2:] == [r"\bottomrule", r"\end{tabular}"]
    assert latex_escape("a_b & 50% #1 {x}") == r"a\_b \& 50\% \#1 \{x\}"


def test_reliability_grid_png(runs, tmp_path):
    rows = collect_results([runs])
    out = plot_reliability_grid(rows, tmp_path / "grid.png", n_bins=10)
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
    assert not list(tmp_path.glob(".grid.png.*"))  # temp file renamed away


def test_reliability_grid_needs_predictions(runs, tmp_path):
    (runs / "map_obqa_s1" / "predictions.jsonl").unlink()
    with pytest.raises(RunDirError, match=r"map_obqa_s1/predictions.jsonl: file not found"):
        plot_reliability_grid(collect_results([runs]), tmp_path / "grid.png")
    (runs / "map_obqa_s1" / "predictions.jsonl").write_text('{"confidence": 0.5, "correct": true}\n{"confidence": 2}\n')
    with pytest.raises(RunDirError, match="record 2: 'confidence'"):
        plot_reliability_grid(collect_results([runs]), tmp_path / "grid.png")
    (runs / "map_obqa_s1" / "predictions.jsonl").write_text("\n[oops\n")
    with pytest.raises(RunDirError, match=r"predictions.jsonl:2: malformed JSON"):
        load_predictions(runs / "map_obqa_s1" / "predictions.jsonl")


def test_write_report(runs, tmp_path):
    out = tmp_path / "report"
    written = write_report([runs], out)
    assert set(written) == {"markdown", "latex", "json", "reliability_grid"}
    assert {p.name for p in out.iterdir()} == {"results.md", "results.tex", "results.json", "reliability_grid.png"}
    assert "**64.00 ± 1.41**" in written["markdown"].read_text()
    assert r"\textbf{64.00 $\pm$ 1.41}" in written["latex"].read_text()
    summary = json.loads(written["json"].read_text())
    assert summary["group_by"] == ["dataset", "method", "n_samples"]
    assert "ddof=0" in summary["std"]
    first = summary["groups"][0]
    assert (first["dataset"], first["method"], first["n_seeds"], first["seeds"]) == ("arc_easy", "blob", 3, [1, 2, 3])
    assert first["mean"]["acc"] == pytest.approx(0.62)
    assert first["sources"][0].endswith("blob_arc_easy_s1/metrics.json")
    assert matplotlib.image.imread(written["reliability_grid"]).shape[2] in (3, 4)


def test_cli_parser_and_run_report(runs, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="bayespeft")
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "out"
    args = parser.parse_args(
        ["report", str(runs), "-o", str(out), "--metrics", "acc,nll", "--group-by", "method,dataset"]
    )
    assert args.handler is run_report and args.overrides == []
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| Method | arc_easy ACC (%) ↑ | arc_easy NLL ↓ |")
    assert "results.md" in printed and (out / "reliability_grid.png").is_file()
    bad = parser.parse_args(["report", str(runs), "-o", str(out), "--group-by", "dataset,color"])
    with pytest.raises(ConfigError, match="unknown group-by field 'color' \\(--group-by\\)"):
        run_report(bad)
    bad = parser.parse_args(["report", str(runs), "-o", str(out), "--metrics", " , "])
    with pytest.raises(ConfigError, match="--metrics"):
        run_report(bad)


def test_aggregate_row_to_dict():
    row = AggregateRow(key={"method": "blob"}, mean={"acc": 0.5}, std={"acc": 0.0}, seeds=(1,))
    assert row.to_dict() == {
        "method": "blob",
        "n_seeds": 1,
        "seeds": [1],
        "mean": {"acc": 0.5},
        "std": {"acc": 0.0},
        "sources": [],
    }


def test_several_n_samples_get_their_own_rows_and_columns(tmp_path):
    for seed in (1, 2):
        for n in (1, 10):
            write_run(
                tmp_path / f"blob_n{n}_s{seed}", "blob", "arc_easy", seed, n_samples=n, scores={"acc": 0.5 + n / 100}
            )
    rows = collect_results([tmp_path])
    md = to_markdown(aggregate(rows), metrics=("acc",))
    assert md.splitlines()[2:] == ["| blob | 1 | 51.00 ± 0.00 |", "| blob | 10 | **60.00 ± 0.00** |"]
    image = matplotlib.image.imread(plot_reliability_grid(rows, tmp_path / "grid.png"))
    assert image.shape[1] > image.shape[0]  # two panels side by side


def test_heldout_curves_come_from_the_runs_training_logs(runs, tmp_path):
    """Runs that evaluated during training (train.eval_every) get heldout_curves.png; the points are the log's."""
    from bayespeft.experiments.report import heldout_curves

    logged = runs / "blob_arc_easy_s1"
    lines = [
        {"step": 1, "nll": 0.9},
        {"step": 2, "nll": 0.8, "eval_nll": 0.7, "eval_ece": 0.05, "eval_acc": 0.6},
        {"step": 3, "nll": 0.6},
        {"step": 4, "nll": 0.5, "eval_nll": 0.9, "eval_ece": 0.12, "eval_acc": 0.6},
    ]
    (logged / "train_log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows = collect_results([runs])
    row = next(r for r in rows if r.directory == logged)
    assert heldout_curves(row) == [(2, 0.7, 0.05), (4, 0.9, 0.12)]
    assert all(heldout_curves(r) == [] for r in rows if r is not row)
    written = write_report([runs], tmp_path / "report")
    assert written["heldout_curves"].name == "heldout_curves.png"
    assert matplotlib.image.imread(written["heldout_curves"]).shape[2] in (3, 4)
    (logged / "train_log.jsonl").unlink()
    assert "heldout_curves" not in write_report([runs], tmp_path / "report2")
