"""Why Laplace changes cloze answers: the GLM logit std of a choice against its length in tokens.

For a Laplace run with cloze multiple-choice scoring (docs/results.md, the ARC-Easy section of
issue 3's benchmark 1):
  1. the std of each choice's class logit under the linearised (GLM) predictive, on the first
     --max-examples evaluation questions, grouped by the choice's token count;
  2. over the run's evaluated questions, how often the run, a reference run (its MLE source) and
     the gold answer are the strictly longest or strictly shortest choice of their question, and how
     many of the reference's answers the run changes (to right, to wrong).

    python benchmarks/cloze_laplace_length.py --run-dir runs/all_methods/arc_easy/laplace \\
        --reference runs/all_methods/arc_easy/mle --max-examples 40 \\
        --out benchmarks/results/arc_easy_laplace_length.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from bayespeft.config import load_config
from bayespeft.errors import DataError, RunDirError, exit_on_bad_input
from bayespeft.experiments.report import load_predictions
from bayespeft.methods.laplace import LaplaceLora
from bayespeft.tasks.multiple_choice import ClozeMultipleChoiceTask
from bayespeft.training import build_session, load_examples

LONGEST_GROUP = 8  # choices of this many tokens or more share one row


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a finished laplace run with cloze scoring")
    parser.add_argument("--reference", type=Path, required=True, help="a run on the same questions (its MLE source)")
    parser.add_argument("--max-examples", type=int, default=40, help="questions whose GLM variance is computed")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def logit_std_by_length(session, encoded: list) -> dict[int, list[float]]:
    """GLM logit std of every choice of the ``encoded`` questions, keyed by min(token count, LONGEST_GROUP)."""
    task, model, method = session.task, session.model, session.method
    batch_size = session.config.eval.batch_size
    stds: dict[int, list[float]] = defaultdict(list)
    model.eval()
    for start in range(0, len(encoded), batch_size):
        items = encoded[start : start + batch_size]
        _, f_var = method.glm(model, task, task.collate(items))
        for row, item in enumerate(items):
            for choice, length in enumerate(item.choice_lengths):
                std = f_var[row, choice, choice].clamp_min(0).sqrt().item()
                stds[min(length, LONGEST_GROUP)].append(std)
    return stds


def strictly(lengths: list[int], choice: int, better) -> bool:
    """Whether ``choice`` beats every other choice of its question on length under ``better``."""
    return all(better(lengths[choice], n) for k, n in enumerate(lengths) if k != choice)


def answer_changes(records: dict[str, list[dict]]) -> dict[str, int]:
    """Answers the run changes from the reference's: how many, and how many become right or wrong."""
    reference = {r["id"]: r for r in records["reference"]}
    changed = [(r, reference[r["id"]]) for r in records["run"] if r["prediction"] != reference[r["id"]]["prediction"]]
    return {
        "changed": len(changed),
        "to_right": sum(run["correct"] and not ref["correct"] for run, ref in changed),
        "to_wrong": sum(ref["correct"] and not run["correct"] for run, ref in changed),
    }


def length_picks(lengths: dict[str, list[int]], records: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """How often each run's prediction (and the gold answer) is its question's strictly longest / shortest choice."""
    picks = {name: [(r["id"], r["prediction"]) for r in rows] for name, rows in records.items()}
    picks["gold"] = [(r["id"], r["label"]) for r in records["run"]]
    table = {}
    for name, chosen in picks.items():
        missing = [uid for uid, _ in chosen if uid not in lengths]
        if missing:
            raise DataError(f"{name}: question {missing[0]!r} is not among the run's evaluation questions")
        table[name] = {
            "questions": len(chosen),
            "longest": sum(strictly(lengths[uid], k, int.__gt__) for uid, k in chosen),
            "shortest": sum(strictly(lengths[uid], k, int.__lt__) for uid, k in chosen),
            "mean_tokens": sum(lengths[uid][k] for uid, k in chosen) / len(chosen),
        }
    return table


def main() -> None:
    args = parse_args()
    config = load_config(args.run_dir / "config.yaml")
    session = build_session(config)
    if not isinstance(session.method, LaplaceLora) or not isinstance(session.task, ClozeMultipleChoiceTask):
        raise RunDirError(f"--run-dir {args.run_dir}: needs a laplace run with data.mc_scoring=cloze")
    session.method.load_adapter(session.model, args.run_dir / "adapter")
    examples = load_examples(config, config.data.eval_split, config.data.max_eval_examples)
    encoded = session.task.encode(examples)
    stds = logit_std_by_length(session, encoded[: args.max_examples])
    lengths = {example.uid: item.choice_lengths for example, item in zip(examples, encoded, strict=True)}
    records = {
        name: load_predictions(run / "predictions.jsonl")
        for name, run in (("run", args.run_dir), ("reference", args.reference))
    }
    picks = length_picks(lengths, records)
    changes = answer_changes(records)

    print(f"GLM logit std by choice length ({args.max_examples} questions of {config.data.dataset})")
    print(f"{'tokens':>8} {'choices':>8} {'mean std':>9}")
    for length in sorted(stds):
        label = f">={length}" if length == LONGEST_GROUP else str(length)
        print(f"{label:>8} {len(stds[length]):>8} {sum(stds[length]) / len(stds[length]):>9.3f}")
    print(f"\n{'picks':>10} {'questions':>10} {'longest':>8} {'shortest':>9} {'mean tokens':>12}")
    for name, row in picks.items():
        print(f"{name:>10} {row['questions']:>10} {row['longest']:>8} {row['shortest']:>9} {row['mean_tokens']:>12.2f}")
    print(
        f"answers changed from the reference: {changes['changed']}"
        f" ({changes['to_right']} to right, {changes['to_wrong']} to wrong)"
    )

    result = {
        "args": {key: str(value) for key, value in vars(args).items()},
        "prior_precision": session.method.fitted_prior_precision,
        "logit_std_by_tokens": {
            str(k): {"choices": len(v), "mean_std": sum(v) / len(v)} for k, v in sorted(stds.items())
        },
        "picks": picks,
        "answer_changes": changes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    exit_on_bad_input(main)
