"""Run configuration: dataclasses, YAML loading, dotted overrides and validation.

A run is described by one :class:`RunConfig`. It is built from a YAML file, then dotted
overrides (``method.beta=0.1``), then CLI flags, validated field by field (errors name the
field), and saved resolved in the run directory so the run can be reproduced or resumed.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .compose import compose_mapping
from .enums import MCScoring, ModelKind, Precision
from .errors import ConfigError

#: Seeds must fit numpy's and torch's seeding: 0 <= seed < 2**32.
SEED_LIMIT = 2**32

#: The largest float32: a learning rate above it cannot reach the (float32) optimiser step.
FLOAT32_MAX = 3.4028234663852886e38

#: Experiment trackers ``train.report_to`` accepts (accelerate's names) -> the pip package each needs.
TRACKERS: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb"}


@dataclass
class MethodConfig:
    """Base of the per-method configs; ``name`` is the registry key of the method."""

    name: typing.ClassVar[str] = ""

    def validate(self) -> None:
        """Raise ConfigError for invalid values (field names as ``method.<field>``)."""


#: Method name -> its config class; filled by :func:`bayespeft.methods.register_method` (config never imports methods).
_METHOD_CONFIGS: dict[str, type[MethodConfig]] = {}


def register_method_config(name: str, config_class: type[MethodConfig]) -> None:
    """Make ``config_class`` the config of method ``name`` (called when a method registers)."""
    _METHOD_CONFIGS[name] = config_class


def method_config_class(name: str) -> type[MethodConfig]:
    """The config class of method ``name``; an unknown name is a ConfigError listing the known ones.

    A name not yet registered first loads the built-in methods (by name, at call time: config imports no
    method module), so ``load_config`` works whichever bayespeft module a program imported first.
    """
    if name.lower() not in _METHOD_CONFIGS:
        importlib.import_module("bayespeft.methods")
    try:
        return _METHOD_CONFIGS[name.lower()]
    except KeyError:
        raise ConfigError(
            f"method.name: unknown method {name!r} (choose one of: {', '.join(sorted(_METHOD_CONFIGS))})"
        ) from None


@dataclass
class LoraSettings:
    """LoRA shape shared by every method: rank, scaling alpha, dropout and target modules."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: the backbone's default targets

    def validate(self) -> None:
        require(self.r >= 1, "model.lora.r", f"must be >= 1 (got {self.r})")
        require(self.alpha > 0, "model.lora.alpha", f"must be > 0 (got {self.alpha})")
        require(0.0 <= self.dropout < 1.0, "model.lora.dropout", f"must be in [0, 1) (got {self.dropout})")
        if self.target_modules is not None:
            require(len(self.target_modules) > 0, "model.lora.target_modules", "must not be empty")


@dataclass
class ModelConfig:
    """Backbone: a short name (offline defaults), a hub id or a local path."""

    name: str = "smollm2-135m"
    kind: str | None = None  # causal_lm | seq_cls; None: inferred from the name / config
    precision: str = Precision.FP32.value
    lora: LoraSettings = field(default_factory=LoraSettings)
    cache_dir: str | None = None  # where converted offline models are cached
    revision: str | None = None

    def validate(self) -> None:
        require(bool(self.name), "model.name", "must not be empty")
        if self.kind is not None:
            self.kind = ModelKind.parse(self.kind, "model.kind").value
        self.precision = Precision.parse(self.precision, "model.precision").value
        self.lora.validate()


@dataclass
class DataConfig:
    """Dataset, splits and sizes."""

    dataset: str = "arc_easy"
    data_dir: str | None = None  # folder in the layout of shared/data; None: the Hugging Face hub
    train_split: str = "train"
    eval_split: str = "validation"
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    max_length: int = 300
    mc_scoring: str = MCScoring.LETTER.value  # multiple choice with a causal LM: letter or cloze
    cloze_prefix_cache: bool = True  # cloze: run each question's stem once, its choices packed after it

    def validate(self) -> None:
        require(self.max_length >= 8, "data.max_length", f"must be >= 8 (got {self.max_length})")
        self.mc_scoring = MCScoring.parse(self.mc_scoring, "data.mc_scoring").value
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"data.{name}", f"must be >= 1 or null (got {value})")


