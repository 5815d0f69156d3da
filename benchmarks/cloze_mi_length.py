"""Does a run's mutual information track the length of the answer choices? (cloze scoring, `bayespeft ood` runs)

For each run directory with an OOD evaluation (``eval/ood_summary_n<N>``): the mean token count of
each dataset's choices (as the cloze task tokenises them) and its share of one-token choices, then,
over every evaluated question, the Pearson correlation between a question's mutual information and
the mean token count of its choices, and the mean MI in each quarter of questions sorted by that count.

Is anything left once length is accounted for? A line log MI = a + b log(tokens) is fitted on the
in-distribution questions only (no OOD label is used), and each OOD set's AUROC is computed from the
residuals as well as from the raw MI: a residual AUROC near 0.5 means the MI carried no shift signal
beyond choice length.

With ``--base-run`` (the backbone alone, evaluated by ``bayespeft ood`` with N = 0) and
``--adapter-run`` (the deterministic fine-tuned run, e.g. MLE), it also measures where the
fine-tuning acts: per question, the RMS change of the centred answer log-probabilities from base to
adapter, its AUROC as an OOD score, and how each run's MI follows it.

    python benchmarks/cloze_mi_length.py runs/all_methods/obqa/{ensemble,laplace,blob} \\
        --base-run runs/obqa_zeroshot --adapter-run runs/all_methods/obqa/mle \\
        --out benchmarks/results/ood_obqa_mi_length.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor

from bayespeft.backbones import load_tokenizer, resolve_model
from bayespeft.config import load_config
from bayespeft.errors import DataError, RunDirError, exit_on_bad_input
from bayespeft.experiments.report import load_predictions
from bayespeft.metrics.ood import auroc
from bayespeft.rundir import RunDir
from bayespeft.tasks.multiple_choice import ClozeMultipleChoiceTask
from bayespeft.training import load_examples

QUARTERS = 4
FLOOR = 1e-12  # keeps a log finite for a question whose samples all agree (MI 0) or a probability that underflowed
Key = tuple[str, str]  # (dataset, example id)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run directories evaluated by `bayespeft ood`")
    parser.add_argument("--n-samples", type=int, default=10, help="N of the OOD evaluations to read")
    parser.add_argument("--base-run", type=Path, help="the backbone alone, evaluated by `bayespeft ood` with N = 0")
    parser.add_argument("--adapter-run", type=Path, help="the deterministic fine-tuned run (read at --n-samples)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if (args.base_run is None) != (args.adapter_run is None):
        parser.error("--base-run and --adapter-run go together")
    return args


def ood_summary(run: RunDir, n_samples: int) -> dict:
    path = run.eval_dir(f"ood_summary_n{n_samples}") / "summary.json"
    if not path.is_file():
        raise RunDirError(f"{run.root}: no OOD evaluation with N = {n_samples} ({path} missing)")
    return json.loads(path.read_text())


def in_distribution_of(summary: dict) -> str:
    return next(row["dataset"] for row in summary["rows"] if row["role"] == "in-distribution")


def ood_records(run: RunDir, n_samples: int) -> dict[Key, dict]:
    """Every prediction record of the run's OOD evaluation with N = n_samples, in- and out-of-distribution."""
    records = {}
    for directory in sorted(run.root.glob(f"eval/ood_*_n{n_samples}")):
        if not directory.name.startswith("ood_summary"):
            for record in load_predictions(directory / "predictions.jsonl"):
                records[(record["dataset"], record["id"])] = record
    if not records:
        raise RunDirError(f"{run.root}: no OOD predictions with N = {n_samples} (eval/ood_*_n{n_samples} missing)")
    return records


def choice_lengths(run: RunDir, summary: dict) -> dict[Key, list[int]]:
    """Token counts of every choice of every question the run's OOD evaluation scored (the same for every run)."""
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


def adapter_effect(base: dict[Key, dict], tuned: dict[Key, dict]) -> dict[Key, float]:
    """RMS change of each question's centred answer log-probabilities from the base model to the adapter."""
    effects = {}
    for key, record in tuned.items():
        if key not in base:
            raise DataError(f"--base-run has no prediction for {key[0]} question {key[1]}")
        before = torch.tensor(base[key]["probs"], dtype=torch.float64)
        after = torch.tensor(record["probs"], dtype=torch.float64)
        used = (before > 0) | (after > 0)  # class slots past a question's choices hold probability 0 in both
        change = after[used].clamp_min(FLOOR).log() - before[used].clamp_min(FLOOR).log()
        effects[key] = (change - change.mean()).pow(2).mean().sqrt().item()
    return effects


def residual_auroc(score: Tensor, covariate: Tensor, datasets: list[str], in_distribution: str) -> dict:
    """AUROC per OOD set of a log score and of its residual after a line in the covariate fitted on ID questions."""
    is_id = torch.tensor([name == in_distribution for name in datasets])
    design = torch.stack([torch.ones_like(covariate), covariate], dim=1)
    fit = torch.linalg.lstsq(design[is_id], score[is_id].unsqueeze(1)).solution.squeeze(1)
    residual = score - design @ fit
    per_dataset = {}
    for name in dict.fromkeys(datasets):
        if name != in_distribution:
            is_ood = torch.tensor([d == name for d in datasets])
            per_dataset[name] = {
                "auroc": auroc(score[is_id], score[is_ood]),
                "auroc_residual": auroc(residual[is_id], residual[is_ood]),
            }
    return {"fit": {"intercept": fit[0].item(), "slope": fit[1].item()}, "datasets": per_dataset}


def pearson(x: Tensor, y: Tensor) -> float:
    return torch.corrcoef(torch.stack([x, y]))[0, 1].item()


