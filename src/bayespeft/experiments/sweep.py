"""Sweeps: run a grid of configurations, each point a normal run directory.

``bayespeft sweep SPEC.yaml`` (or flags, which win over the spec) reads::

    base: configs/base.yaml        # a config file (composed: defaults, groups) or an inline mapping
    config_dir: configs            # folder of the group files (default: the base file's folder)
    overrides: [train.max_steps=100]           # fixed for every point
    grid: {method.beta: [0.1, 0.2, 0.3], method.gamma: [4, 8, 12]}  # a key without a dot picks group files
    seeds: [1, 2]                  # train.seed
    datasets: [arc_easy]           # data.dataset
    output_dir: runs/sweep1

Paths are relative to the working directory. Points are the cartesian product of the grid
values, datasets and seeds; every point's config is composed and validated before anything
runs. Each point runs in ``<output_dir>/<name>`` (e.g. ``beta=0.1__gamma=4__seed=1__data=arc_easy``):
a point with ``metrics.json`` is skipped, one with a saved config is resumed, the others start;
a directory holding a run of another config is an error. ``<output_dir>`` also gets:

``sweep.json``     the manifest: spec, points (values, overrides, status, summary), written atomically
``plots/<q>.png``  for q in nll, kl, weighted_kl, neg_elbo: the per-step trajectory, one line per
                   configuration (mean over seeds, each seed thin); quantities no run logs are skipped
``results.md``     per point: final KL and weighted KL, negative ELBO (mean over the last 10% of steps),
                   ACC, ECE, NLL; then mean ± population std over seeds per configuration
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint import read_json, write_json_atomic, write_text_atomic
from ..compose import GROUPS, override_item, read_yaml
from ..config import RunConfig, flatten_dict, load_config
from ..errors import BayesPeftError, ConfigError, RunDirError
from ..rundir import check_writable
from .report import aggregate, collect_results, to_markdown

__all__ = [
    "QUANTITIES",
    "SweepPoint",
    "SweepSpec",
    "execute_sweep",
    "expand_sweep",
    "load_sweep_spec",
    "parse_grid_option",
    "plan_points",
    "point_name",
    "run_points",
    "sweep",
    "train_point",
    "write_manifest",
]

#: Per-step quantities of ``train_log.jsonl`` plotted per sweep: key -> axis title.
QUANTITIES = {"nll": "NLL (batch)", "kl": "KL", "weighted_kl": "weighted KL (π · KL)", "neg_elbo": "−ELBO (batch)"}
_SPEC_KEYS = ("base", "config_dir", "overrides", "grid", "seeds", "datasets", "output_dir")
_SEED_KEY, _DATA_KEY = "train.seed", "data.dataset"


@dataclass
class SweepSpec:
    """What to sweep: a base config, fixed overrides, the grid, seeds, datasets and the output folder."""

    base: Path | dict[str, Any] | None = None
    config_dir: Path | None = None
    overrides: list[str] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] | None = None
    datasets: list[str] | None = None
    output_dir: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return spec_dict(self)


def spec_dict(spec: Any) -> dict[str, Any]:
    """A spec dataclass as plain data for a manifest (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(spec).items()}


@dataclass(frozen=True)
class SweepPoint:
    """One run of the sweep: its swept values (dotted key or group -> value) and resolved config."""

    name: str
    values: dict[str, Any]
    overrides: list[str]
    label: str  # the configuration without the seed (one line in the plots)
    row: str  # the configuration without seed and dataset (one row of the seed-averaged table)
    config: RunConfig


