"""``bayespeft.ood``: evaluate a trained run on shifted datasets and score OOD detection against its own eval split."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import read_json, write_json_atomic, write_text_atomic
from ..config import load_config
from ..errors import ConfigError
from ..experiments.report import load_predictions
from ..metrics.ood import ood_detection
from ..runs import evaluate_into, fresh_result_dir, load_trained_run, result_name, trained_session
from ..training import load_examples

__all__ = ["SUMMARY_COLUMNS", "ood", "parse_dataset_list"]

#: The columns of the OOD summary table.
SUMMARY_COLUMNS = (
    "dataset",
    "split",
    "role",
    "acc",
    "ece",
    "nll",
    "brier",
    "entropy",
    "mutual_information",
    "auroc_entropy",
    "auroc_max_prob",
    "auroc_mutual_information",
)


def parse_dataset_list(value: str) -> list[tuple[str, str]]:
    """``a,b@test`` -> [(a, validation), (b, test)]; MMLU defaults to its test split."""
    targets = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        name, _, split = item.partition("@")
        targets.append((name, split or ("test" if name.lower().startswith("mmlu") else "validation")))
    if not targets:
        raise ConfigError("--datasets: name at least one dataset, e.g. arc_challenge,mmlu:college_physics@test")
    return targets


def ood(
    run_dir: str | Path,
    datasets: str,
    *,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score OOD detection of a finished run, as ``bayespeft ood`` does; returns the summary.

    ``datasets`` is ``name[@split],...``; each is evaluated into ``<run>/eval/ood_<name>``, and
    the summary (``method``, ``rows``, the Markdown ``table``) into ``ood_summary_nN``.
    """
    run, config = load_trained_run(run_dir, overrides)
    targets = parse_dataset_list(datasets)
    outs = [
        fresh_result_dir(run, "ood_" + result_name(d, s, config.eval.n_samples), overwrite, "--datasets")
        for d, s in targets
    ]
    summary_dir = fresh_result_dir(run, f"ood_summary_n{config.eval.n_samples}", overwrite, "--datasets")
    jobs = []
    for (dataset, split), out in zip(targets, outs, strict=True):
        data = dataclasses.replace(config.data, dataset=dataset, eval_split=split)
        target = dataclasses.replace(config, data=data)
        try:
            examples = load_examples(target, split, data.max_eval_examples)
        except ConfigError as exc:
            raise ConfigError(f"--datasets: {exc}") from None
        jobs.append((target, examples, out))
    session = trained_session(run, config)
    saved = read_json(run.metrics)
    trained = load_config(run.config)
    if saved["n_samples"] == config.eval.n_samples and (trained.eval, trained.data) == (config.eval, config.data):
        in_payload, in_records = saved, load_predictions(run.root / "predictions.jsonl")  # the run's own
    else:
        name = "ood_in_" + result_name(config.data.dataset, config.data.eval_split, config.eval.n_samples)
        in_dir = fresh_result_dir(run, name, True, "data.dataset")
        in_examples = load_examples(config, config.data.eval_split, config.data.max_eval_examples)
        in_payload = evaluate_into(session, config, in_examples, in_dir, progress)
        in_records = load_predictions(in_dir / "predictions.jsonl")
    rows = [
        {
            "dataset": config.data.dataset,
            "split": config.data.eval_split,
            "role": "in-distribution",
            **in_payload["metrics"],
        }
    ]
    for target, examples, out in jobs:
        payload = evaluate_into(session, target, examples, out, progress)
        detection = ood_detection(in_records, load_predictions(out / "predictions.jsonl"))
        payload["ood_detection"] = detection
        if session.accelerator.is_main_process:
            write_json_atomic(out / "metrics.json", payload)
        rows.append(
            {
                "dataset": target.data.dataset,
                "split": target.data.eval_split,
                "role": "OOD",
                **payload["metrics"],
                **detection,
            }
        )
    table = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    for row in rows:
        cells = [row.get(c, "") for c in SUMMARY_COLUMNS]
        table.append("| " + " | ".join(f"{c:.4f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    markdown = "\n".join(table) + "\n"
    if session.accelerator.is_main_process:
        summary_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(summary_dir / "summary.json", {"method": config.method.name, "rows": rows})
        write_text_atomic(summary_dir / "summary.md", markdown)
    return {"method": config.method.name, "rows": rows, "table": markdown, "output_dir": str(summary_dir)}
