"""The run directory: one folder per run, with a fixed layout.

config.yaml          resolved configuration
metrics.json         final evaluation metrics and training facts
predictions.jsonl    per-example predictions of the final evaluation
train_log.jsonl      one line per optimisation step (NLL, KL, weighted KL, ELBO, lr, pi)
adapter/             peft adapter (means and variances) + bayespeft_method.json
checkpoints/         resumable training checkpoints (checkpoint-<step>/)
plots/               reliability.png, training.png
eval/<name>/         later `bayespeft evaluate` results
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import RunDirError


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def train_log(self) -> Path:
        return self.root / "train_log.jsonl"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def eval_dir(self, name: str) -> Path:
        return self.root / "eval" / name

    def check_new(self, overwrite: bool, resume: bool) -> None:
        """Refuse an existing non-empty folder unless overwriting or resuming (nothing is written)."""
        if resume:
            if not self.config.is_file():
                raise RunDirError(f"{self.root}: nothing to resume (no config.yaml); start the run without --resume")
            return
        if self.root.exists() and not self.root.is_dir():
            raise RunDirError(f"{self.root}: exists and is not a directory")
        if self.root.is_dir() and any(self.root.iterdir()) and not overwrite:
            raise RunDirError(
                f"{self.root}: run directory already exists; pass --overwrite to replace it or --resume to continue it"
            )

    def create(self, overwrite: bool) -> None:
        """Make the folder, clearing an old run only when ``overwrite`` (call after validation)."""
        if overwrite and self.root.is_dir():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.plots.mkdir(exist_ok=True)

    def require_trained(self) -> None:
        """A run that can be evaluated: config and adapter present."""
        for path in (self.config, self.adapter / "adapter_model.safetensors"):
            if not path.exists():
                raise RunDirError(f"{self.root}: not a finished bayespeft run ({path.name} missing)")