@dataclass
class TrainConfig:
    """Optimisation shared by all methods (method-specific knobs live in the method config)."""

    lr: float = 1e-4
    batch_size: int = 4
    max_steps: int = 200  # optimiser steps; replaced by epochs x steps per epoch when train.epochs is set
    epochs: int | None = None  # passes over the training set (None: train.max_steps decides), as HF's num_train_epochs
    gradient_accumulation_steps: int = 1  # micro-batches of batch_size per optimiser step (effective batch N x b)
    warmup_ratio: float = 0.06
    adam_eps: float = 1e-6
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    seed: int = 1
    shuffle: bool = True
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    report_to: list[str] = field(default_factory=list)  # experiment trackers (TRACKERS); [] = no tracking
    tracking_project: str = "bayespeft"  # the trackers' project (tensorboard: the folder <run dir>/<project>)
    eval_every: int = 0  # evaluate on held-out data every k steps (0 = only at the end), as HF's eval_steps
    eval_n_samples: int = 0  # posterior draws of those evaluations (0 = posterior mean, the fast choice)
    eval_max_examples: int | None = None  # the first N evaluation examples (None: all of data.eval_split's)
    early_stopping_patience: int = 0  # stop after this many evaluations without a lower held-out NLL (0 = off)

    def validate(self) -> None:
        require(0 < self.lr <= FLOAT32_MAX, "train.lr", f"must be > 0 and fit a float32 (got {self.lr})")
        require(self.batch_size >= 1, "train.batch_size", f"must be >= 1 (got {self.batch_size})")
        require(self.max_steps >= 0, "train.max_steps", f"must be >= 0 (got {self.max_steps})")
        require(self.epochs is None or self.epochs >= 1, "train.epochs", f"must be >= 1 or null (got {self.epochs})")
        require(
            self.gradient_accumulation_steps >= 1,
            "train.gradient_accumulation_steps",
            f"must be >= 1 (got {self.gradient_accumulation_steps})",
        )
        check_seed(self.seed, "train.seed")
        require(0 <= self.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1) (got {self.warmup_ratio})")
        require(self.adam_eps > 0, "train.adam_eps", f"must be > 0 (got {self.adam_eps})")
        require(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0 (got {self.weight_decay})")
        require(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            "train.max_grad_norm",
            f"must be > 0 or null (got {self.max_grad_norm})",
        )
        require(
            self.checkpoint_every >= 1,
            "train.checkpoint_every",
            f"must be >= 1 (got {self.checkpoint_every})",
        )
        require(
            self.keep_checkpoints >= 1,
            "train.keep_checkpoints",
            f"must be >= 1 (got {self.keep_checkpoints})",
        )
        self.report_to = [name.strip().lower() for name in self.report_to]
        for name in self.report_to:
            require(name in TRACKERS, "train.report_to", f"has unknown tracker {name!r} (choose from {list(TRACKERS)})")
        require(
            len(set(self.report_to)) == len(self.report_to),
            "train.report_to",
            f"lists a tracker twice (got {self.report_to})",
        )
        require(bool(self.tracking_project.strip()), "train.tracking_project", "must not be empty")
        require(self.eval_every >= 0, "train.eval_every", f"must be >= 0 (got {self.eval_every}); 0 = off")
        require(self.eval_n_samples >= 0, "train.eval_n_samples", f"must be >= 0 (got {self.eval_n_samples})")
        require(
            self.eval_max_examples is None or self.eval_max_examples >= 1,
            "train.eval_max_examples",
            f"must be >= 1 or null (got {self.eval_max_examples})",
        )
        require(
            self.early_stopping_patience >= 0,
            "train.early_stopping_patience",
            f"must be >= 0 (got {self.early_stopping_patience}); 0 = off",
        )
        require(
            self.early_stopping_patience == 0 or self.eval_every > 0,
            "train.early_stopping_patience",
            "needs train.eval_every > 0 (early stopping watches the held-out NLL of those evaluations)",
        )


@dataclass
class EvalConfig:
    """Evaluation: posterior samples N (0 = posterior mean), batching and calibration bins."""

    n_samples: int = 10
    batch_size: int = 8
    samples_per_pass: int = 10  # posterior draws stacked into one forward pass (memory vs speed)
    n_bins: int = 15
    seed: int = 0
    temperature: float | None = None  # post-hoc temperature (see `bayespeft calibrate`); None: off

    def validate(self) -> None:
        require(self.n_samples >= 0, "eval.n_samples", f"must be >= 0 (got {self.n_samples}); 0 = posterior mean")
        require(self.batch_size >= 1, "eval.batch_size", f"must be >= 1 (got {self.batch_size})")
        require(self.samples_per_pass >= 1, "eval.samples_per_pass", f"must be >= 1 (got {self.samples_per_pass})")
        require(self.n_bins >= 1, "eval.n_bins", f"must be >= 1 (got {self.n_bins})")
        check_seed(self.seed, "eval.seed")
        require(
            self.temperature is None or self.temperature > 0,
            "eval.temperature",
            f"must be > 0 or null (got {self.temperature})",
        )


@dataclass
class RunConfig:
    """Everything a run needs; saved resolved as ``config.yaml`` in the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> RunConfig:
        for part in (self.model, self.method, self.data, self.train, self.eval):
            part.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["method"] = {"name": self.method.name, **out["method"]}
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        """Build from nested plain data, rejecting unknown keys and wrong types by dotted name."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level")
        raw = dict(raw)
        method_raw = dict(raw.pop("method", None) or {})
        method_name = method_raw.pop("name", "blob")
        config = build_dataclass(cls, raw, "", source, skip={"method"})
        config.method = build_dataclass(method_config_class(str(method_name)), method_raw, "method.", source)
        return config


