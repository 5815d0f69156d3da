"""Does bf16 autocast change an encoder's results? A paired comparison on the calibration study's units.

The bf16 arm re-runs study units (same seed, data order, steps and evaluation) with
``model.precision=bf16-autocast`` into its own results file; the fp32 arm is the study's committed record
of the same units. Per unit the script prints each arm's ACC/ECE/NLL, the share of held-out examples on
which both predict the same class, and a 95 % paired bootstrap of bf16 - fp32; beside it, the seed-to-seed
spread of the fp32 runs (the noise a precision change has to stay within) and the mean training-step time
of each arm from the runs' logs (not interleaved: the arms ran at different times on a shared machine).

    python benchmarks/encoder_precision.py run --datasets mrpc --methods mle,blob --seeds 1,2
    python benchmarks/encoder_precision.py report
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path
from statistics import fmean, median
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # calibration_study is a sibling script
from calibration_study import (
    METRICS,
    RESULTS,
    load_predictions_store,
    load_results,
    paired_interval,
    predictions_path,
    run_key,
    stored_probs,
)

from bayespeft.checkpoint import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = "minilm-l6"
ARM = "bf16-autocast"
ARM_RESULTS = ROOT / "benchmarks" / "results" / "encoder_precision_bf16.json"
SUMMARY = ROOT / "benchmarks" / "results" / "encoder_precision.json"
WORK = ROOT / "runs" / "encoder_precision"


def run(args: argparse.Namespace) -> None:
    """The bf16 arm: the study's own runner with one extra override, into its own results and work dir."""
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "calibration_study.py"),
        "run",
        "--backbone",
        BACKBONE,
        "--datasets",
        args.datasets,
        "--methods",
        args.methods,
        "--seeds",
        args.seeds,
        "--threads",
        str(args.threads),
        "--out",
        str(ARM_RESULTS),
        "--work-dir",
        str(args.work_dir),
        "--extra",
        f"model.precision={ARM}",
    ]
    raise SystemExit(subprocess.run(command, cwd=ROOT, env=os.environ).returncode)


def step_time(run_dir: Path) -> float | None:
    """Median training-step time of a run from its train log (evaluation steps excluded); None if absent."""
    log = run_dir / "train_log.jsonl"
    if not log.is_file():
        return None
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    times = [r["step_time_s"] for r in rows if "step_time_s" in r and "eval_nll" not in r]
    return median(times) if times else None


def report(args: argparse.Namespace) -> None:
    """Pair every bf16 run with the study's fp32 run of the same key; print the table and write the summary."""
    arm_runs = load_results(ARM_RESULTS)["runs"]
    arm_store = load_predictions_store(predictions_path(ARM_RESULTS))
    ref_runs = {run_key(r["backbone"], r["dataset"], r["method"], r["seed"]): r for r in load_results(RESULTS)["runs"]}
    ref_store = load_predictions_store(predictions_path(RESULTS))
    rows = []
    print(
        "| dataset | method | seed | fp32 ACC/ECE/NLL | bf16 ACC/ECE/NLL | same class | "
        + " | ".join(f"Δ{k.upper()} [95 %]" for k in METRICS)
        + " | step fp32 / bf16 (s) |"
    )
    print("|" + "---|" * (7 + len(METRICS)))
    for run in sorted(arm_runs, key=lambda r: (r["dataset"], r["method"], r["seed"])):
        key = run_key(run["backbone"], run["dataset"], run["method"], run["seed"])
        ref, ours, theirs = ref_runs.get(key), arm_store.get(key), ref_store.get(key)
        if ref is None or ours is None or theirs is None or ours["ids"] != theirs["ids"]:
            print(f"{key}: no fp32 record with the same examples in {RESULTS.name}; skipped")
            continue
        a, b, labels = stored_probs(ours["probs"]), stored_probs(theirs["probs"]), torch.tensor(theirs["labels"])
        deltas = paired_interval([(a, b, labels)], args.resamples)
        agreement = float((a.argmax(-1) == b.argmax(-1)).double().mean())
        times = {
            "fp32": step_time(
                args.study_work_dir / BACKBONE / run["dataset"] / f"seed{run['seed']}" / "runs" / run["run"]
            ),
            ARM: step_time(args.work_dir / BACKBONE / run["dataset"] / f"seed{run['seed']}" / "runs" / run["run"]),
        }
        rows.append(
            {
                "key": key,
                "fp32": _scores(ref),
                ARM: _scores(run),
                "same_class": agreement,
                "delta": deltas,
                "median_step_s": times,
            }
        )
        cells = [f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" for d in deltas.values()]
        timing = " / ".join("-" if t is None else f"{t:.2f}" for t in times.values())
        print(
            f"| {run['dataset']} | {run['method']} | {run['seed']} | {_triple(ref)} | {_triple(run)} | "
            f"{agreement:.3f} | " + " | ".join(cells) + f" | {timing} |"
        )
    spread = seed_spread(ref_runs, {(r["dataset"], r["method"]) for r in arm_runs})
    for (dataset, method), gaps in spread.items():
        print(f"fp32 seed-to-seed |Δ| on {dataset}/{method}: " + ", ".join(f"{k} {v:.3f}" for k, v in gaps.items()))
    write_json_atomic(
        SUMMARY,
        {
            "arm": ARM,
            "reference": str(RESULTS.relative_to(ROOT)),
            "pairs": rows,
            "fp32_seed_spread": {f"{d}/{m}": g for (d, m), g in spread.items()},
        },
    )
    print(f"wrote {SUMMARY}")


def seed_spread(ref_runs: dict[str, dict], units: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, float]]:
    """Mean absolute difference between fp32 seeds of each (dataset, method): the noise floor of the pairs."""
    spread = {}
    for dataset, method in sorted(units):
        runs = [
            r for r in ref_runs.values() if (r["backbone"], r["dataset"], r["method"]) == (BACKBONE, dataset, method)
        ]
        pairs = list(combinations(runs, 2))
        if pairs:
            spread[dataset, method] = {k: fmean(abs(x[k] - y[k]) for x, y in pairs) for k in METRICS}
    return spread


def _scores(record: dict[str, Any]) -> dict[str, float]:
    return {k: record[k] for k in METRICS}


def _triple(record: dict[str, Any]) -> str:
    return f"{record['acc']:.3f} / {record['ece']:.3f} / {record['nll']:.3f}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="train and evaluate the bf16 arm of the chosen study units")
    run_parser.add_argument("--datasets", default="mrpc")
    run_parser.add_argument("--methods", default="mle,blob")
    run_parser.add_argument("--seeds", default="1,2")
    run_parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run")
    run_parser.add_argument("--work-dir", type=Path, default=WORK)
    report_parser = sub.add_parser("report", help="pair the bf16 runs with the study's fp32 runs")
    report_parser.add_argument("--resamples", type=int, default=1000)
    report_parser.add_argument("--work-dir", type=Path, default=WORK)
    report_parser.add_argument("--study-work-dir", type=Path, default=ROOT / "runs" / "calibration_study")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
