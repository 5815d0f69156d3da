"""Is a calibration gap between two runs more than noise? Paired bootstrap over the shared questions.

Each run's ``predictions.jsonl`` (run directory or the file itself) is matched to the reference run's by
example id; every resample draws the same examples for both runs, and the 95 % interval of the metric
difference (run - reference) is read off the resampled differences. ECE and NLL are the library's own
(``bayespeft.metrics.classification``), so the point differences equal those of the runs' metrics.

    python benchmarks/paired_bootstrap.py --reference runs/all_methods/arc_easy/mle \\
        --runs runs/all_methods/arc_easy/blob runs/all_methods/arc_easy/bbb \\
        --out benchmarks/results/arc_easy_paired_bootstrap.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bayespeft.errors import ConfigError, DataError, exit_on_bad_input
from bayespeft.experiments.report import load_predictions
from bayespeft.metrics.classification import expected_calibration_error, negative_log_likelihood

METRICS = {"ece": expected_calibration_error, "nll": negative_log_likelihood}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="run directory or predictions.jsonl")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="run directories or predictions.jsonl")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def predictions_file(path: Path) -> Path:
    return path / "predictions.jsonl" if path.is_dir() else path


def probabilities(path: Path, ids: list[str] | None = None) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(ids, probs [N, C] zero-padded to the widest question, labels [N]) in the order of ``ids``.

    Zero columns change neither metric, so runs of different widths compare as they are."""
    records = {r["id"]: r for r in load_predictions(predictions_file(path))}
    ids = ids if ids is not None else list(records)
    missing = [uid for uid in ids if uid not in records]
    if missing:
        raise DataError(f"{predictions_file(path)}: no prediction for example {missing[0]!r} of the reference")
    width = max(len(records[uid]["probs"]) for uid in ids)
    probs = torch.zeros(len(ids), width, dtype=torch.float64)
    for row, uid in enumerate(ids):
        probs[row, : len(records[uid]["probs"])] = torch.tensor(records[uid]["probs"], dtype=torch.float64)
    labels = torch.tensor([records[uid]["label"] for uid in ids])
    return ids, probs, labels


def main() -> None:
    args = parse_args()
    if args.resamples < 10:
        raise ConfigError(f"--resamples: at least 10 (got {args.resamples})")
    ids, ref_probs, labels = probabilities(args.reference)
    generator = torch.Generator().manual_seed(args.seed)
    draws = torch.randint(len(ids), (args.resamples, len(ids)), generator=generator)
    reference = {name: metric(ref_probs, labels) for name, metric in METRICS.items()}
    resampled_reference = {
        name: torch.tensor([metric(ref_probs[d], labels[d]) for d in draws]) for name, metric in METRICS.items()
    }
    rows = []
    for run in args.runs:
        _, probs, run_labels = probabilities(run, ids)
        if not torch.equal(run_labels, labels):
            raise DataError(f"{predictions_file(run)}: gold labels differ from the reference's")
        label = run.name if run.is_dir() else "/".join(run.parts[-4:-1])
        row: dict[str, object] = {"run": str(run), "label": label}
        for name, metric in METRICS.items():
            diffs = torch.tensor([metric(probs[d], labels[d]) for d in draws]) - resampled_reference[name]
            low, high = torch.quantile(diffs, torch.tensor([0.025, 0.975], dtype=diffs.dtype)).tolist()
            row[name] = metric(probs, labels)
            row[f"{name}_diff"] = row[name] - reference[name]
            row[f"{name}_diff_95"] = [low, high]
        rows.append(row)

    print(f"reference {args.reference} ({len(ids)} examples, {args.resamples} paired resamples)")
    print(f"{'run':<40} {'ECE':>7} {'ECE - ref [95 %]':>26} {'NLL':>7} {'NLL - ref [95 %]':>26}")
    for row in rows:
        cells = [
            f"{row[m]:>7.3f} {row[m + '_diff']:+.3f} [{row[m + '_diff_95'][0]:+.3f}, {row[m + '_diff_95'][1]:+.3f}]"
            for m in METRICS
        ]
        print(f"{row['label']:<40} {cells[0]:>34} {cells[1]:>34}")
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "examples": len(ids), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    exit_on_bad_input(main)