def load_config(
    base: str | Path | Mapping[str, Any] | None = None,
    overrides: Iterable[str] | None = None,
    *,
    groups: Mapping[str, str | Path] | None = None,
    config_dir: str | Path | None = None,
) -> RunConfig:
    """Compose and validate a run config: the one composition the commands and the Python API share.

    ``base`` is a YAML file (its ``defaults`` list selects group files), an inline mapping or
    None (the defaults); ``groups`` selects group files by name or path; ``overrides`` are
    ``a.b=value`` settings or ``group=name`` selections. See :mod:`bayespeft.compose` for the rules.
    """
    raw, source = compose_mapping(base, groups, overrides or (), config_dir=config_dir)
    return RunConfig.from_dict(raw, source).validate()


def check_seed(seed: int, name: str) -> None:
    """A seed must be in [0, 2**32) (what numpy and torch accept); ``name`` is the field or flag."""
    require(0 <= seed < SEED_LIMIT, name, f"must be in [0, 2**32) (got {seed})")


def save_config(config: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from .checkpoint import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def flatten_dict(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys: ``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def require(ok: bool, name: str, message: str) -> None:
    """Raise ``ConfigError("<name> <message>")`` unless ``ok``: the one way a config field reports a bad value."""
    if not ok:
        raise ConfigError(f"{name} {message}")


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value


def build_dataclass(cls: type, raw: dict[str, Any], prefix: str, source: str, skip: set[str] = frozenset()) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known - skip)
    if unknown:
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]} (known under {where}: {', '.join(sorted(known)) or 'none'})"
        )
    kwargs = {}
    for name, value in raw.items():
        if name in skip:
            continue
        kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}", source)
    return cls(**kwargs)


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_NON_FINITE_TEXT = re.compile(r"[-+]?(inf|infinity|nan)")  # what float() accepts but a config must not


def _coerce(value: Any, hint: Any, name: str, source: str) -> Any:
    """Check ``value`` against the field's type hint; ints are accepted for floats."""
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value or {}, f"{name}.", source)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name, source)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {name} must be a list (got {value!r})")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, name, source) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {name} must be true or false (got {value!r})")
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{source}: {name} must be a finite number (got {value!r})")
        return float(value)
    if hint is float and isinstance(value, str) and _NON_FINITE_TEXT.fullmatch(value.strip().lower()):
        raise ConfigError(f"{source}: {name} must be a finite number (got {value!r})")
    if hint is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 5e-4 (no dot) as a string
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is str and isinstance(value, int | float):
        return str(value)
    raise ConfigError(f"{source}: {name} must be of type {getattr(hint, '__name__', hint)} (got {value!r})")
