"""The run directory: one folder per run, with a fixed layout.

bayespeft_run.json   marker: this folder is a bayespeft run (written when the folder is created)
config.yaml          resolved configuration
metrics.json         final evaluation metrics and training facts
predictions.jsonl    per-example predictions of the final evaluation
train_log.jsonl      one line per optimisation step (NLL, KL, weighted KL, ELBO, lr, pi)
adapter/             peft adapter (means and variances) + bayespeft_method.json
checkpoints/         resumable training checkpoints (checkpoint-<step>/)
plots/               reliability.png, training.png
eval/<name>/         later `bayespeft evaluate` results

``--overwrite`` only ever replaces a folder that is a bayespeft run and holds nothing else: one
with the marker, or (runs made before the marker existed) one with config.yaml plus metrics.json,
adapter/ or train_log.jsonl. Every entry must belong to the layout above (or be the tracker folder
its config names); anything foreign, the current directory (or a folder holding it), the home
directory and a repository root (a folder with ``.git``) are refused. The new run is built in a
staging folder beside the old one, ``.<name>.bayespeft-new``, and swapped in only when it has
finished, so a rerun that fails or is killed leaves the old run as it was; ``--resume`` continues
a staged rerun.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from .errors import ConfigError, RunDirError

#: The marker file every run directory gets when bayespeft creates it.
MARKER = "bayespeft_run.json"
#: Top-level entries bayespeft writes into a run directory.
LAYOUT = frozenset(
    {
        MARKER,
        "config.yaml",
        "metrics.json",
        "predictions.jsonl",
        "train_log.jsonl",
        "adapter",
        "checkpoints",
        "plots",
        "eval",
        "temperature.json",
        "reliability.png",
    }
)
#: What a run made before the marker existed holds besides config.yaml (at least one of them).
_LEGACY_EVIDENCE = ("metrics.json", "adapter", "train_log.jsonl")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_+=@-][A-Za-z0-9_.+=@-]*")


def plain_name(name: str, flag: str) -> str:
    """``name`` when it is a plain file name (no separator, not ``.``/``..``, no leading dot), else ConfigError."""
    if not _PLAIN_NAME.fullmatch(name) or len(name) > 200:
        raise ConfigError(
            f"{flag}: {name!r} is not a plain name (letters, digits and _ . + = @ -, no path separators or leading dot)"
        )
    return name


def path_flag(flag: str) -> Callable[[str], Path]:
    """An argparse ``type`` for a path flag: refuses an empty value (it would mean the current directory)."""

    def parse(text: str) -> Path:
        if not text.strip():
            raise ConfigError(f"{flag}: empty path (an unset variable?); give a path")
        return Path(text)

    parse.__name__ = "path"
    return parse


def check_writable(path: Path, flag: str) -> None:
    """Refuse an output path that cannot be created: under a file, or where nothing may be written."""
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor != path and not ancestor.is_dir():
        raise RunDirError(f"{flag} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | (os.X_OK if ancestor.is_dir() else 0)):
        raise RunDirError(f"{flag} {path}: cannot write in {ancestor} (read-only file system or no permission)")


def _protected(path: Path) -> str | None:
    """Why ``path`` may never be replaced (the current or home directory, a repository root), or None."""
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return "it is (or holds) the current directory"
    if resolved == Path.home().resolve():
        return "it is the home directory"
    if (resolved / ".git").exists():
        return "it is a repository root (holds .git)"
    return None


def _is_temp_leftover(name: str) -> bool:
    """A hidden temporary file of an atomic write of a layout file (``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp") and name[1:].split(".tmp")[0].rsplit(".", 1)[0] in LAYOUT


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def marker(self) -> Path:
        return self.root / MARKER

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

    @property
    def staging(self) -> RunDir:
        """Where a rerun with ``--overwrite`` is built until it finishes."""
        return RunDir(self._sibling("new"))

    @property
    def _retired(self) -> Path:
        """Where the old run waits during the swap, until it is removed."""
        return self._sibling("old")

    def _sibling(self, suffix: str) -> Path:
        """``.<name>.bayespeft-<suffix>`` beside the folder (``.`` and ``..`` made absolute first)."""
        root = Path(os.path.abspath(self.root))
        return root.with_name(f".{root.name}.bayespeft-{suffix}")

    def eval_dir(self, name: str, flag: str = "--name") -> Path:
        """``eval/<name>``; ``name`` must be a plain name so that results stay inside the run."""
        return self.root / "eval" / plain_name(name, flag)

    def not_a_run(self) -> str | None:
        """Why ``--overwrite`` may not replace this folder's contents (None: empty, or a run and nothing else)."""
        entries = sorted(p.name for p in self.root.iterdir())
        if not entries:
            return None
        allowed = LAYOUT | {self._tracking_folder()} if "config.yaml" in entries else LAYOUT
        for name in entries:
            if name not in allowed and not _is_temp_leftover(name):
                return f"it holds {name}, which bayespeft did not write"
        if MARKER in entries or ("config.yaml" in entries and any(e in entries for e in _LEGACY_EVIDENCE)):
            return None
        return f"it is not a bayespeft run (no {MARKER}, nor config.yaml with metrics.json, adapter or train log)"

    def _tracking_folder(self) -> str:
        """The trackers' folder the saved config names (train.tracking_project; default bayespeft)."""
        try:
            raw = yaml.safe_load(self.config.read_text(encoding="utf-8"))
            return str(raw["train"]["tracking_project"])
        except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
            return "bayespeft"

    def check_replaceable(self) -> None:
        """Raise unless ``--overwrite`` may replace this folder (see the module docstring)."""
        reason = _protected(self.root)
        if reason is not None:
            raise RunDirError(f"{self.root}: --overwrite refused: {reason}")
        if not self.root.is_dir():
            return
        reason = self.not_a_run()
        if reason is not None:
            raise RunDirError(
                f"{self.root}: --overwrite only replaces a bayespeft run directory and {reason}; "
                "move it away or choose another --output-dir"
            )

    def check_new(self, overwrite: bool, resume: bool) -> None:
        """Refuse an existing non-empty folder unless overwriting a run or resuming (nothing is written)."""
        self.recover()
        if self.root.exists() and not self.root.is_dir():
            raise RunDirError(f"{self.root}: exists and is not a directory")
        if resume:
            if not self.resume_target().config.is_file():
                raise RunDirError(f"{self.root}: nothing to resume (no config.yaml); start the run without --resume")
            return
        check_writable(self.root, "--output-dir")
        if overwrite:
            self.check_replaceable()
            check_writable(self.root.parent, "--output-dir")  # the staging folder goes beside it
            self._check_staging()
            return
        if self.root.is_dir() and any(self.root.iterdir()):
            raise RunDirError(
                f"{self.root}: run directory already exists; pass --overwrite to replace it or --resume to continue it"
            )

    def resume_target(self) -> RunDir:
        """The run ``--resume`` continues: a staged rerun (``--overwrite`` not yet finished) or this one."""
        return self.staging if self.staging.config.is_file() else self

    def build_target(self, overwrite: bool) -> RunDir:
        """Where a new run is written: the staging folder when it replaces an existing run, else here."""
        if overwrite and self.root.is_dir() and any(self.root.iterdir()):
            return self.staging
        return self

    def create(self) -> None:
        """Make the folder and its marker (call after validation); keeps what a resumed run holds."""
        from .checkpoint import write_json_atomic

        self.root.mkdir(parents=True, exist_ok=True)
        self.plots.mkdir(exist_ok=True)
        if not self.marker.is_file():
            from . import __version__

            created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            write_json_atomic(self.marker, {"bayespeft_version": __version__, "created": created})

    def _check_staging(self) -> None:
        staging = self.staging
        if staging.root.exists() and (not staging.root.is_dir() or staging.not_a_run() is not None):
            raise RunDirError(f"{staging.root}: in the way of --overwrite and not a bayespeft run; move it away")

    def clear_staging(self) -> None:
        """Remove a staged rerun left by a failed or killed ``--overwrite`` (bayespeft's own files only)."""
        self._check_staging()
        if self.staging.root.exists():
            shutil.rmtree(self.staging.root)

    def replace_with(self, staged: RunDir) -> None:
        """Swap the finished ``staged`` run in place of this one, then remove the old run."""
        self.check_replaceable()  # nothing foreign arrived while the new run trained
        retired = self._retired
        if retired.exists():
            raise RunDirError(f"{retired}: in the way of replacing {self.root}; move it away")
        os.replace(self.root, retired)
        os.replace(staged.root, self.root)
        shutil.rmtree(retired)

    def recover(self) -> None:
        """Finish a swap a crash interrupted: the new run if it finished, else the old one, under the name."""
        retired = self._retired
        if not retired.is_dir():
            return
        if not self.root.exists():
            os.replace(self.staging.root if self.staging.metrics.is_file() else retired, self.root)
        if retired.is_dir() and RunDir(retired).not_a_run() is None:
            shutil.rmtree(retired)

    def require_trained(self) -> None:
        """A run that can be evaluated: config and adapter present."""
        for path in (self.config, self.adapter / "adapter_model.safetensors"):
            if not path.exists():
                raise RunDirError(f"{self.root}: not a finished bayespeft run ({path.name} missing)")
