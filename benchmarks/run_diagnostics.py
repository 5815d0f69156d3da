"""What a finished run's files say about why its posterior did or did not spread.

For each run directory: the mean |A| and |B| of its LoRA factors and, for BLoB-family methods, the
mean posterior std of each factor (from the saved rho); the training NLL averaged over windows of
--window steps and the total KL weight the schedule applied (sum of pi over the steps); the mean
confidence (max predictive probability) and accuracy of its predictions.

    python benchmarks/run_diagnostics.py runs/all_methods/arc_easy/{mle,blob,blob_gamma100,bbb,inducing} \\
        --window 25 --out benchmarks/results/arc_easy_run_diagnostics.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from bayespeft.experiments.report import load_predictions
from bayespeft.methods import build_method
from bayespeft.methods.base import ADAPTER_WEIGHTS, read_method_file
from bayespeft.methods.blob import posterior_std
from bayespeft.rundir import RunDir

FACTORS = {"A": "lora_A", "B": "lora_B"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished run directories")
    parser.add_argument("--window", type=int, default=25, help="training steps per NLL average")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def adapter_stats(run: RunDir) -> dict[str, float]:
    """Mean |A|, |B| and (where the adapter has a rho) the mean posterior std of each factor."""
    tensors = load_file(str(run.adapter / ADAPTER_WEIGHTS))
    saved = read_method_file(run.adapter)
    parameterization = getattr(build_method(saved["method"], **saved["config"]).config, "parameterization", None)
    stats = {}
    for factor, prefix in FACTORS.items():
        weights = [t.float().abs().flatten() for k, t in tensors.items() if k.endswith(f"{prefix}.weight")]
        if weights:
            stats[f"mean_abs_{factor}"] = torch.cat(weights).mean().item()
        rhos = [t.float().flatten() for k, t in tensors.items() if k.endswith(f"{prefix}_rho")]
        if rhos and parameterization is not None:
            stats[f"mean_std_{factor}"] = posterior_std(torch.cat(rhos), parameterization).mean().item()
    return stats


def training_stats(run: RunDir, window: int) -> dict[str, object]:
    """Training NLL per window of steps and the total KL weight (sum of pi); none for post-hoc runs."""
    if not run.train_log.is_file():
        return {}
    steps = [json.loads(line) for line in run.train_log.read_text().splitlines() if line.strip()]
    nll = [step["nll"] for step in steps]
    windows = [nll[start : start + window] for start in range(0, len(nll), window)]
    stats: dict[str, object] = {"nll_windows": [sum(w) / len(w) for w in windows]}
    if steps and "pi" in steps[0]:
        stats["total_kl_weight"] = sum(step["pi"] for step in steps)
    return stats


def prediction_stats(run: RunDir) -> dict[str, float]:
    records = load_predictions(run.root / "predictions.jsonl")
    return {
        "accuracy": sum(r["correct"] for r in records) / len(records),
        "mean_confidence": sum(r["confidence"] for r in records) / len(records),
    }


def main() -> None:
    args = parse_args()
    if args.window < 1:
        raise SystemExit(f"--window: must be >= 1 (got {args.window})")
    rows = {}
    for path in args.runs:
        run = RunDir(path)
        if not run.adapter.is_dir():
            raise SystemExit(f"{path}: not a finished run (no adapter/)")
        rows[f"{path.parent.name}/{path.name}"] = (
            adapter_stats(run) | training_stats(run, args.window) | prediction_stats(run)
        )

    for name, row in rows.items():
        cells = []
        for key, value in row.items():
            shown = " / ".join(f"{v:.3f}" for v in value) if isinstance(value, list) else f"{value:.4g}"
            cells.append(f"{key}={shown}")
        print(f"{name}: " + "  ".join(cells))
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