# --------------------------------------------------------------------------- spec


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read a sweep spec YAML; errors name the file and the field."""
    path = Path(path)
    raw = read_yaml(path, "sweep spec") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with {', '.join(_SPEC_KEYS)}")
    unknown = sorted(set(raw) - set(_SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key {unknown[0]!r} (known: {', '.join(_SPEC_KEYS)})")
    base = raw.get("base")
    if base is not None and not isinstance(base, str | dict):
        raise ConfigError(f"{path}: base must be a config file path or a mapping, got {base!r}")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: grid must map keys to lists of values, got {grid!r}")
    for key, values in grid.items():
        if not isinstance(values, list):
            raise ConfigError(
                f"{path}: grid {key} must be a list of values, got {values!r} (fixed values go in overrides)"
            )
    overrides = raw.get("overrides") or []
    if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        raise ConfigError(f"{path}: overrides must be a list of 'key=value' strings, got {overrides!r}")
    return SweepSpec(
        base=Path(base) if isinstance(base, str) else base,
        config_dir=_optional_path(raw.get("config_dir"), path, "config_dir"),
        overrides=overrides,
        grid={str(k).strip(): v for k, v in grid.items()},
        seeds=raw.get("seeds"),
        datasets=raw.get("datasets"),
        output_dir=_optional_path(raw.get("output_dir"), path, "output_dir"),
    )


def _optional_path(value: Any, path: Path, name: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: {name} must be a path, got {value!r}")
    return Path(value)


def parse_grid_option(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["method.beta=0.1,0.2", "model.lora.target_modules=[[q_proj],[q_proj,v_proj]]"]`` -> grid.

    Values are split on commas and read as YAML; a value starting with ``[`` is one YAML list.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. method.beta=0.1,0.2")
        if key in grid:
            raise ConfigError(f"contradictory sweep: --grid gives {key} twice")
        if text.strip().startswith("["):
            values = yaml.safe_load(text)
            if not isinstance(values, list):
                raise ConfigError(f"--grid {item!r}: expected a YAML list of values")
        else:
            values = [yaml.safe_load(v) for v in text.split(",") if v.strip()]
        grid[key] = values
    return grid


# --------------------------------------------------------------------------- expansion


def expand_sweep(spec: SweepSpec) -> list[SweepPoint]:
    """The points of ``spec``, each config composed and validated; nothing is written.

    Raises ConfigError for an empty sweep or value list, a repeated value, a key both swept
    and fixed, and for any point whose config is invalid (naming the point's values).
    """
    axes = dict(spec.grid)
    for key, values, what in ((_DATA_KEY, spec.datasets, "datasets"), (_SEED_KEY, spec.seeds, "seeds")):
        if values is None:
            continue
        if key in axes:
            raise ConfigError(f"contradictory sweep: {key} is in the grid and in {what}; give it once")
        if not isinstance(values, list):
            raise ConfigError(f"{what} must be a list, got {values!r}")
        axes[key] = values
    if not axes:
        raise ConfigError("empty sweep: give a grid, seeds or datasets to vary")
    fixed = {item.partition("=")[0].strip(): item for item in spec.overrides}
    for key, values in axes.items():
        if key in fixed:
            raise ConfigError(f"contradictory sweep: {key} is swept and also fixed by override {fixed[key]!r}")
        if not values:
            raise ConfigError(f"empty sweep grid: {key} has no values")
        seen: list[Any] = []
        for value in values:
            if value in seen:
                raise ConfigError(f"sweep grid {key} lists {value!r} twice")
            seen.append(value)
    _check_axis_types(spec, axes)

    load_config(spec.base, spec.overrides, config_dir=spec.config_dir)  # base errors, once
    short = _short_names(list(axes))
    points: list[SweepPoint] = []
    names: dict[str, dict[str, Any]] = {}
    for combination in itertools.product(*axes.values()):
        values = dict(zip(axes, combination, strict=True))
        name = point_name(values)
        described = ", ".join(f"{k}={_text(v)}" for k, v in values.items())
        if name in names:
            raise ConfigError(f"sweep points ({described}) and ({names[name]}) get the same directory name {name}")
        names[name] = described
        overrides = [*spec.overrides, *(override_item(k, v) for k, v in values.items())]
        try:
            config = load_config(spec.base, overrides, config_dir=spec.config_dir)
        except ConfigError as exc:
            raise ConfigError(f"sweep point {name} ({described}): {exc}") from None
        swept = {k: v for k, v in values.items() if k != _SEED_KEY}
        grid_part = [f"{short[k]}={_text(v)}" for k, v in swept.items() if k != _DATA_KEY]
        points.append(
            SweepPoint(
                name=name,
                values=values,
                overrides=overrides,
                label=" ".join(f"{short[k]}={_text(v)}" for k, v in swept.items()) or config.method.name,
                row=", ".join(grid_part) or config.method.name,
                config=config,
            )
        )
    return points


def _check_axis_types(spec: SweepSpec, axes: Mapping[str, list[Any]]) -> None:
    for seed in spec.seeds or []:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seeds must be integers, got {seed!r}")
    for dataset in spec.datasets or []:
        if not isinstance(dataset, str) or not dataset:
            raise ConfigError(f"datasets must be dataset names, got {dataset!r}")
    for key in (k for k in axes if "." not in k):
        if key not in GROUPS:
            raise ConfigError(
                f"sweep grid {key}: unknown config group (groups: {', '.join(GROUPS)}); "
                "sweep a single value with a dotted key such as method.beta"
            )
        bad = [v for v in axes[key] if not isinstance(v, str) or not v]
        if bad:
            raise ConfigError(f"sweep grid {key} selects {key} config files by name; got {bad[0]!r}")


def point_name(values: Mapping[str, Any]) -> str:
    """A point's directory name: ``key=value`` parts joined by ``__`` (short keys, unsafe characters replaced)."""
    short = _short_names(list(values))
    return "__".join(f"{short[k]}={_sanitise(_text(v))}" for k, v in values.items())


def _short_names(keys: list[str]) -> dict[str, str]:
    """Directory-name keys: the last part of a dotted key unless two keys share it; seed and data."""
    fixed = {_SEED_KEY: "seed", _DATA_KEY: "data"}
    last = [fixed.get(k, k.rsplit(".", 1)[-1]) for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last, strict=True)}


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(_text(v) for v in value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def _sanitise(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "-", text)


# --------------------------------------------------------------------------- running


def execute_sweep(spec: SweepSpec, *, progress: bool = True, dry_run: bool = False) -> dict[str, Any]:
    """Validate every point, then run the unfinished ones in order; returns the manifest.

    A point failing with a BayesPeftError is recorded as failed and the sweep goes on.
    With ``dry_run`` only the plan (each point's action) is returned and nothing is written.
    """
    if spec.output_dir is None or not str(spec.output_dir).strip():
        raise ConfigError("sweep: no output directory (output_dir in the spec or -o)")
    out = Path(spec.output_dir)
    check_writable(out, "--output-dir")
    points = expand_sweep(spec)
    entries = plan_points(points, out)
    manifest = {"spec": spec.to_dict(), "points": entries}
    if dry_run:
        return manifest
    run_points(points, manifest, out / "sweep.json", progress=progress)
    finished = [(p, e) for p, e in zip(points, entries, strict=True) if e["status"] == "finished"]
    for point, entry in finished:
        entry["summary"] = point_summary(out / point.name)
    if finished:
        manifest["plots"] = [str(p) for p in plot_sweep([(p, out / p.name) for p, _ in finished], out / "plots")]
        write_text_atomic(out / "results.md", results_markdown(finished, out))
        manifest["results"] = str(out / "results.md")
    write_manifest(out / "sweep.json", manifest)
    return manifest


def plan_points(points: Sequence[SweepPoint], out: Path) -> list[dict[str, Any]]:
    """The manifest entry of each point run in ``out/<name>``, with its action; nothing is written.

    Raises RunDirError when ``out`` is a file or a point's directory holds another run.
    """
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a directory")
    return [
        {
            "name": p.name,
            "run_dir": str(out / p.name),
            "values": p.values,
            "overrides": p.overrides,
            "action": _action(out / p.name, p.config),
            "status": "pending",
        }
        for p in points
    ]


def run_points(
    points: Sequence[SweepPoint],
    manifest: dict[str, Any],
    manifest_path: Path,
    *,
    progress: bool = True,
    execute: Callable[[SweepPoint, Path, bool], str] | None = None,
) -> None:
    """Run the points (entries ``manifest["points"]`` from :func:`plan_points`) in order, skipping finished ones.

    ``execute(point, run_dir, resume)`` runs one point and returns its status (default: :func:`train_point`);
    a point failing with a BayesPeftError is recorded as failed and the others go on. The manifest
    is written to ``manifest_path`` before and after every run.
    """
    execute = execute or functools.partial(train_point, progress=progress)
    entries = manifest["points"]
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest_path, manifest)
    for index, (point, entry) in enumerate(zip(points, entries, strict=True), 1):
        print(f"[{index}/{len(points)}] {point.name}: {entry['action']}", flush=True)
        if entry["action"] == "skip":
            entry["status"] = "finished"
            continue
        entry["status"] = "running"
        write_manifest(manifest_path, manifest)
        try:
            entry["status"] = execute(point, Path(entry["run_dir"]), entry["action"] == "resume")
        except BayesPeftError as exc:
            entry.update(status="failed", error=str(exc))
            print(f"[{index}/{len(points)}] {point.name}: failed: {exc}", flush=True)
        write_manifest(manifest_path, manifest)


