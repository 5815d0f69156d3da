"""Every method on a list of datasets with one backbone, the same data, steps, seed and N (issue 3).

Methods trained by gradient descent run through `bayespeft train`; the post-hoc ones (laplace,
tfb, noise) take the MLE run's adapter as their source (`train.max_steps=0`); `temperature` is
the MLE run rescaled by `bayespeft calibrate` on held-out data (never the evaluation split).
With --ood-datasets every run is also evaluated, without further training, on shifted datasets
(`bayespeft ood`: metrics there plus AUROC of entropy / max-prob / MI for in- vs out-of-distribution).
Finished runs are reused, so an interrupted benchmark continues where it stopped.

    python benchmarks/all_methods.py --model minilm-l6 --datasets rte,mrpc,cola,wic,boolq --steps 300 \\
        --batch-size 16 --lr 5e-4 --max-length 256 --fit-split train --fit-offset 2000 \\
        --max-train-examples 2000 --out benchmarks/results/glue_minilm.json
    python benchmarks/all_methods.py --datasets arc_easy,obqa --eval-split test --extra data.mc_scoring=cloze \\
        --out benchmarks/results/mc_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from bayespeft.config import load_config, save_config
from bayespeft.errors import ConfigError, exit_on_bad_input

ROOT = Path(__file__).resolve().parents[1]
POSTHOC = ("laplace", "tfb", "noise")  # fitted on the MLE adapter, no training
TEMPERATURE = "temperature"
DEFAULT_METHODS = "mle,map,blob,bbb,mcdropout,ensemble,inducing,laplace,tfb,noise,temperature"
COLUMNS = ("acc", "ece", "nll", "brier", "entropy", "mutual_information")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma-separated; LABEL=METHOD runs METHOD under its own name, e.g. blob_uniform=blob "
        "with --method-extra blob_uniform:method.kl_schedule=uniform",
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--datasets", default="arc_easy,obqa")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--n-samples", type=int, default=10)
    parser.add_argument("--max-train-examples", type=int)
    parser.add_argument("--max-eval-examples", type=int)
    parser.add_argument("--eval-split", default="validation")
    parser.add_argument("--fit-split", default="validation", help="held-out split for the temperature")
    parser.add_argument("--fit-offset", type=int, default=0, help="skip these first examples of the fit split")
    parser.add_argument("--max-fit-examples", type=int, default=500)
    parser.add_argument("--precision", default="bf16-autocast")
    parser.add_argument("--max-length", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ood-datasets", help="comma-separated shifted datasets (bayespeft ood), e.g. arc_challenge")
    parser.add_argument("--ood-max-examples", type=int, help="first N examples of each dataset in the OOD evaluation")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "all_methods"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--extra", nargs="*", default=[], help="dotted overrides for every run")
    parser.add_argument("--method-extra", nargs="*", default=[], help="METHOD:key=value overrides for one method")
    return parser.parse_args()


def cli(*arguments: str) -> None:
    subprocess.run([sys.executable, "-m", "bayespeft.cli", *arguments], check=True, cwd=ROOT)


def train_run(args: argparse.Namespace, dataset: str, label: str, work: Path) -> Path:
    """Train (or fit post hoc) one method; ``label`` is its run name, ``LABEL=METHOD`` picks the method."""
    method = label.split("=", 1)[-1]
    label = label.split("=", 1)[0]
    run_dir = work / label
    if (run_dir / "metrics.json").is_file():
        print(f"reusing {run_dir}")
        return run_dir
    overrides = [
        f"model.name={args.model}",
        f"model.precision={args.precision}",
        f"method.name={method}",
        f"data.dataset={dataset}",
        f"data.data_dir={args.data_dir}",
        f"data.eval_split={args.eval_split}",
        f"data.max_length={args.max_length}",
        f"train.max_steps={0 if method in POSTHOC else args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.lr={args.lr}",
        f"train.seed={args.seed}",
        f"train.checkpoint_every={max(args.steps, 1)}",
        f"eval.n_samples={args.n_samples}",
        "eval.samples_per_pass=1",
        *args.extra,
        *(item.split(":", 1)[1] for item in args.method_extra if item.split(":", 1)[0] == label),
    ]
    if method in POSTHOC:
        overrides.append(f"method.source_adapter={work / 'mle' / 'adapter'}")
    if args.max_train_examples:
        overrides.append(f"data.max_train_examples={args.max_train_examples}")
    if args.max_eval_examples:
        overrides.append(f"data.max_eval_examples={args.max_eval_examples}")
    began = time.perf_counter()
    cli("train", "-o", str(run_dir), "--overwrite", "--quiet", *overrides)
    payload = json.loads((run_dir / "metrics.json").read_text())
    payload["benchmark_wall_time_s"] = time.perf_counter() - began
    (run_dir / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    return run_dir


def temperature_run(args: argparse.Namespace, work: Path) -> Path:
    """A copy of the MLE run whose config carries the temperature fitted on held-out data, re-evaluated."""
    mle, run_dir = work / "mle", work / TEMPERATURE
    if (run_dir / "metrics.json").is_file():
        print(f"reusing {run_dir}")
        return run_dir
    cli(
        "calibrate",
        "--run-dir",
        str(mle),
        "--quiet",
        "--fit-split",
        args.fit_split,
        "--fit-offset",
        str(args.fit_offset),
        "--max-fit-examples",
        str(args.max_fit_examples),
    )
    staging = work / f"{TEMPERATURE}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(mle, staging, ignore=shutil.ignore_patterns("checkpoints", "eval", "metrics.json"))
    config = load_config(staging / "config.yaml")
    config.eval.temperature = json.loads((mle / "temperature.json").read_text())["temperature"]
    save_config(config, staging / "config.yaml")
    cli("evaluate", "--run-dir", str(staging), "--quiet", "--name", "final")
    for name in ("metrics.json", "predictions.jsonl"):
        shutil.copy(staging / "eval" / "final" / name, staging / name)
    staging.rename(run_dir)
    return run_dir


def ood_rows(args: argparse.Namespace, run_dir: Path, method: str) -> list[dict]:
    summary = run_dir / "eval" / f"ood_summary_n{args.n_samples}" / "summary.json"
    if not summary.is_file():
        cap = [f"data.max_eval_examples={args.ood_max_examples}"] if args.ood_max_examples else []
        cli("ood", "--run-dir", str(run_dir), "--quiet", "--overwrite", "--datasets", args.ood_datasets, *cap)
    return [{"method": method, **row} for row in json.loads(summary.read_text())["rows"]]


def summarize(method: str, dataset: str, payload: dict) -> dict:
    metrics, train = payload["metrics"], payload.get("train", {})
    return {
        "method": method,
        "dataset": dataset,
        **{k: metrics[k] for k in COLUMNS},
        **{k: metrics[k] for k in ("f1", "mcc") if k in metrics},
        "n_eval": metrics["num_examples"],
        "n_samples": payload.get("n_samples"),
        "train_steps": train.get("steps"),
        "median_step_s": train.get("median_step_time_s"),
        "temperature": metrics.get("temperature"),
        "train": train,
    }


def print_table(dataset: str, rows: list[dict]) -> None:
    extra = [k for k in ("f1", "mcc") if k in rows[0]]
    print(f"\n{dataset}: {rows[0]['n_eval']} eval examples")
    print(f"{'method':<13}" + "".join(f"{c[:7].upper():>9}" for c in (*COLUMNS, *extra)))
    for r in rows:
        print(f"{r['method']:<13}" + "".join(f"{r[c]:9.4f}" for c in (*COLUMNS, *extra)))


def main() -> None:
    args = parse_args()
    methods = args.methods.split(",")
    kinds = [label.split("=", 1)[-1] for label in methods]
    needs_mle = [m for m in kinds if m in POSTHOC or m == TEMPERATURE]
    if needs_mle and ("mle" not in kinds or kinds.index("mle") > kinds.index(needs_mle[0])):
        raise ConfigError(f"--methods: {needs_mle[0]} needs mle listed before it")
    results: dict[str, list[dict]] = {}
    ood: list[dict] = []
    for dataset in args.datasets.split(","):
        work = Path(args.work_dir) / dataset.replace(":", "-")
        rows = []
        for method in methods:
            run_dir = temperature_run(args, work) if method == TEMPERATURE else train_run(args, dataset, method, work)
            payload = json.loads((run_dir / "metrics.json").read_text())
            rows.append(summarize(run_dir.name, dataset, payload))
            if args.ood_datasets:
                ood += ood_rows(args, run_dir, run_dir.name)
        results[dataset] = rows
        print_table(dataset, rows)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "device": device, "results": results, "ood": ood}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    exit_on_bad_input(main)
