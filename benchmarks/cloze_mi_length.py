"""Does a run's mutual information track the length of the answer choices? (cloze scoring, `bayespeft ood` runs)

For each run directory with an OOD evaluation (``eval/ood_summary_n<N>``): the mean token count of
each dataset's choices (as the cloze task tokenises them) and its share of one-token choices, then,
over every evaluated question, the Pearson correlation between a question's mutual information and
the mean token count of its choices, and the mean MI in each quarter of questions sorted by that count.

    python benchmarks/cloze_mi_length.py runs/all_methods/obqa/{ensemble,laplace,blob} \\
        --out benchmarks/results/ood_obqa_mi_length.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bayespeft.backbones import load_tokenizer, resolve_model
from bayespeft.config import load_config
from bayespeft.report import load_predictions
from bayespeft.rundir import RunDir
from bayespeft.tasks.multiple_choice import ClozeMultipleChoiceTask
from bayespeft.training import load_examples

QUARTERS = 4


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run directories evaluated by `bayespeft ood`")
    parser.add_argument("--n-samples", type=int, default=10, help="N of the OOD evaluation to read")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def choice_lengths(run: RunDir, summary: dict) -> dict[tuple[str, str], list[int]]:
    """Token counts of every choice of every evaluated question, keyed by (dataset, example id)."""
    config = load_config(run.config)
    path, kind = resolve_model(config.model)
    task = ClozeMultipleChoiceTask(load_tokenizer(path, kind, config.model.revision), config.data.max_length)
    lengths = {}
    for row in summary["rows"]:
        config.data.dataset = row["dataset"]
        examples = load_examples(config, row["split"], row["num_examples"])
        for example, item in zip(examples, task.encode(examples), strict=True):
            lengths[(row["dataset"], example.uid)] = item.choice_lengths
    return lengths


def analyse(run: RunDir, n_samples: int) -> dict[str, object]:
    summary_path = run.eval_dir(f"ood_summary_n{n_samples}") / "summary.json"
    if not summary_path.is_file():
        raise SystemExit(f"{run.root}: no OOD evaluation with N = {n_samples} ({summary_path} missing)")
    lengths = choice_lengths(run, json.loads(summary_path.read_text()))
    datasets: dict[str, list[int]] = {}
    for (dataset, _), counts in lengths.items():
        datasets.setdefault(dataset, []).extend(counts)
    per_dataset = {
        name: {"mean_tokens": sum(c) / len(c), "one_token_share": sum(n == 1 for n in c) / len(c)}
        for name, c in datasets.items()
    }
    points = []
    for directory in sorted(run.root.glob(f"eval/ood_*_n{n_samples}")):
        if directory.name.startswith("ood_summary"):
            continue
        for record in load_predictions(directory / "predictions.jsonl"):
            counts = lengths[(record["dataset"], record["id"])]
            points.append((sum(counts) / len(counts), record["mutual_information"]))
    points.sort()
    tokens, mi = torch.tensor(points, dtype=torch.float64).T
    quarter = len(points) // QUARTERS
    return {
        "questions": len(points),
        "pearson_r": torch.corrcoef(torch.stack([tokens, mi]))[0, 1].item(),
        "quarters": [
            {
                "mean_tokens": tokens[q * quarter : (q + 1) * quarter].mean().item(),
                "mean_mi": mi[q * quarter : (q + 1) * quarter].mean().item(),
            }
            for q in range(QUARTERS)
        ],
        "datasets": per_dataset,
    }


def main() -> None:
    args = parse_args()
    rows = {path.name: analyse(RunDir(path), args.n_samples) for path in args.runs}
    for name, row in rows.items():
        quarters = " / ".join(f"{q['mean_mi']:.3g} ({q['mean_tokens']:.1f} tok)" for q in row["quarters"])
        print(f"{name}: {row['questions']} questions, Pearson r(MI, choice tokens) = {row['pearson_r']:.2f}")
        print(f"  mean MI by quarter of choice length: {quarters}")
    for dataset, stats in next(iter(rows.values()))["datasets"].items():
        print(f"{dataset}: {stats['mean_tokens']:.2f} tokens per choice, {stats['one_token_share']:.0%} one token")
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