def train_point(point: SweepPoint, run_dir: Path, resume: bool, progress: bool = True) -> str:
    """Train (or resume) one point in ``run_dir``; returns the run's status."""
    from ..training import Trainer

    return Trainer(point.config, run_dir, resume=resume, progress=progress).run_training()["status"]


def _action(run_dir: Path, config: RunConfig) -> str:
    """``skip`` (finished), ``resume`` (a saved config) or ``start``; a run of another config is an error."""
    saved = run_dir / "config.yaml"
    if saved.is_file():
        theirs, ours = flatten_dict(load_config(saved).to_dict()), flatten_dict(config.to_dict())
        for key in sorted(set(theirs) | set(ours)):
            if theirs.get(key) != ours.get(key):
                raise RunDirError(
                    f"{run_dir}: holds a run of another config ({key}: {theirs.get(key)!r} there, "
                    f"{ours.get(key)!r} in this sweep); delete it or choose another output directory"
                )
        return "skip" if (run_dir / "metrics.json").is_file() else "resume"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise RunDirError(
            f"{run_dir}: not empty but holds no config.yaml; delete it or choose another output directory"
        )
    return "start"


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Stamp ``manifest`` with the time and write it to ``path`` atomically."""
    manifest["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(path, manifest)


# --------------------------------------------------------------------------- results


def _train_log(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "train_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def point_summary(run_dir: Path) -> dict[str, float | None]:
    """Final KL and weighted KL, −ELBO averaged over the last 10% of steps, and the eval scores."""
    records = _train_log(run_dir)
    tail = records[-max(1, math.ceil(len(records) / 10)) :]
    elbo = [r["neg_elbo"] for r in tail if "neg_elbo" in r]
    scores = read_json(run_dir / "metrics.json")["metrics"]
    return {
        "final_kl": records[-1].get("kl") if records else None,
        "final_weighted_kl": records[-1].get("weighted_kl") if records else None,
        "neg_elbo": statistics.fmean(elbo) if elbo else None,
        **{name: scores.get(name) for name in ("acc", "ece", "nll")},
    }


def results_markdown(finished: Sequence[tuple[SweepPoint, dict[str, Any]]], out: Path) -> str:
    """The per-point table and the table of means ± population std over seeds."""

    def cell(value: float | None, factor: float = 1.0, fmt: str = ".4g") -> str:
        return "–" if value is None else format(value * factor, fmt)

    lines = [
        f"# Sweep results: {out}",
        "",
        "KL and weighted KL at the last training step; −ELBO: mean of the per-step (batch) negative ELBO "
        "over the last 10% of steps; ACC, ECE and NLL from the final evaluation.",
        "",
        "| Point | KL | Weighted KL | −ELBO | ACC (%) | ECE (%) | NLL |",
        "|:---|---:|---:|---:|---:|---:|---:|",
    ]
    for point, entry in finished:
        s = entry["summary"]
        cells = [
            cell(s["final_kl"]),
            cell(s["final_weighted_kl"]),
            cell(s["neg_elbo"]),
            cell(s["acc"], 100, ".2f"),
            cell(s["ece"], 100, ".2f"),
            cell(s["nll"]),
        ]
        lines.append(f"| {point.name} | " + " | ".join(cells) + " |")
    rows = []
    for point, entry in finished:
        (row,) = collect_results([out / point.name / "metrics.json"])
        extra = {k: entry["summary"][s] for k, s in (("kl", "final_kl"), ("neg_elbo", "neg_elbo"))}
        metrics = {**row.metrics, **{k: v for k, v in extra.items() if v is not None}}
        rows.append(dataclasses.replace(row, method=point.row, metrics=metrics))
    metrics = ["acc", "ece", "nll", *(m for m in ("kl", "neg_elbo") if any(m in r.metrics for r in rows))]
    lines += [
        "",
        "## Mean ± std over seeds",
        "",
        "Population std (ddof=0); Method is the configuration; kl is the final KL, neg_elbo the −ELBO above.",
        "",
        to_markdown(aggregate(rows, ("dataset", "method")), metrics).rstrip(),
    ]
    return "\n".join(lines) + "\n"


def plot_sweep(runs: Sequence[tuple[SweepPoint, Path]], plots_dir: Path) -> list[Path]:
    """One figure per logged quantity, one line per configuration (mean over seeds, seeds thin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    logs = {run_dir: _train_log(run_dir) for _, run_dir in runs}
    configurations: dict[str, list[Path]] = {}
    for point, run_dir in runs:
        configurations.setdefault(point.label, []).append(run_dir)
    written = []
    for key, title in QUANTITIES.items():
        if not any(key in r for records in logs.values() for r in records):
            continue
        fig, ax = plt.subplots(figsize=(7.0, 4.2))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        everything: list[float] = []
        for index, (label, run_dirs) in enumerate(configurations.items()):
            color = colors[index % len(colors)]
            by_step: dict[int, list[float]] = {}
            for run_dir in run_dirs:
                series = [(r["step"], r[key]) for r in logs[run_dir] if key in r]
                if len(run_dirs) > 1 and series:
                    ax.plot(*zip(*series, strict=True), color=color, lw=0.6, alpha=0.3)
                for step, value in series:
                    by_step.setdefault(step, []).append(value)
            if by_step:
                steps = sorted(by_step)
                means = [statistics.fmean(by_step[s]) for s in steps]
                ax.plot(steps, means, color=color, lw=1.5, label=label)
                everything += means
        if everything and min(everything) > 0 and max(everything) > 100 * min(everything):
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel(title)
        ax.set_title(
            f"{title} per step" + (" (mean over seeds)" if any(len(d) > 1 for d in configurations.values()) else "")
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        plots_dir.mkdir(parents=True, exist_ok=True)
        path = plots_dir / f"{key}.png"
        fig.savefig(path, dpi=130, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def sweep(
    spec: str | Path | SweepSpec | None = None,
    *,
    overrides: Sequence[str] = (),
    config: str | Path | None = None,
    config_dir: str | Path | None = None,
    grid: Sequence[str] = (),
    seeds: str | Sequence[int] | None = None,
    datasets: str | Sequence[str] | None = None,
    output_dir: str | Path | None = None,
    dry_run: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every point of a config grid, as ``bayespeft sweep`` does; returns the manifest.

    ``spec`` is a sweep spec (YAML file or :class:`SweepSpec`); the other arguments go on top of
    it, as the command line's do: fixed ``overrides``, ``grid`` items ``key=v1,v2``, ``seeds`` and
    ``datasets`` (lists or comma-separated). Re-running skips finished points; ``dry_run`` runs nothing.
    """
    if isinstance(spec, SweepSpec):
        spec = dataclasses.replace(spec)
    else:
        spec = load_sweep_spec(spec) if spec is not None else SweepSpec()
    spec.overrides = [*spec.overrides, *overrides]
    spec.grid = {**spec.grid, **parse_grid_option(grid)}
    if config is not None:
        spec.base = Path(config)
    if config_dir is not None:
        spec.config_dir = Path(config_dir)
    if isinstance(seeds, str):
        try:
            seeds = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
    if seeds is not None:
        spec.seeds = list(seeds)
    if isinstance(datasets, str):
        datasets = [d.strip() for d in datasets.split(",") if d.strip()]
    if datasets is not None:
        spec.datasets = list(datasets)
    if output_dir is not None:
        spec.output_dir = Path(output_dir)
    return execute_sweep(spec, progress=progress, dry_run=dry_run)
