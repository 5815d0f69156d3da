"""Multi-objective hyperparameter search with Optuna, on a validation split carved from training data.

``bayespeft tune [SPEC.yaml] [-c BASE] [KEY=VALUE ...] --space KEY=SPEC ... --objectives acc:max,ece:min
-o DIR`` (flags win over the spec file) reads::

    base: configs/base.yaml            # a config file (composed: defaults, groups) or an inline mapping
    config_dir: configs                # folder of the group files (default: the base file's folder)
    overrides: [train.max_steps=100]   # fixed for every trial
    space:                             # KEY: SPEC (the same text as --space KEY=SPEC)
      method.beta: log:0.05:0.5        # float, log-uniform
      train.lr: log:1e-4:1e-2
      method.kl_schedule: cat:cyclic,uniform   # categorical; values read as YAML
      model.lora.r: int:4:16           # also float:LO:HI and intlog:LO:HI
    objectives: acc:max,ece:min,nll:min        # or a list of "metric:direction"
    trials: 20                         # trials this worker adds to the study
    storage: sqlite:///runs/tune/study.db      # default sqlite:///<output_dir>/study.db; any Optuna URL
    study_name: tune
    output_dir: runs/tune
    validation_fraction: 0.2           # held out of the training split, with validation_seed
    validation_seed: 0
    sampler: tpe                       # tpe (multivariate TPE, the default), gp (Gaussian process) or random
    seed: 0                            # sampler seed: give each worker of a shared study its own

Validation: the training split (capped by ``data.max_train_examples``) is partitioned once by a
seeded permutation; each trial trains on the rest and is scored on the held-out part (its first
``data.max_eval_examples`` examples when set). The test split is never read: a base config with
``data.train_split`` or ``data.eval_split`` set to ``test`` is refused.

Each trial is a normal run directory ``<output_dir>/trials/trial-<n>``; its objectives are read
from the run's metrics. The study keeps the search space, the objectives and the validation
carve in its user attributes: reopening it with others is an error, with the same ones a
worker adds trials (several workers or machines can share one study through its storage).
After the trials ``<output_dir>`` gets ``trials.json`` (every trial of the study), ``pareto.md``
(the non-dominated trials) and ``plots/pareto_<a>_<b>.png`` (the first objective against each
other one) and ``plots/pareto_3d.png`` (the first three objectives), non-dominated points marked.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint import write_json_atomic, write_text_atomic
from ..compose import GROUPS, override_item, read_yaml
from ..config import RunConfig, check_seed, load_config
from ..errors import BayesPeftError, ConfigError, RunDirError
from ..rundir import check_writable
from ..training import Trainer, is_classification_dataset, load_examples

__all__ = [
    "ALWAYS_METRICS",
    "SearchParam",
    "TuneSpec",
    "carve_validation",
    "check_objective_metrics",
    "execute_tune",
    "load_tune_spec",
    "pareto_front",
    "parse_objectives",
    "parse_space",
    "plot_pareto",
    "tune",
]

#: Metrics every evaluation reports (see ``UncertaintyMetrics.compute``).
ALWAYS_METRICS = ("acc", "ece", "nll", "brier", "entropy", "mutual_information")
#: Task-specific metrics of the sentence-classification datasets that report them.
_TASK_METRICS = {"mrpc": ("f1",), "cola": ("matthews_corr",)}
_DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
_KINDS = ("log", "float", "int", "intlog", "cat")
_FORBIDDEN_KEYS = ("data.train_split", "data.eval_split")
_SPEC_KEYS = (
    "base",
    "config_dir",
    "overrides",
    "space",
    "objectives",
    "trials",
    "storage",
    "study_name",
    "output_dir",
    "validation_fraction",
    "validation_seed",
    "sampler",
    "seed",
)
_ATTR = "bayespeft_tune"


# --------------------------------------------------------------------------- space and objectives


@dataclass(frozen=True)
class SearchParam:
    """One searched key: a float/int range (optionally log-scaled) or a list of categorical choices."""

    key: str
    kind: str  # log | float | int | intlog | cat
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def text(self) -> str:
        """The spec text this parameter was read from (canonical form)."""
        if self.kind == "cat":
            return "cat:" + ",".join(json.dumps(c) if not isinstance(c, str) else c for c in self.choices)
        return f"{self.kind}:{self.low!r}:{self.high!r}"

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "cat":
            return {"kind": "cat", "choices": list(self.choices)}
        return {"kind": self.kind, "low": self.low, "high": self.high}

    def candidates(self) -> list[Any]:
        """Values that must all give a valid config (range ends, every choice)."""
        return list(self.choices) if self.kind == "cat" else [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter's value for an Optuna trial."""
        if self.kind == "cat":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind in ("int", "intlog"):
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.kind == "intlog")
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.kind == "log")


