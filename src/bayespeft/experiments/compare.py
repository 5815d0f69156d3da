"""Compare methods: every (method, dataset, seed) a run directory, then the aggregated report.

``bayespeft compare --methods blob,blob_laplace,mle --datasets mc --seeds 1,2,3 -c configs/base.yaml
-o runs/compare [KEY=VALUE ...]``

Configs. Each run is composed as ``bayespeft train -c BASE KEY=VALUE ...`` composes it, plus the
method's and the dataset's group files (``<config dir>/method/<m>.yaml``, ``<config dir>/data/<d>.yaml``)
where they exist, else ``method.name=<m>`` (a fresh method section) and ``data.dataset=<d>``; then
``train.seed=<s>``. A ``method.<param>`` override goes to the compared methods that have that parameter.

Datasets. ``mc`` is every multiple-choice dataset with a training split (MMLU has none) and ``glue``
every GLUE / SuperGLUE classification task, both read from the dataset registries. A shorthand leaves
out the datasets whose training split the data source lacks (offline PIQA and HellaSwag); a named
dataset must have one.

Post-hoc methods (those with a ``method.source_adapter``: laplace, tfb, noise) start from the MLE run of
their dataset and seed, with ``train.max_steps=0``; compare trains that run once, first, also when mle
itself is not compared (it is then left out of the report). ``temperature`` is that MLE run with a
temperature fitted as ``bayespeft calibrate`` fits it, on ``--temperature-split`` (default ``train``:
the training examples after the first ``data.max_train_examples``, which MLE did not see; at most
``data.max_eval_examples`` of them), then evaluated with it; it is never fitted on the evaluated split.

Every config, dataset split, metric and existing run directory is checked before anything runs, and
errors name the flag. Runs follow the sweep's rules (:mod:`bayespeft.experiments.sweep`): a finished run is
skipped, an interrupted one resumed, a directory holding a run of another config is an error, and a
failed run is recorded while the others go on. ``<out>`` gets:

``runs/method=<m>__data=<d>__seed=<s>/``  the run directories
``compare.json``  the manifest: spec, datasets, runs (values, overrides, action, status), report files
``report/``       results.md, results.tex, results.json and reliability_grid.png as ``bayespeft report``
                  writes them, and metrics.png / metrics.pdf: each metric's mean ± std over seeds per
                  method and dataset
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import write_json_atomic
from ..choices import COMPARE_METRICS, TEMPERATURE
from ..compose import override_item
from ..config import RunConfig, load_config, save_config
from ..data.classification import list_classification_datasets
from ..data.multiple_choice import list_mc_datasets
from ..errors import ConfigError, DataError, RunDirError
from ..methods import method_config_class, method_names
from ..rundir import RunDir, check_writable
from .report import (
    DEFAULT_SCALE,
    PAPER_STYLE,
    AggregateRow,
    aggregate,
    collect_results,
    metric_header,
    save_figure,
    split_list,
    write_report,
)
from .sweep import SweepPoint, plan_points, point_name, run_points, spec_dict, train_point, write_manifest

__all__ = [
    "DEFAULT_METRICS",
    "TEMPERATURE",
    "CompareSpec",
    "compare",
    "dataset_shorthands",
    "execute_compare",
    "plot_comparison",
]

DEFAULT_METRICS = COMPARE_METRICS
_SOURCE = "mle"  # the method post-hoc methods start from
_METHOD_KEY, _DATA_KEY, _SEED_KEY = "method", "data.dataset", "train.seed"
# Colour-blind-safe (Okabe-Ito) colours and markers, one pair per method.
_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
_MARKERS = "osD^vPX*"


def dataset_shorthands() -> dict[str, list[str]]:
    """``mc``: the multiple-choice datasets with a training split (not MMLU); ``glue``: the classification tasks."""
    return {
        "mc": [name for name in list_mc_datasets() if not name.startswith("mmlu")],
        "glue": list_classification_datasets(),
    }


@dataclass
class CompareSpec:
    """What to compare: methods, datasets (names or shorthands) and seeds, on a base config with overrides."""

    methods: list[str]
    datasets: list[str]
    seeds: list[int]
    output_dir: Path
    base: Path | None = None
    config_dir: Path | None = None
    overrides: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    temperature_split: str = "train"

    def to_dict(self) -> dict[str, Any]:
        return spec_dict(self)


@dataclass(frozen=True)
class _Plan:
    """The validated comparison: datasets resolved, runs in order, and how temperature runs fit."""

    datasets: list[str]
    points: list[SweepPoint]
    sources: dict[tuple[str, int], Path]  # (dataset, seed) -> the MLE run directory
    fit_offsets: dict[str, int]  # dataset -> examples of --temperature-split skipped (trained on)


# --------------------------------------------------------------------------- validation


def _unique(items: Sequence[Any], flag: str) -> None:
    for index, item in enumerate(items):
        if item in items[:index]:
            raise ConfigError(f"{flag} lists {item} twice")


def _check_lists(spec: CompareSpec) -> None:
    """Methods known, seeds integers, nothing repeated, no override of what compare sets itself."""
    for flag, items in (("--methods", spec.methods), ("--datasets", spec.datasets), ("--seeds", spec.seeds)):
        if not items:
            raise ConfigError(f"{flag}: give at least one")
        _unique(items, flag)
    known = [*method_names(), TEMPERATURE]
    for method in spec.methods:
        if method not in known:
            raise ConfigError(f"--methods: unknown method {method!r} (choose from {', '.join(known)})")
    for seed in spec.seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"--seeds: seeds must be integers, got {seed!r}")
    owned = {
        "method": "--methods",
        "method.name": "--methods",
        "data": "--datasets",
        "data.dataset": "--datasets",
        "train.seed": "--seeds",
        "method.source_adapter": "--methods (post-hoc methods get the MLE run of their dataset and seed)",
    }
    for item in spec.overrides:
        key = item.partition("=")[0].strip()
        if key in owned:
            raise ConfigError(f"override {item!r}: compare sets {key} from {owned[key]}; drop the override")


def _run_methods(spec: CompareSpec) -> list[str]:
    """The methods that run, MLE first when post-hoc methods need it as their source."""
    needs_source = any(m == TEMPERATURE or _takes_source_adapter(m) for m in spec.methods)
    first = [_SOURCE] if needs_source or _SOURCE in spec.methods else []
    return [*first, *(m for m in spec.methods if m != _SOURCE)]


def _config_method(method: str) -> str:
    """The registered method a run of ``method`` configures (temperature runs are MLE runs)."""
    return _SOURCE if method == TEMPERATURE else method


def _takes_source_adapter(method: str) -> bool:
    """A post-hoc method of the registry: its config has a ``source_adapter`` (laplace, tfb, noise)."""
    return method != TEMPERATURE and "source_adapter" in _params(method)


def _params(method: str) -> set[str]:
    """The parameters of the method a run of ``method`` configures."""
    return {f.name for f in dataclasses.fields(method_config_class(_config_method(method)))}


def _method_param(item: str) -> str | None:
    """``method.beta=0.1`` -> ``beta``; None for an override of another section."""
    key = item.partition("=")[0].strip()
    return key.split(".")[1] if key.startswith("method.") else None


def _overrides_for(spec: CompareSpec, method: str) -> list[str]:
    """The overrides that apply to runs of ``method``: all but the method parameters it lacks."""
    params = _params(method)
    return [item for item in spec.overrides if _method_param(item) in (None, *params)]


def _check_method_overrides(spec: CompareSpec, methods: Sequence[str]) -> None:
    """A ``method.<param>`` override must reach at least one of the runs (else it is a typo)."""
    for item in spec.overrides:
        param = _method_param(item)
        if param is not None and not any(item in _overrides_for(spec, m) for m in methods):
            raise ConfigError(
                f"override {item!r}: none of the compared methods ({', '.join(methods)}) has a parameter {param}"
            )


def _config_dir(spec: CompareSpec) -> Path:
    """The folder of the group files, as compose picks it."""
    if spec.config_dir is not None:
        return spec.config_dir
    return spec.base.parent if spec.base is not None else Path("configs")


def _resolve_datasets(spec: CompareSpec) -> list[tuple[str, bool]]:
    """(dataset, from a shorthand) pairs, shorthands expanded, in order; a repeat is an error."""
    shorthands = dataset_shorthands()
    resolved: list[tuple[str, bool]] = []
    for item in spec.datasets:
        resolved += [(name, True) for name in shorthands[item]] if item in shorthands else [(item, False)]
    _unique([name for name, _ in resolved], f"--datasets (with {', '.join(shorthands)} expanded)")
    return resolved


# --------------------------------------------------------------------------- planning


def _plan(spec: CompareSpec) -> _Plan:
    """Compose and check every run; nothing is written. Errors name the flag or the run."""
    from ..backbones import resolve_model
    from ..training import load_examples, model_kind
    from .tune import reported_metrics

    _check_lists(spec)
    methods = _run_methods(spec)
    _check_method_overrides(spec, methods)
    directory = _config_dir(spec)
    runs_dir = Path(spec.output_dir) / "runs"

    def source_run(dataset: str, seed: int) -> Path:
        return runs_dir / point_name({_METHOD_KEY: _SOURCE, _DATA_KEY: dataset, _SEED_KEY: seed})

    @functools.cache
    def shared_base() -> dict[str, Any]:
        """The base with every override but the method parameters: the start of a method without a group file."""
        rest = [item for item in spec.overrides if _method_param(item) is None]
        return load_config(spec.base, rest, config_dir=directory).to_dict()

    def compose(method: str, dataset: str, seed: int) -> SweepPoint:
        values = {_METHOD_KEY: method, _DATA_KEY: dataset, _SEED_KEY: seed}
        name = point_name(values)
        configured = _config_method(method)
        base: Path | dict[str, Any] | None = spec.base
        overrides = _overrides_for(spec, method)
        if (directory / "method" / f"{configured}.yaml").is_file():
            overrides.append(f"method={configured}")
        else:
            base = {**shared_base(), "method": {"name": configured}}
        has_data_file = (directory / "data" / f"{dataset}.yaml").is_file()
        overrides += [
            f"data={dataset}" if has_data_file else override_item(_DATA_KEY, dataset),
            override_item(_SEED_KEY, seed),
        ]
        if _takes_source_adapter(method):
            adapter = source_run(dataset, seed) / "adapter"
            overrides += ["train.max_steps=0", override_item("method.source_adapter", str(adapter))]
        try:
            config = load_config(base, overrides, config_dir=directory)
        except ConfigError as exc:
            raise ConfigError(f"compare run {name}: {exc}") from None
        return SweepPoint(name, values, overrides, label=f"{method} {dataset}", row=method, config=config)

    resolved = _resolve_datasets(spec)
    first = compose(methods[0], resolved[0][0], spec.seeds[0])
    resolve_model(first.config.model)  # a bad model is named as such, not as a dataset error
    datasets: list[str] = []
    dropped: dict[str, str] = {}  # dataset of a shorthand -> the split it lacks
    fit_offsets: dict[str, int] = {}
    for dataset, from_shorthand in resolved:
        config = compose(methods[0], dataset, spec.seeds[0]).config
        splits = [config.data.train_split, config.data.eval_split]
        if TEMPERATURE in spec.methods:
            splits.append(spec.temperature_split)
        try:
            model_kind(config)
            lacking = _first_missing_split(config, splits, load_examples)
        except (ConfigError, DataError) as exc:
            raise ConfigError(f"--datasets {dataset}: {exc}") from None
        if lacking is not None:
            if not from_shorthand:
                raise ConfigError(f"--datasets {dataset}: {lacking}")
            dropped[dataset] = lacking
            continue
        reported = reported_metrics(config)
        missing = [m for m in spec.metrics if m not in reported]
        if missing:
            raise ConfigError(
                f"--metrics: runs on {dataset} do not report {missing[0]} (they report {', '.join(reported)})"
            )
        if TEMPERATURE in spec.methods:
            fit_offsets[dataset] = _check_temperature_split(spec.temperature_split, config, load_examples)
        datasets.append(dataset)
    for dataset, lacking in dropped.items():
        print(f"--datasets: leaving out {dataset} ({lacking})", flush=True)
    if not datasets:
        raise ConfigError(f"--datasets {','.join(spec.datasets)}: no dataset has the splits the runs need")
    points = [compose(m, d, s) for m in methods for d in datasets for s in spec.seeds]
    sources = {(d, s): source_run(d, s) for d in datasets for s in spec.seeds}
    return _Plan(datasets, points, sources, fit_offsets)


def _first_missing_split(config: RunConfig, splits: Sequence[str], load_examples: Callable[..., list]) -> str | None:
    """Why the first of ``splits`` that the data source lacks cannot be loaded; None when all load."""
    for split in dict.fromkeys(splits):
        try:
            load_examples(config, split, 1)
        except ConfigError as exc:
            return str(exc)
    return None


def _check_temperature_split(split: str, config: RunConfig, load_examples: Callable[..., list]) -> int:
    """How many examples of ``split`` the temperature fit skips (those MLE trained on); errors name the flag."""
    flag = f"--temperature-split {split} ({config.data.dataset})"
    if split == config.data.eval_split:
        raise ConfigError(f"{flag}: that is data.eval_split, the split the comparison reports; fit on another split")
    offset = 0
    if split == config.data.train_split:
        if config.data.max_train_examples is None:
            raise ConfigError(
                f"{flag}: MLE trains on the whole split (data.max_train_examples unset), so none of it is held out; "
                "set data.max_train_examples or choose another split"
            )
        offset = config.data.max_train_examples
    if len(load_examples(config, split, offset + 1)) <= offset:
        raise ConfigError(f"{flag}: no examples after the first {offset} (data.max_train_examples), all trained on")
    return offset


# --------------------------------------------------------------------------- running


def _run_temperature(
    point: SweepPoint, run_dir: Path, source_dir: Path, split: str, offset: int, progress: bool
) -> str:
    """Fit a temperature for the MLE run in ``source_dir`` and evaluate with it into ``run_dir``."""
    from ..runs import calibrate_temperature, evaluate_into, fit_examples, trained_session
    from ..training import load_examples

    source = RunDir(source_dir)
    source.require_trained()  # a failed MLE run fails this run, with its reason
    config = point.config
    held_out = fit_examples(config, split, offset, config.data.max_eval_examples)
    eval_examples = load_examples(config, config.data.eval_split, config.data.max_eval_examples)
    session = trained_session(source, config)
    fitted = calibrate_temperature(session, config, held_out, split, offset, progress)
    run = RunDir(run_dir)
    run.create()
    save_config(config, run.config)
    write_json_atomic(run.root / "temperature.json", {**fitted, "source_run": str(source.root)})
    scaled = dataclasses.replace(config, eval=dataclasses.replace(config.eval, temperature=fitted["temperature"]))
    evaluate_into(session, scaled, eval_examples, run.root, progress, extra={"method": TEMPERATURE})
    (run.root / "reliability.png").replace(run.plots / "reliability.png")
    return "finished"


def execute_compare(spec: CompareSpec, *, progress: bool = True, dry_run: bool = False) -> dict[str, Any]:
    """Validate the whole comparison, run the unfinished runs in order and write the report; returns the manifest.

    With ``dry_run`` only the plan (each run's action) is returned and nothing is written.
    """
    out = Path(spec.output_dir)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a directory (-o/--output-dir)")
    check_writable(out, "--output-dir")
    plan = _plan(spec)
    entries = plan_points(plan.points, out / "runs")
    for entry, point in zip(entries, plan.points, strict=True):
        entry["reported"] = point.values[_METHOD_KEY] in spec.methods
    manifest = {"spec": spec.to_dict(), "datasets": plan.datasets, "points": entries}
    if dry_run:
        return manifest

    def execute(point: SweepPoint, run_dir: Path, resume: bool) -> str:
        if point.values[_METHOD_KEY] != TEMPERATURE:
            return train_point(point, run_dir, resume, progress)
        dataset, seed = point.values[_DATA_KEY], point.values[_SEED_KEY]
        source = plan.sources[dataset, seed]
        return _run_temperature(point, run_dir, source, spec.temperature_split, plan.fit_offsets[dataset], progress)

    run_points(plan.points, manifest, out / "compare.json", progress=progress, execute=execute)
    results = [Path(e["run_dir"]) / "metrics.json" for e in entries if e["reported"] and e["status"] == "finished"]
    if results:
        written = write_report(results, out / "report", metrics=spec.metrics)
        aggregates = aggregate(collect_results(results), ("dataset", "method"))
        figures = (out / "report" / "metrics.png", out / "report" / "metrics.pdf")
        plot_comparison(aggregates, spec.metrics, figures, methods=spec.methods, datasets=plan.datasets)
        manifest["report"] = {**{k: str(v) for k, v in written.items()}, "figure": [str(p) for p in figures]}
    write_manifest(out / "compare.json", manifest)
    return manifest


# --------------------------------------------------------------------------- figure


def plot_comparison(
    aggregates: Sequence[AggregateRow],
    metrics: Sequence[str],
    paths: Sequence[Path],
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
) -> list[Path]:
    """Mean ± std over seeds of each metric (a panel each) per dataset (x) and method (colour and marker).

    ``aggregates`` are grouped by dataset and method; ``methods`` and ``datasets`` fix the order (by
    default sorted; ones without results are left out). Each path's suffix (png, pdf) picks its format.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {(a.key["dataset"], a.key["method"]): a for a in aggregates}
    methods = [m for m in (methods or sorted({m for _, m in cells})) if any(k[1] == m for k in cells)]
    datasets = [d for d in (datasets or sorted({d for d, _ in cells})) if any(k[0] == d for k in cells)]
    seeds = {a.n_seeds for a in aggregates}
    spread = f"mean ± std over {seeds.pop()} seeds" if len(seeds) == 1 else "mean ± std over seeds"
    slot = 0.8 / len(methods)  # each dataset spans 0.8 of a unit on x, one slot per method
    with plt.rc_context(PAPER_STYLE):
        fig, axes = plt.subplots(
            len(metrics),
            1,
            sharex=True,
            squeeze=False,
            figsize=(max(3.4, 1.0 + len(datasets) * (0.35 + 0.15 * len(methods))), 0.5 + 1.7 * len(metrics)),
        )
        try:
            for ax, metric in zip(axes[:, 0], metrics, strict=True):
                factor = float(DEFAULT_SCALE.get(metric, 1))
                for j, method in enumerate(methods):
                    xs, means, stds = [], [], []
                    for i, dataset in enumerate(datasets):
                        cell = cells.get((dataset, method))
                        if cell is not None and metric in cell.mean:
                            xs.append(i + (j - (len(methods) - 1) / 2) * slot)
                            means.append(cell.mean[metric] * factor)
                            stds.append(cell.std[metric] * factor)
                    ax.errorbar(
                        xs,
                        means,
                        yerr=stds,
                        fmt=_MARKERS[j % len(_MARKERS)],
                        color=_COLORS[j % len(_COLORS)],
                        ms=4,
                        elinewidth=0.9,
                        capsize=2.0,
                        capthick=0.9,
                        label=method,
                    )
                title, percent, higher = metric_header(metric, DEFAULT_SCALE)
                arrow = "" if higher is None else " ↑" if higher else " ↓"
                ax.set_ylabel(f"{title}{' (%)' if percent else ''}{arrow}")
                for i in range(len(datasets) - 1):
                    ax.axvline(i + 0.5, color="0.85", lw=0.6)
                ax.grid(axis="y", alpha=0.3, lw=0.5)
                ax.set_axisbelow(True)
            bottom = axes[-1, 0]
            bottom.set_xticks(range(len(datasets)))
            rotate = len(datasets) > 4 or max(len(d) for d in datasets) > 12
            bottom.set_xticklabels(datasets, rotation=30 if rotate else 0, ha="right" if rotate else "center")
            bottom.set_xlim(-0.5, len(datasets) - 0.5)
            handles, labels = axes[0, 0].get_legend_handles_labels()
            fig.legend(
                handles,
                labels,
                loc="upper center",
                ncol=min(len(methods), 5),
                frameon=False,
                title=spread,
                title_fontsize=7.5,
                bbox_to_anchor=(0.5, 1.0),
            )
            legend_rows = 1 + -(-len(methods) // 5)  # the title and the entries
            fig.tight_layout(rect=(0, 0, 1, 1 - 0.22 * legend_rows / fig.get_figheight()))
            for path in paths:
                save_figure(fig, Path(path), file_format=Path(path).suffix.lstrip("."), dpi=200)
        finally:
            plt.close(fig)
    return [Path(p) for p in paths]


def compare(
    methods: str | Sequence[str],
    datasets: str | Sequence[str],
    output_dir: str | Path,
    *,
    seeds: str | Sequence[int] = (1, 2, 3),
    config: str | Path | None = None,
    config_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    temperature_split: str = "train",
    dry_run: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Compare methods on datasets over seeds, as ``bayespeft compare`` does; returns the manifest.

    Lists may be comma-separated strings (``"blob,mle"``); ``config`` is the base config composed
    with ``overrides``. Re-running skips finished runs and resumes the others; with ``dry_run``
    only the plan is returned.
    """
    if isinstance(seeds, str):
        try:
            seeds = [int(seed) for seed in split_list(seeds, "--seeds")]
        except ValueError:
            raise ConfigError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
    spec = CompareSpec(
        methods=split_list(methods, "--methods"),
        datasets=split_list(datasets, "--datasets"),
        seeds=list(seeds),
        output_dir=Path(output_dir),
        base=None if config is None else Path(config),
        config_dir=None if config_dir is None else Path(config_dir),
        overrides=list(overrides),
        metrics=split_list(metrics, "--metrics"),
        temperature_split=temperature_split,
    )
    return execute_compare(spec, progress=progress, dry_run=dry_run)
