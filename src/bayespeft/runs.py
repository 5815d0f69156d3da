"""The shared run layer: load a trained run, rebuild its session, evaluate into a results folder, fit a temperature.

Every command that works on a finished run (evaluate, calibrate, ood, compare, sample) goes through
these functions, so a trained run is read, checked and evaluated the same way everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import load_training_checkpoint, write_json_atomic
from .config import RunConfig, load_config
from .errors import ConfigError
from .evaluation import check_finite, predict
from .evaluation import evaluate as evaluate_examples
from .methods import Method
from .rundir import RunDir, check_writable
from .training import Session, build_session, load_examples, restore_trainable, run_summary

__all__ = [
    "calibrate_temperature",
    "evaluate_into",
    "fit_examples",
    "fresh_result_dir",
    "load_checkpoint_weights",
    "load_trained_run",
    "result_name",
    "trained_session",
]


def load_trained_run(run_dir: str | Path, overrides: Sequence[str] = ()) -> tuple[RunDir, RunConfig]:
    """A finished run and its saved config with ``overrides`` applied."""
    run = RunDir(Path(run_dir))
    run.require_trained()
    return run, load_config(run.config, list(overrides))


def trained_session(run: RunDir, config: RunConfig) -> Session:
    """A session holding the run's trained adapter."""
    session = build_session(config)
    session.method.load_adapter(session.model, run.adapter)
    return session


def load_checkpoint_weights(session: Session, run: RunDir, step: int) -> None:
    """Replace the adapter's trained weights by those of a training checkpoint (trained methods only)."""
    if type(session.method).fit_posthoc is not Method.fit_posthoc:
        raise ConfigError(f"--checkpoint: {session.method.name} is fitted after training; evaluate its final adapter")
    directory = run.checkpoints / f"checkpoint-{step}"
    if not directory.is_dir():
        raise ConfigError(
            f"--checkpoint: {directory} does not exist (checkpoints are kept every train.checkpoint_every)"
        )
    restore_trainable(session.model, load_training_checkpoint(directory).trainable, directory)


def result_name(dataset: str, split: str, n_samples: int) -> str:
    """A results folder name: the dataset (``:`` and path characters as ``-``), split and N."""
    return re.sub(r"[^A-Za-z0-9_.+=@-]", "-", f"{dataset}_{split}_n{n_samples}").lstrip(".")


def fresh_result_dir(run: RunDir, name: str, overwrite: bool, flag: str) -> Path:
    """``<run>/eval/<name>``, refused when it holds results and ``overwrite`` is off (``flag``: what named it)."""
    out = run.eval_dir(name, flag)
    check_writable(out, "--run-dir")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: results exist; pass --overwrite or choose another --name")
    return out


def evaluate_into(
    session: Session, config: RunConfig, examples: list, out: Path, progress: bool, extra: dict | None = None
) -> dict[str, Any]:
    """Evaluate ``examples`` and write metrics.json, predictions.jsonl and the diagram into ``out``."""
    title = f"{config.method.name} on {config.data.dataset} ({config.data.eval_split}), N={config.eval.n_samples}"
    scores = evaluate_examples(
        session.model,
        session.method,
        session.task,
        examples,
        config.eval,
        session.accelerator,
        output_dir=out,
        title=title,
        progress=progress,
    )
    payload = {**run_summary(config, scores, examples, config.data.eval_split), **(extra or {})}
    if session.accelerator.is_main_process:
        write_json_atomic(out / "metrics.json", payload)
    return payload


def fit_examples(config: RunConfig, split: str, offset: int, limit: int | None) -> list:
    """The examples of ``split`` after its first ``offset`` (e.g. those trained on), at most ``limit`` of them."""
    if offset < 0:
        raise ConfigError(f"--fit-offset: must be >= 0 (got {offset})")
    if limit is not None and limit < 1:
        raise ConfigError(f"--max-fit-examples: must be >= 1 (got {limit})")
    examples = load_examples(config, split, None if limit is None else offset + limit)[offset:]
    if not examples:
        raise ConfigError(f"--fit-offset: {offset} skips every example of split {split}")
    return examples


def calibrate_temperature(
    session: Session, config: RunConfig, examples: list, split: str, offset: int, progress: bool
) -> dict[str, Any]:
    """Fit a temperature on held-out ``examples`` with the session's trained adapter: the temperature.json payload."""
    from .calibration import apply_temperature, fit_temperature
    from .metrics import negative_log_likelihood
    from .predictive import posterior_predictive_from_probs

    encoded = session.task.encode(examples)
    sample_probs, labels = predict(
        session.model, session.method, session.task, encoded, config.eval, session.accelerator, progress
    )
    check_finite(sample_probs, "predicted probabilities")
    temperature = fit_temperature(sample_probs, labels)
    before = negative_log_likelihood(posterior_predictive_from_probs(sample_probs), labels)
    after = negative_log_likelihood(
        posterior_predictive_from_probs(apply_temperature(sample_probs, temperature)), labels
    )
    return {
        "temperature": temperature,
        "fit_dataset": config.data.dataset,
        "fit_split": split,
        "fit_offset": offset,
        "num_examples": len(examples),
        "n_samples": config.eval.n_samples,
        "nll_before": before,
        "nll_after": after,
    }