def parse_param(key: str, text: str) -> SearchParam:
    """``("method.beta", "log:0.05:0.5")`` -> SearchParam; errors name the key and the accepted forms."""
    key = key.strip()
    where = f"search space {key or '?'}={text}"
    forms = "log:LO:HI, float:LO:HI, int:LO:HI, intlog:LO:HI or cat:A,B,..."
    if not key:
        raise ConfigError(f"{where}: expected KEY=SPEC, e.g. method.beta=log:0.05:0.5")
    if key in _FORBIDDEN_KEYS:
        raise ConfigError(f"{where}: the splits are fixed by tune (validation carved from the training split)")
    if "." not in key and key not in GROUPS:
        raise ConfigError(
            f"{where}: expected a dotted config key such as method.beta, or a group ({', '.join(GROUPS)})"
        )
    kind, sep, rest = str(text).strip().partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in _KINDS:
        raise ConfigError(f"{where}: expected {forms}")
    if "." not in key and kind != "cat":
        raise ConfigError(f"{where}: a group selects config files by name; use cat:NAME1,NAME2")
    if kind == "cat":
        choices = tuple(yaml.safe_load(v) for v in rest.split(",") if v.strip())
        if not choices:
            raise ConfigError(f"{where}: cat needs at least one value")
        if len(set(map(json.dumps, choices))) != len(choices):
            raise ConfigError(f"{where}: a categorical value is listed twice")
        if not all(c is None or isinstance(c, str | int | float | bool) for c in choices):
            raise ConfigError(f"{where}: categorical values must be plain strings, numbers, booleans or null")
        return SearchParam(key, kind, choices=choices)
    bounds = rest.split(":")
    if len(bounds) != 2:
        raise ConfigError(f"{where}: expected {kind}:LO:HI")
    try:
        numbers = [float(b) for b in bounds]
    except ValueError:
        raise ConfigError(f"{where}: bounds must be numbers, got {bounds[0]!r} and {bounds[1]!r}") from None
    low, high = numbers
    if kind in ("int", "intlog"):
        if not all(n.is_integer() for n in numbers):
            raise ConfigError(f"{where}: {kind} bounds must be integers")
        low, high = int(low), int(high)
    if not low < high:
        raise ConfigError(f"{where}: the lower bound must be below the upper bound")
    if kind in ("log", "intlog") and low <= 0:
        raise ConfigError(f"{where}: a log scale needs a lower bound > 0")
    return SearchParam(key, kind, low=low, high=high)


def parse_space(items: Sequence[str] | Mapping[str, str]) -> dict[str, SearchParam]:
    """``["method.beta=log:0.05:0.5", ...]`` (or a mapping key -> spec) -> the search space."""
    pairs: list[tuple[str, str]] = []
    if isinstance(items, Mapping):
        pairs = [(str(k), str(v)) for k, v in items.items()]
    else:
        for item in items:
            key, sep, text = item.partition("=")
            if not sep:
                raise ConfigError(f"--space {item!r}: expected KEY=SPEC, e.g. method.beta=log:0.05:0.5")
            pairs.append((key, text))
    space: dict[str, SearchParam] = {}
    for key, text in pairs:
        param = parse_param(key, text)
        if param.key in space:
            raise ConfigError(f"search space gives {param.key} twice")
        space[param.key] = param
    return space


def parse_objectives(value: str | Sequence[str]) -> list[tuple[str, str]]:
    """``"acc:max,ece:min"`` (or a list of such items) -> ``[("acc", "maximize"), ("ece", "minimize")]``."""
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    objectives: list[tuple[str, str]] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        metric, sep, direction = item.partition(":")
        metric, direction = metric.strip(), direction.strip().lower()
        if not sep or not metric or direction not in _DIRECTIONS:
            raise ConfigError(f"objective {item!r}: expected METRIC:max or METRIC:min, e.g. acc:max")
        if any(m == metric for m, _ in objectives):
            raise ConfigError(f"objective {metric} is given twice")
        objectives.append((metric, _DIRECTIONS[direction]))
    if not objectives:
        raise ConfigError("no objectives: give e.g. --objectives acc:max,ece:min,nll:min")
    return objectives


