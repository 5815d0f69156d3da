"""Generation under the posterior, BLoB vs LoRA (mle): TriviaQA uncertainty and DialogSum summaries, via the CLI.

1. ``bayespeft train`` mle and blob on TriviaQA and on DialogSum (each method in its own process;
   ``--reuse`` keeps finished runs).
2. TriviaQA: ``bayespeft sample`` S answers per test question (sampled decoding at ``--temperature``:
   for BLoB each under its own posterior draw, for LoRA decoding noise only), then ``bayespeft score``:
   accuracy of the most likely answer and AUROC / AURAC of semantic and predictive entropy for
   predicting wrong answers, with bootstrap CIs (EM correctness, MiniLM-embedding meaning classes).
3. DialogSum: beam search under the posterior mean, one summary per test dialogue (the BLoB vs LoRA
   ROUGE / BERTScore table); then beam search under each of S posterior draws per dialogue (LoRA has one
   weight setting, so one summary) with kernel-density figures of the per-sample scores.

Stores live in ``--work-dir`` and resume when the script is run again with ``--reuse`` (without it,
runs are retrained and their stores started afresh). Prints the tables and writes JSON to ``--out``.

    python benchmarks/generative_blob_vs_lora.py --steps 1000 --samples 10 \\
        --out benchmarks/results/generative_blob_vs_lora.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
QA_SCORES = ("semantic_entropy", "predictive_entropy")
SUMMARY_METRICS = ("rouge1", "rouge2", "rougeL", "bertscore_f1")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="mle,blob", help="comma-separated; the first is the LoRA baseline")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--summary-steps", type=int, help="DialogSum training steps (default: --steps)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--train-examples", type=int, help="training examples per dataset (default: the whole split)")
    parser.add_argument("--train-eval-examples", type=int, default=100, help="validation examples scored by train")
    parser.add_argument("--max-seq-len", type=int, default=512, help="token limit per training example")
    parser.add_argument("--qa-examples", type=int, default=500, help="TriviaQA test questions sampled")
    parser.add_argument("--summary-examples", type=int, default=500, help="DialogSum test dialogues sampled")
    parser.add_argument("--samples", type=int, default=10, help="S: samples per question / dialogue")
    parser.add_argument("--temperature", type=float, default=0.5, help="TriviaQA sampling temperature")
    parser.add_argument("--qa-max-new-tokens", type=int, default=16)
    parser.add_argument("--summary-max-new-tokens", type=int, default=64)
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--prompts-per-batch", type=int, default=4)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "generative_blob_vs_lora"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generative_blob_vs_lora.json"))
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs and resume their stores")
    parser.add_argument("--extra", nargs="*", default=[], help="more dotted overrides for every training run")
    parser.add_argument("--blob-extra", nargs="*", default=[], help="more dotted overrides for the BLoB runs")
    return parser.parse_args()


def cli(*argv: str) -> None:
    """Run one ``bayespeft`` command in its own process; stop the benchmark if it fails."""
    subprocess.run([sys.executable, "-m", "bayespeft.cli", *argv], check=True)


def train(args: argparse.Namespace, dataset: str, method: str) -> Path:
    """A finished run of ``method`` on ``dataset``; a retrained run's old stores are removed (they would be refused)."""
    work = Path(args.work_dir)
    run_dir = work / "runs" / f"{dataset}_{method}"
    if args.reuse and (run_dir / "metrics.json").is_file():
        print(f"reusing the finished run {run_dir}")
        return run_dir
    for store in work.glob(f"stores/{dataset}_{method}_*.sqlite*"):
        store.unlink()
    command = ["train", "-q", "-o", str(run_dir), "--overwrite", "--model", args.model, "--method", method]
    steps = args.summary_steps if dataset == "dialogsum" and args.summary_steps is not None else args.steps
    command += ["--dataset", dataset, "--data-dir", args.data_dir, "--max-steps", str(steps)]
    command += ["--batch-size", str(args.batch_size), "--lr", str(args.lr), "--seed", str(args.seed)]
    command += ["--max-seq-len", str(args.max_seq_len), "--checkpoint-every", str(max(steps, 1))]
    command += ["--max-eval-examples", str(args.train_eval_examples), *args.extra]
    if args.train_examples:
        command += ["--max-train-examples", str(args.train_examples)]
    if method.startswith("blob"):
        command += args.blob_extra
    cli(*command)
    return run_dir


def sample(args: argparse.Namespace, run_dir: Path, store: Path, examples: int, *generation: str) -> Path:
    """Sample ``run_dir`` into ``store`` (resuming it) with ``generation.*`` overrides."""
    common = [f"generation.n_samples={args.samples}", f"generation.prompts_per_batch={args.prompts_per_batch}"]
    flags = ["-q", "--run-dir", str(run_dir), "--store", str(store), "--max-examples", str(examples)]
    cli("sample", *flags, *common, *generation)
    return store


def score(args: argparse.Namespace, stores: list[Path], out: Path) -> dict[str, Any]:
    """``bayespeft score`` the stores together; returns its scores.json."""
    flags = [flag for store in stores for flag in ("--store", str(store))]
    cli("score", *flags, "-o", str(out), "--data-dir", args.data_dir, "--n-boot", str(args.n_boot))
    return json.loads((out / "scores.json").read_text())


