"""``bayespeft.calibrate``: fit a post-hoc temperature on held-out data and store it as ``temperature.json``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import write_json_atomic
from ..data.records import SPLITS
from ..errors import ConfigError
from ..rundir import check_writable
from ..runs import calibrate_temperature, fit_examples, load_trained_run, trained_session

__all__ = ["calibrate"]


def calibrate(
    run_dir: str | Path,
    *,
    overrides: Sequence[str] = (),
    fit_split: str = "validation",
    max_fit_examples: int | None = None,
    fit_offset: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit a temperature for a finished run, as ``bayespeft calibrate`` does; returns the temperature.json payload.

    The temperature is fitted on ``fit_split`` (never the split you report), skipping its first
    ``fit_offset`` examples and using at most ``max_fit_examples``; any method's run works.
    """
    run, config = load_trained_run(run_dir, overrides)
    check_writable(run.root, "--run-dir")
    if fit_split not in SPLITS:
        raise ConfigError(f"--fit-split: unknown split {fit_split!r} (choose one of {', '.join(SPLITS)})")
    examples = fit_examples(config, fit_split, fit_offset, max_fit_examples)
    session = trained_session(run, config)
    payload = calibrate_temperature(session, config, examples, fit_split, fit_offset, progress)
    if session.accelerator.is_main_process:
        write_json_atomic(run.root / "temperature.json", payload)
    return payload