def reported_metrics(config: RunConfig) -> tuple[str, ...]:
    """The metric names a run of ``config`` reports (task-specific ones for GLUE-style datasets)."""
    extra: tuple[str, ...] = ()
    if is_classification_dataset(config.data.dataset):
        from ..data.classification import classification_task_info
        from ..data.multiple_choice import is_mc_dataset

        if not is_mc_dataset(config.data.dataset):
            extra = _TASK_METRICS.get(classification_task_info(config.data.dataset).name, ())
    return (*ALWAYS_METRICS, *extra)


def check_objective_metrics(objectives: Sequence[tuple[str, str]], config: RunConfig) -> None:
    """ConfigError naming an objective whose metric runs of ``config`` do not report."""
    known = reported_metrics(config)
    for metric, _ in objectives:
        if metric not in known:
            raise ConfigError(
                f"objective {metric}: runs on {config.data.dataset} do not report this metric "
                f"(reported: {', '.join(known)})"
            )


# --------------------------------------------------------------------------- Pareto front


def pareto_front(points: Sequence[Mapping[str, Any]], objectives: Sequence[tuple[str, str]]) -> list[int]:
    """Indices (ascending) of the non-dominated points.

    ``objectives`` are ``(metric, direction)`` with direction ``max``/``maximize`` or ``min``/``minimize``.
    A point dominates another when it is no worse in every objective and better in one, so tied
    or duplicate points do not dominate each other and are all kept. A point lacking an objective
    value (absent, None or NaN) is never on the front.
    """
    signs = []
    for metric, direction in objectives:
        if direction.lower() not in _DIRECTIONS:
            raise ValueError(f"objective {metric}: direction must be max or min, got {direction!r}")
        signs.append(1.0 if _DIRECTIONS[direction.lower()] == "minimize" else -1.0)
    costs: list[tuple[int, tuple[float, ...]]] = []
    for index, point in enumerate(points):
        values = [point.get(metric) for metric, _ in objectives]
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
            continue
        costs.append((index, tuple(s * float(v) for s, v in zip(signs, values, strict=True))))

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))

    return [i for i, cost in costs if not any(dominates(other, cost) for _, other in costs)]


# --------------------------------------------------------------------------- validation carve


def carve_validation(examples: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Split ``examples`` into (train, held-out): a seeded choice of ``ceil(fraction * n)`` held out.

    Both parts keep the original order. At least one example lands on each side.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1) (got {fraction})")
    n = len(examples)
    if n < 2:
        raise ConfigError(f"cannot carve a validation split out of {n} training example(s)")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[: min(n - 1, max(1, math.ceil(fraction * n)))])
    train = [e for i, e in enumerate(examples) if i not in held]
    heldout = [e for i, e in enumerate(examples) if i in held]
    return train, heldout


@dataclass
class TuneSpec:
    """What to tune: base config, fixed overrides, the space, objectives, study and validation carve."""

    base: Path | dict[str, Any] | None = None
    config_dir: Path | None = None
    overrides: list[str] = field(default_factory=list)
    space: dict[str, SearchParam] = field(default_factory=dict)
    objectives: list[tuple[str, str]] = field(default_factory=list)
    trials: int = 20
    storage: str | None = None
    study_name: str = "tune"
    output_dir: Path | None = None
    validation_fraction: float = 0.2
    validation_seed: int = 0
    sampler: str = "tpe"
    seed: int | None = 0

    def identity(self) -> dict[str, Any]:
        """What a shared study must agree on: the space, the objectives and the validation carve."""
        return {
            "space": {k: p.text for k, p in self.space.items()},
            "objectives": [f"{m}:{d}" for m, d in self.objectives],
            "validation": {"fraction": self.validation_fraction, "seed": self.validation_seed},
        }


