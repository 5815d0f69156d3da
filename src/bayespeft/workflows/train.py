"""``bayespeft.train``: fine-tune one run, then evaluate it and write its calibration report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import RunConfig, load_config
from ..errors import ConfigError
from ..rundir import RunDir
from ..training import Trainer

__all__ = ["train"]


def train(
    config: RunConfig | str | Path | Mapping[str, Any] | None,
    output_dir: str | Path,
    *,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    resume: bool = False,
    stop_after_steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train into ``output_dir``, as ``bayespeft train`` does; returns the run's metrics payload.

    ``config`` is a RunConfig, a YAML file or mapping composed with ``overrides`` (groups and
    dotted keys, as on the command line), or None for the defaults. ``resume`` continues the run
    in ``output_dir`` with its own config.yaml (``config`` must be None; overrides may change
    train.lr). The payload's ``status`` is ``"paused"`` after ``stop_after_steps``.
    """
    if resume and not overwrite:
        if config is not None:
            raise ConfigError("--config: --resume continues the run's own config.yaml; change train.lr with --lr")
        run = RunDir(Path(output_dir))
        run.check_new(overwrite=False, resume=True)
        config = load_config(run.resume_target().config, overrides)
    elif isinstance(config, RunConfig):
        config = load_config(config.to_dict(), overrides) if overrides else config
    else:
        config = load_config(config, overrides)
    trainer = Trainer(
        config,
        output_dir,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        stop_after_steps=stop_after_steps,
    )
    return trainer.run_training()
