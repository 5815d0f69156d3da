"""``bayespeft.evaluate``: score a trained run (or one of its checkpoints) on any dataset into ``<run>/eval/<name>``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..runs import (
    evaluate_into,
    fresh_result_dir,
    load_checkpoint_weights,
    load_trained_run,
    result_name,
    trained_session,
)
from ..training import load_examples

__all__ = ["evaluate"]


def evaluate(
    run_dir: str | Path,
    *,
    overrides: Sequence[str] = (),
    name: str | None = None,
    overwrite: bool = False,
    checkpoint: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a finished run, as ``bayespeft evaluate`` does; returns the metrics payload.

    ``overrides`` change the run's saved config (another dataset, N, temperature); results go to
    ``<run_dir>/eval/<name>`` (default ``dataset_split_nN``), with the payload's ``output_dir``.
    ``checkpoint`` evaluates the weights of ``checkpoints/checkpoint-<step>`` instead.
    """
    run, config = load_trained_run(run_dir, overrides)
    if name is not None:
        out = fresh_result_dir(run, name, overwrite, "--name")
    else:
        default = result_name(config.data.dataset, config.data.eval_split, config.eval.n_samples)
        out = fresh_result_dir(run, default, overwrite, "data.dataset")
    examples = load_examples(config, config.data.eval_split, config.data.max_eval_examples)
    session = trained_session(run, config)
    extra = None
    if checkpoint is not None:
        load_checkpoint_weights(session, run, checkpoint)
        extra = {"checkpoint_step": checkpoint}
    payload = evaluate_into(session, config, examples, out, progress, extra)
    return {**payload, "output_dir": str(out)}