def mean_tokens(lengths: dict[Key, list[int]], keys: list[Key]) -> Tensor:
    """Mean token count of each question's choices, in the order of ``keys``."""
    return torch.tensor([sum(lengths[k]) / len(lengths[k]) for k in keys], dtype=torch.float64)


def log_effects(effects: dict[Key, float], keys: list[Key]) -> Tensor:
    return torch.tensor([effects[k] for k in keys], dtype=torch.float64).clamp_min(FLOOR).log()


def dataset_lengths(lengths: dict[Key, list[int]]) -> dict[str, dict[str, float]]:
    """Mean token count of each dataset's choices and its share of one-token choices."""
    counts: dict[str, list[int]] = {}
    for (dataset, _), c in lengths.items():
        counts.setdefault(dataset, []).extend(c)
    return {
        name: {"mean_tokens": sum(c) / len(c), "one_token_share": sum(n == 1 for n in c) / len(c)}
        for name, c in counts.items()
    }


def analyse(
    run: RunDir, n_samples: int, lengths: dict[Key, list[int]], effects: dict[Key, float] | None
) -> dict[str, object]:
    in_distribution = in_distribution_of(ood_summary(run, n_samples))
    records = ood_records(run, n_samples)
    keys = sorted(records)
    unknown = [key for key in keys if key not in lengths]
    if unknown:
        raise DataError(f"{run.root}: {unknown[0][0]} question {unknown[0][1]} is not among the first run's questions")
    datasets = [key[0] for key in keys]
    tokens = mean_tokens(lengths, keys)
    mi = torch.tensor([records[k]["mutual_information"] for k in keys], dtype=torch.float64)
    log_mi = mi.clamp_min(FLOOR).log()
    order = tokens.argsort(stable=True)
    quarter = len(keys) // QUARTERS
    result = {
        "questions": len(keys),
        "pearson_r": pearson(tokens, mi),
        "quarters": [
            {
                "mean_tokens": tokens[order[q * quarter : (q + 1) * quarter]].mean().item(),
                "mean_mi": mi[order[q * quarter : (q + 1) * quarter]].mean().item(),
            }
            for q in range(QUARTERS)
        ],
        "length_adjusted": residual_auroc(log_mi, tokens.log(), datasets, in_distribution),
    }
    if effects is not None:
        effect = log_effects(effects, keys)
        result["pearson_r_log_mi_log_adapter_effect"] = pearson(log_mi, effect)
        result["effect_adjusted"] = residual_auroc(log_mi, effect, datasets, in_distribution)
    return result


def effect_summary(effects: dict[Key, float], in_distribution: str) -> dict[str, object]:
    """Mean, median and OOD-detection AUROC of the adapter effect per dataset."""
    by_dataset: dict[str, list[float]] = {}
    for (dataset, _), value in effects.items():
        by_dataset.setdefault(dataset, []).append(value)
    return {
        name: {
            "mean": sum(values) / len(values),
            "median": torch.tensor(values).median().item(),
            **({} if name == in_distribution else {"auroc": auroc(by_dataset[in_distribution], values)}),
        }
        for name, values in by_dataset.items()
    }


def print_adjusted(label: str, adjusted: dict) -> None:
    aurocs = " / ".join(f"{n} {v['auroc']:.3f} -> {v['auroc_residual']:.3f}" for n, v in adjusted["datasets"].items())
    print(f"  log MI ~ {adjusted['fit']['slope']:.2f} x {label} (ID fit); AUROC from MI -> from its residual: {aurocs}")


def main() -> None:
    args = parse_args()
    effects = None
    result: dict[str, object] = {"args": {k: str(v) for k, v in vars(args).items()}}
    first = RunDir(args.runs[0])
    lengths = choice_lengths(first, ood_summary(first, args.n_samples))
    result["datasets"] = dataset_lengths(lengths)
    if args.base_run is not None:
        adapter = RunDir(args.adapter_run)
        effects = adapter_effect(ood_records(RunDir(args.base_run), 0), ood_records(adapter, args.n_samples))
        in_distribution = in_distribution_of(ood_summary(adapter, args.n_samples))
        result["adapter_effect"] = effect_summary(effects, in_distribution)
        for name, stats in result["adapter_effect"].items():
            detection = f", AUROC as an OOD score {stats['auroc']:.3f}" if "auroc" in stats else ""
            print(f"adapter effect on {name}: median {stats['median']:.3f}, mean {stats['mean']:.3f}{detection}")
        keys = sorted(effects.keys() & lengths.keys())
        tokens = mean_tokens(lengths, keys)
        effect = log_effects(effects, keys)
        entangled = pearson(effect, tokens.log())
        result["pearson_r_log_adapter_effect_log_tokens"] = entangled
        print(f"Pearson r(log adapter effect, log choice tokens) = {entangled:.2f}")
    rows = {path.name: analyse(RunDir(path), args.n_samples, lengths, effects) for path in args.runs}
    for name, row in rows.items():
        quarters = " / ".join(f"{q['mean_mi']:.3g} ({q['mean_tokens']:.1f} tok)" for q in row["quarters"])
        print(f"{name}: {row['questions']} questions, Pearson r(MI, choice tokens) = {row['pearson_r']:.2f}")
        print(f"  mean MI by quarter of choice length: {quarters}")
        print_adjusted("log tokens", row["length_adjusted"])
        if effects is not None:
            print(f"  Pearson r(log MI, log adapter effect) = {row['pearson_r_log_mi_log_adapter_effect']:.2f}")
            print_adjusted("log adapter effect", row["effect_adjusted"])
    for dataset, stats in result["datasets"].items():
        print(f"{dataset}: {stats['mean_tokens']:.2f} tokens per choice, {stats['one_token_share']:.0%} one token")
    result["runs"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    exit_on_bad_input(main)