def load_tune_spec(path: str | Path) -> TuneSpec:
    """Read a tune spec YAML (see the module docstring); errors name the file and the field."""
    path = Path(path)
    raw = read_yaml(path, "tune spec") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with {', '.join(_SPEC_KEYS)}")
    unknown = sorted(set(raw) - set(_SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown tune key {unknown[0]!r} (known: {', '.join(_SPEC_KEYS)})")
    spec = TuneSpec()
    base = raw.get("base")
    if base is not None and not isinstance(base, str | dict):
        raise ConfigError(f"{path}: base must be a config file path or a mapping, got {base!r}")
    spec.base = Path(base) if isinstance(base, str) else base
    overrides = raw.get("overrides") or []
    if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        raise ConfigError(f"{path}: overrides must be a list of 'key=value' strings, got {overrides!r}")
    spec.overrides = overrides
    space = raw.get("space") or {}
    if not isinstance(space, dict):
        raise ConfigError(f"{path}: space must map keys to specs such as log:0.05:0.5, got {space!r}")
    try:
        spec.space = parse_space(space)
        if raw.get("objectives") is not None:
            spec.objectives = parse_objectives(raw["objectives"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for name in ("config_dir", "output_dir"):
        if raw.get(name) is not None:
            setattr(spec, name, Path(str(raw[name])))
    for name, kind in (
        ("trials", int),
        ("validation_fraction", float),
        ("validation_seed", int),
        ("seed", int),
        ("storage", str),
        ("study_name", str),
        ("sampler", str),
    ):
        if name in raw and raw[name] is not None:
            value = raw[name]
            accepted = (int, float) if kind is float else (kind,)
            if isinstance(value, bool) or not isinstance(value, accepted):
                raise ConfigError(f"{path}: {name} must be of type {kind.__name__}, got {value!r}")
            setattr(spec, name, kind(value))
    return spec


# --------------------------------------------------------------------------- the study


class _TrialFailed(Exception):
    """A trial's run failed (recorded as a failed Optuna trial; the study goes on)."""


def _make_sampler(name: str, seed: int | None) -> Any:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(multivariate=True, seed=seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "gp":
            if not hasattr(optuna.samplers, "GPSampler"):
                raise ConfigError(f"--sampler gp: optuna {optuna.__version__} has no GPSampler (needs >= 3.6)")
            try:
                import scipy  # noqa: F401
            except ImportError:
                raise ConfigError("--sampler gp needs scipy (pip install scipy)") from None
            return optuna.samplers.GPSampler(seed=seed)
    raise ConfigError(f"--sampler {name!r}: expected tpe, gp or random")


def _open_study(spec: TuneSpec, storage: str) -> Any:
    """Create or reopen the study; reopening with another space, objectives or carve is a ConfigError."""
    import optuna

    sampler = _make_sampler(spec.sampler, spec.seed)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=spec.study_name,
            directions=[d for _, d in spec.objectives],
            sampler=sampler,
            load_if_exists=True,
        )
    except (ValueError, ImportError, RuntimeError) as exc:
        raise ConfigError(f"study storage {storage}: {exc}") from None
    except Exception as exc:  # sqlalchemy errors for unreachable databases, bad URLs, ...
        raise ConfigError(f"study storage {storage}: cannot open ({type(exc).__name__}: {exc})") from None
    mine = spec.identity()
    stored = study.user_attrs.get(_ATTR)
    where = f"study {spec.study_name!r} in {storage}"
    if stored is None:
        if study.trials:
            raise ConfigError(f"{where} has trials but was not made by bayespeft tune; choose another --study-name")
        study.set_user_attr(_ATTR, mine)
        return study
    differences = _differences(stored, mine)
    if differences:
        raise ConfigError(
            f"{where} was made for another search: {'; '.join(differences)} "
            "(use the same --space/--objectives/--validation-* to add trials, or another --study-name)"
        )
    return study


def _differences(stored: Mapping[str, Any], mine: Mapping[str, Any]) -> list[str]:
    """Readable differences between a stored study identity and this run's."""
    out: list[str] = []
    old_space, new_space = stored.get("space", {}), mine["space"]
    for key in sorted(set(old_space) | set(new_space)):
        if key not in new_space:
            out.append(f"search space: {key}={old_space[key]} is stored but not given here")
        elif key not in old_space:
            out.append(f"search space: {key}={new_space[key]} is given here but not stored")
        elif old_space[key] != new_space[key]:
            out.append(f"search space: {key} is {old_space[key]} in the study, {new_space[key]} here")
    if stored.get("objectives") != mine["objectives"]:
        out.append(
            f"objectives: {','.join(stored.get('objectives', []))} in the study, {','.join(mine['objectives'])} here"
        )
    if stored.get("validation") != mine["validation"]:
        out.append(f"validation carve: {stored.get('validation')} in the study, {mine['validation']} here")
    return out


def _check_splits(config: RunConfig) -> None:
    for name in ("train_split", "eval_split"):
        if getattr(config.data, name) == "test":
            raise ConfigError(
                f"data.{name}=test: tune never reads the test split; it validates on a part "
                "carved out of data.train_split (use `bayespeft evaluate` on the test split afterwards)"
            )


def execute_tune(spec: TuneSpec, *, progress: bool = True) -> dict[str, Any]:
    """Check everything, run ``spec.trials`` trials into the (possibly shared) study, write the outputs.

    Returns a summary: storage, study name, the trials of this call, all trials and the front.
    """
    if spec.output_dir is None or not str(spec.output_dir).strip():
        raise ConfigError("tune: no output directory (output_dir in the spec or -o)")
    if not spec.space:
        raise ConfigError("tune: empty search space: give --space KEY=SPEC, e.g. method.beta=log:0.05:0.5")
    if not spec.objectives:
        raise ConfigError("tune: no objectives: give e.g. --objectives acc:max,ece:min,nll:min")
    if spec.trials < 1:
        raise ConfigError(f"--trials must be >= 1 (got {spec.trials})")
    check_seed(spec.seed, "--seed")
    check_seed(spec.validation_seed, "--validation-seed")
    out = Path(spec.output_dir)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a directory")
    check_writable(out, "--output-dir")
    fixed = {item.partition("=")[0].strip(): item for item in spec.overrides}
    for key in spec.space:
        if key in fixed:
            raise ConfigError(f"contradictory tune: {key} is searched and also fixed by override {fixed[key]!r}")
    base_config = load_config(spec.base, spec.overrides, config_dir=spec.config_dir)
    _check_splits(base_config)
    check_objective_metrics(spec.objectives, base_config)
    for param in spec.space.values():  # every range end and choice must make a valid config
        for value in param.candidates():
            try:
                config = load_config(
                    spec.base, [*spec.overrides, override_item(param.key, value)], config_dir=spec.config_dir
                )
            except ConfigError as exc:
                raise ConfigError(f"search space {param.key}={param.text}: value {value!r}: {exc}") from None
            check_objective_metrics(spec.objectives, config)

    pool = load_examples(base_config, base_config.data.train_split, base_config.data.max_train_examples)
    train_part, heldout = carve_validation(pool, spec.validation_fraction, spec.validation_seed)
    limit = base_config.data.max_eval_examples
    eval_part = heldout[:limit] if limit else heldout

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    storage = spec.storage or f"sqlite:///{out.resolve() / 'study.db'}"
    study = _open_study(spec, storage)
    write_json_atomic(
        out / "validation.json",
        {
            "split": base_config.data.train_split,
            "fraction": spec.validation_fraction,
            "seed": spec.validation_seed,
            "num_train": len(train_part),
            "num_heldout": len(heldout),
            "num_eval": len(eval_part),
            "eval_uids": [e.uid for e in eval_part],
        },
    )
    mine: list[int] = []
    split = base_config.data.train_split

    def objective(trial: Any) -> tuple[float, ...]:
        mine.append(trial.number)
        values = {key: param.suggest(trial) for key, param in spec.space.items()}
        overrides = [
            *spec.overrides,
            *(override_item(k, v) for k, v in values.items()),
            f"data.eval_split={json.dumps(split)}",  # held-out part of the training split
        ]
        run_dir = out / "trials" / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", overrides)
        described = ", ".join(f"{k}={v}" for k, v in values.items())
        print(f"[trial {trial.number}] {described}", flush=True)
        try:
            config = load_config(spec.base, overrides, config_dir=spec.config_dir)
        except ConfigError as exc:
            trial.set_user_attr("error", str(exc))
            raise _TrialFailed(str(exc)) from exc
        trainer = Trainer(
            config, run_dir, train_examples=train_part, eval_examples=eval_part, progress=progress
        )  # RunDirError (directory in use) stops the search
        try:
            metrics = trainer.run_training()["metrics"]
        except BayesPeftError as exc:
            trial.set_user_attr("error", str(exc))
            print(f"[trial {trial.number}] failed: {exc}", flush=True)
            raise _TrialFailed(str(exc)) from exc
        missing = [m for m, _ in spec.objectives if m not in metrics]
        if missing:
            raise ConfigError(
                f"objective {missing[0]}: trial {trial.number} does not report it "
                f"(reported: {', '.join(k for k in metrics if isinstance(metrics[k], float))})"
            )
        result = tuple(float(metrics[m]) for m, _ in spec.objectives)
        print(
            f"[trial {trial.number}] "
            + ", ".join(f"{m}={v:.4g}" for (m, _), v in zip(spec.objectives, result, strict=True))
        )
        return result

    study.optimize(objective, n_trials=spec.trials, catch=(_TrialFailed,))
    summary = write_outputs(study, spec.objectives, out)
    summary.update(storage=storage, study_name=spec.study_name, this_run=mine, output_dir=str(out))
    return summary


# --------------------------------------------------------------------------- outputs


def write_outputs(study: Any, objectives: Sequence[tuple[str, str]], out: Path) -> dict[str, Any]:
    """``trials.json``, ``pareto.md`` and the Pareto plots from every trial of the study."""
    from optuna.trial import TrialState

    rows = []
    for trial in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {
            "trial": trial.number,
            "state": trial.state.name,
            "params": trial.params,
            "values": None,
            "run_dir": trial.user_attrs.get("run_dir"),
        }
        if trial.state == TrialState.COMPLETE and trial.values is not None:
            row["values"] = {m: v for (m, _), v in zip(objectives, trial.values, strict=True)}
        if "error" in trial.user_attrs:
            row["error"] = trial.user_attrs["error"]
        rows.append(row)
    complete = [r for r in rows if r["values"] is not None]
    front = {complete[i]["trial"] for i in pareto_front([r["values"] for r in complete], objectives)}
    for row in rows:
        row["pareto"] = row["trial"] in front
    payload = {"objectives": [f"{m}:{d}" for m, d in objectives], "trials": rows}
    write_json_atomic(out / "trials.json", payload)
    write_text_atomic(out / "pareto.md", pareto_markdown(complete, objectives, front))
    plots = plot_pareto(complete, objectives, out / "plots")
    return {"trials": rows, "pareto": sorted(front), "plots": [str(p) for p in plots]}


def pareto_markdown(rows: Sequence[Mapping[str, Any]], objectives: Sequence[tuple[str, str]], front: set[int]) -> str:
    """The table of non-dominated trials: trial, parameters, objective values (best first objective first)."""
    lines = [
        "# Pareto front",
        "",
        "Objectives: "
        + ", ".join(f"{m} ({'max' if d == 'maximize' else 'min'})" for m, d in objectives)
        + f". {len(front)} non-dominated of {len(rows)} completed trials (validation carved from training data).",
        "",
    ]
    keys = sorted({k for r in rows for k in r["params"]})
    lines.append("| Trial | " + " | ".join([*keys, *(m for m, _ in objectives)]) + " |")
    lines.append("|---:|" + "---|" * len(keys) + "---:|" * len(objectives))
    first, direction = objectives[0]
    chosen = sorted(
        (r for r in rows if r["trial"] in front),
        key=lambda r: -r["values"][first] if direction == "maximize" else r["values"][first],
    )
    for row in chosen:
        params = [_cell(row["params"].get(k)) for k in keys]
        values = [format(row["values"][m], ".4g") for m, _ in objectives]
        lines.append(f"| {row['trial']} | " + " | ".join([*params, *values]) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return format(value, ".4g") if isinstance(value, float) else str(value)


def plot_pareto(
    rows: Sequence[Mapping[str, Any]], objectives: Sequence[tuple[str, str]], plots_dir: Path
) -> list[Path]:
    """The first objective against each other one, and the first three in 3-D; fronts highlighted.

    2-D plots mark that pair's non-dominated points (joined in order) and ring the points on the
    full multi-objective front; the 3-D plot marks the front of the three plotted objectives.
    """
    if len(objectives) < 2 or not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    points = [r["values"] for r in rows]
    full = set(pareto_front(points, objectives))
    written: list[Path] = []
    x_obj = objectives[0]
    for y_obj in objectives[1:]:
        pair = [x_obj, y_obj]
        front = pareto_front(points, pair)
        xs = [p[x_obj[0]] for p in points]
        ys = [p[y_obj[0]] for p in points]
        fig, ax = plt.subplots(figsize=(6.0, 4.5))
        others = [i for i in range(len(points)) if i not in front]
        ax.scatter([xs[i] for i in others], [ys[i] for i in others], c="0.6", s=25, label="dominated")
        ordered = sorted(front, key=lambda i: (xs[i], ys[i]))
        ax.plot([xs[i] for i in ordered], [ys[i] for i in ordered], "-o", color="C3", ms=6, label="non-dominated")
        ringed = [i for i in full if i not in front]
        if ringed:
            ax.scatter(
                [xs[i] for i in ringed], [ys[i] for i in ringed], facecolors="none", edgecolors="C0", s=80,
                label=f"on the {len(objectives)}-objective front",
            )  # fmt: skip
        for i, row in enumerate(rows):
            ax.annotate(str(row["trial"]), (xs[i], ys[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(_axis(x_obj))
        ax.set_ylabel(_axis(y_obj))
        ax.set_title(f"Pareto front: {x_obj[0]} vs {y_obj[0]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
        fig.tight_layout()
        path = plots_dir / f"pareto_{x_obj[0]}_{y_obj[0]}.png"
        fig.savefig(path, dpi=130)
        plt.close(fig)
        written.append(path)
    if len(objectives) >= 3:
        three = list(objectives[:3])
        front = set(pareto_front(points, three))
        coords = [[p[m] for p in points] for m, _ in three]
        fig = plt.figure(figsize=(6.5, 5.5))
        ax = fig.add_subplot(projection="3d")
        for chosen, color, label in ((False, "0.6", "dominated"), (True, "C3", "non-dominated")):
            idx = [i for i in range(len(points)) if (i in front) == chosen]
            ax.scatter(*[[c[i] for i in idx] for c in coords], c=color, s=30 if chosen else 15, label=label)
        ordered = sorted(front, key=lambda i: tuple(c[i] for c in coords))
        if len(ordered) > 1:
            ax.plot(*[[c[i] for i in ordered] for c in coords], color="C3", lw=0.8)
        ax.set_xlabel(_axis(three[0]))
        ax.set_ylabel(_axis(three[1]))
        ax.set_zlabel(_axis(three[2]))
        ax.set_title("Pareto front: " + ", ".join(m for m, _ in three))
        ax.legend(fontsize=7, frameon=False)
        path = plots_dir / "pareto_3d.png"
        fig.savefig(path, dpi=130)
        plt.close(fig)
        written.append(path)
    return written


def _axis(objective: tuple[str, str]) -> str:
    metric, direction = objective
    return f"{metric} ({'higher' if direction == 'maximize' else 'lower'} is better)"


# --------------------------------------------------------------------------- command line


def tune(
    spec: str | Path | TuneSpec | None = None,
    *,
    overrides: Sequence[str] = (),
    config: str | Path | None = None,
    config_dir: str | Path | None = None,
    space: Sequence[str] | Mapping[str, str] = (),
    objectives: str | Sequence[str] | None = None,
    trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    output_dir: str | Path | None = None,
    validation_fraction: float | None = None,
    validation_seed: int | None = None,
    sampler: str | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Search hyperparameters for several objectives, as ``bayespeft tune`` does; returns the study summary.

    ``spec`` is a tune spec (YAML file or :class:`TuneSpec`); the other arguments go on top of it,
    as the command line's do: ``space`` items ``key=log:lo:hi``, ``objectives`` ``metric:max|min``.
    """
    if isinstance(spec, TuneSpec):
        spec = dataclasses.replace(spec)
    else:
        spec = load_tune_spec(spec) if spec is not None else TuneSpec()
    spec.overrides = [*spec.overrides, *overrides]
    spec.space = {**spec.space, **parse_space(space)}  # the arguments win over the spec file
    if objectives is not None:
        spec.objectives = parse_objectives(objectives)
    given = {
        "config_dir": None if config_dir is None else Path(config_dir),
        "trials": trials,
        "storage": storage,
        "study_name": study_name,
        "output_dir": None if output_dir is None else Path(output_dir),
        "validation_fraction": validation_fraction,
        "validation_seed": validation_seed,
        "sampler": sampler,
        "seed": seed,
    }
    for name, value in given.items():
        if value is not None:
            setattr(spec, name, value)
    if config is not None:
        spec.base = Path(config)
    return execute_tune(spec, progress=progress)
