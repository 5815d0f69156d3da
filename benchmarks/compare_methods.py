"""Methods compared on one dataset and backbone with the same data, steps and seed (default: MLE vs MAP
vs BLoB on ARC-Easy with SmolLM2-135M-Instruct).

Each method trains in its own process (so peak memory is its own) through the real CLI, then
is evaluated on the dev set with N posterior samples. Prints a table and writes JSON with
ACC/ECE/NLL/Brier per method, the BLoB/MLE training-step time ratio and peak memory.

    python benchmarks/compare_methods.py --steps 500 --out benchmarks/results/arc_easy_smollm2.json
    python benchmarks/compare_methods.py --model minilm-l6 --dataset mrpc --batch-size 16 --lr 5e-4 \\
        --out benchmarks/results/mrpc_minilm.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="mle,map,blob")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--dataset", default="arc_easy")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--n-samples", type=int, default=10)
    parser.add_argument("--max-train-examples", type=int)
    parser.add_argument("--max-eval-examples", type=int, help="default: the full dev set")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--max-length", type=int, default=300, help="token limit per example")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "compare_methods"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compare_methods.json"))
    parser.add_argument(
        "--reuse", action="store_true", help="reuse a method's finished run in --work-dir instead of training again"
    )
    parser.add_argument("--extra", nargs="*", default=[], help="more dotted overrides for every method")
    parser.add_argument("--blob-extra", nargs="*", default=[], help="more dotted overrides for the BLoB methods")
    return parser.parse_args()


def run_method(args: argparse.Namespace, method: str) -> dict:
    run_dir = Path(args.work_dir) / method
    command = [
        sys.executable,
        "-m",
        "bayespeft.cli",
        "train",
        "-o",
        str(run_dir),
        "--overwrite",
        "--quiet",
        "--model",
        args.model,
        "--method",
        method,
        "--dataset",
        args.dataset,
        "--data-dir",
        args.data_dir,
        "--max-steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--n-samples",
        str(args.n_samples),
        "--precision",
        args.precision,
        "--seed",
        str(args.seed),
        "--checkpoint-every",
        str(max(args.steps, 1)),
        "--max-seq-len",
        str(args.max_length),
        *args.extra,
    ]
    if method.startswith("blob"):
        command += args.blob_extra
    if args.max_train_examples:
        command += ["--max-train-examples", str(args.max_train_examples)]
    if args.max_eval_examples:
        command += ["--max-eval-examples", str(args.max_eval_examples)]
    if args.reuse and (run_dir / "metrics.json").is_file():
        print(f"reusing the finished run {run_dir}")
        return json.loads((run_dir / "metrics.json").read_text())
    began = time.perf_counter()
    subprocess.run(command, check=True)
    payload = json.loads((run_dir / "metrics.json").read_text())
    payload["wall_time_s"] = time.perf_counter() - began
    return payload


def main() -> None:
    args = parse_args()
    results = {m: run_method(args, m) for m in args.methods.split(",")}
    rows = []
    for method, payload in results.items():
        m, t = payload["metrics"], payload["train"]
        rows.append(
            {
                "method": method,
                "acc": m["acc"],
                "ece": m["ece"],
                "nll": m["nll"],
                "brier": m["brier"],
                "entropy": m["entropy"],
                "mutual_information": m["mutual_information"],
                "n_eval": m["num_examples"],
                "n_samples": m["num_samples"],
                "median_step_s": t["median_step_time_s"],
                "peak_memory_mb": t["peak_memory_mb"],
                "kl_period": t.get("kl_period"),
            }
        )
    step = {r["method"]: r["median_step_s"] for r in rows}
    ratio = step["blob"] / step["mle"] if "blob" in step and "mle" in step else None
    header = f"{'method':<13}{'ACC':>8}{'ECE':>8}{'NLL':>8}{'Brier':>8}{'MI':>8}{'step s':>9}{'peak MiB':>10}"
    print(f"\n{args.dataset} dev ({rows[0]['n_eval']} questions), {args.model}, {args.steps} steps, N={args.n_samples}")
    print(header)
    for r in rows:
        print(
            f"{r['method']:<13}{r['acc']:8.4f}{r['ece']:8.4f}{r['nll']:8.4f}{r['brier']:8.4f}"
            f"{r['mutual_information']:8.4f}{r['median_step_s']:9.3f}{r['peak_memory_mb']:10.0f}"
        )
    if ratio is not None:
        print(f"BLoB / MLE median training-step time: {ratio:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    out.write_text(
        json.dumps(
            {"args": vars(args), "device": device, "rows": rows, "blob_over_mle_step_time": ratio, "runs": results},
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