def ci(value: dict[str, float]) -> str:
    return f"{value['estimate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for line in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)))


def main() -> None:
    args = parse_args()
    methods = args.methods.split(",")
    work = Path(args.work_dir)
    (work / "stores").mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    qa_runs = {method: train(args, "triviaqa", method) for method in methods}
    qa_generation = ["generation.strategy=sample", f"generation.temperature={args.temperature}"]
    qa_generation.append(f"generation.max_new_tokens={args.qa_max_new_tokens}")
    qa_stores = [
        sample(args, qa_runs[m], work / "stores" / f"triviaqa_{m}_samples.sqlite", args.qa_examples, *qa_generation)
        for m in methods
    ]
    qa = score(args, qa_stores, work / "scores" / "triviaqa")

    summary_runs = {method: train(args, "dialogsum", method) for method in methods}
    beam = ["generation.strategy=beam", f"generation.num_beams={args.num_beams}"]
    beam.append(f"generation.max_new_tokens={args.summary_max_new_tokens}")
    mean_stores = [
        sample(
            args,
            summary_runs[m],
            work / "stores" / f"dialogsum_{m}_beam_mean.sqlite",
            args.summary_examples,
            *beam,
            "generation.posterior_mean=true",
        )
        for m in methods
    ]
    beam_mean = score(args, mean_stores, work / "scores" / "dialogsum_beam_mean")
    draw_stores = [
        sample(
            args, summary_runs[m], work / "stores" / f"dialogsum_{m}_beam_draws.sqlite", args.summary_examples, *beam
        )
        for m in methods
    ]
    beam_draws = score(args, draw_stores, work / "scores" / "dialogsum_beam_draws")

    qa_rows = []
    for store in qa["stores"]:
        cells = [store["method"], str(store["examples"]), ci(store["accuracy"])]
        for name in QA_SCORES:
            cells += [ci(store["selective"][name]["auroc"]), ci(store["selective"][name]["aurac"])]
        qa_rows.append(cells)
    qa_header = ["method", "questions", "accuracy"]
    qa_header += [f"{metric} {name}" for name in QA_SCORES for metric in ("AUROC", "AURAC")]
    print_table(
        f"TriviaQA test, S={args.samples}, T={args.temperature}: correctness {qa['correctness']['judge']}, "
        f"meaning classes {qa['clustering']['judge']} ({qa['clustering']['model']}); "
        f"{100 * qa['confidence']:g}% bootstrap CIs",
        qa_header,
        qa_rows,
    )
    summary_header = ["method", "S", *(f"{m} max/mean/min" for m in SUMMARY_METRICS)]
    for title, payload in (
        (f"DialogSum test, beam search x{args.num_beams} under the posterior mean", beam_mean),
        (f"DialogSum test, beam search x{args.num_beams} under each of S={args.samples} posterior draws", beam_draws),
    ):
        rows = [
            [store["method"], str(store["samples_per_example"])]
            + [
                "/".join(f"{store['means'][f'{metric}_{agg}']:.3f}" for agg in ("max", "mean", "min"))
                for metric in SUMMARY_METRICS
            ]
            for store in payload["stores"]
        ]
        print_table(f"{title} (BERTScore encoder {payload['bertscore']['model']})", summary_header, rows)
    print(f"\nper-sample score densities: {', '.join(beam_draws['figures'])}")

    results = {
        "benchmark": "generative_blob_vs_lora",
        "config": vars(args),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        },
        "runs": {
            "triviaqa": {m: str(path) for m, path in qa_runs.items()},
            "dialogsum": {m: str(path) for m, path in summary_runs.items()},
        },
        "triviaqa": {
            "correctness": qa["correctness"],
            "clustering": qa["clustering"],
            "methods": {
                store["method"]: {
                    "accuracy": store["accuracy"],
                    "sample_accuracy": store["sample_accuracy"],
                    "selective": {name: store["selective"][name] for name in QA_SCORES},
                    "store": store["store"],
                }
                for store in qa["stores"]
            },
        },
        "dialogsum_beam_posterior_mean": {
            "bertscore": beam_mean["bertscore"],
            "methods": {store["method"]: store["means"] for store in beam_mean["stores"]},
        },
        "dialogsum_beam_posterior_draws": {
            "bertscore": beam_draws["bertscore"],
            "methods": {
                store["method"]: {"samples_per_example": store["samples_per_example"], "means": store["means"]}
                for store in beam_draws["stores"]
            },
            "figures": beam_draws["figures"],
        },
        "score_folders": {
            "triviaqa": str(work / "scores" / "triviaqa"),
            "dialogsum_beam_posterior_mean": str(work / "scores" / "dialogsum_beam_mean"),
            "dialogsum_beam_posterior_draws": str(work / "scores" / "dialogsum_beam_draws"),
        },
        "wall_time_s": time.perf_counter() - began,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results -> {out}")


if __name__ == "__main__":
    main()
