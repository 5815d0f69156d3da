"""Aggregate run directories into paper tables and figures.

``bayespeft report RUN_DIR... -o OUT`` finds every ``metrics.json`` under the given
paths (a run directory, one of its ``eval/<name>`` folders, or any folder holding runs;
``checkpoints/`` folders and hidden folders are skipped), groups the results by
``(dataset, method, n_samples)`` and writes into ``OUT``:

``results.md``          Markdown table, one row per method (and N), columns per dataset
``results.tex``         the same table as a booktabs LaTeX ``tabular``
``results.json``        the aggregates (mean, std, seeds and source files of each group)
``reliability_grid.png`` reliability diagrams, one panel per dataset (row) and method (column)

Statistics. Each group's metrics are averaged over its seeds, and the spread is the
**population** standard deviation (``ddof=0``, dividing by the number of seeds), as
in the tables of the BLoB paper; one seed gives a std of 0. A group holding the same
seed twice (for instance a run and one of its ``eval/`` results on the same data with
the same N, or two backbones when ``model`` is not grouped on) is an error naming both
files. Cells show ``mean ± std`` with acc and ECE in percent; the best mean of each
dataset and metric, compared as displayed, is bold (highest ACC and AUROC, lowest
ECE, NLL and Brier; entropy and mutual information have no "best" and are never bold,
and neither is a column with a single entry).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_json, write_bytes_atomic, write_json_atomic, write_text_atomic
from ..choices import DEFAULT_GROUP_BY, GROUP_FIELDS, REPORT_METRICS
from ..errors import BayesPeftError, ConfigError, RunDirError
from ..metrics.checks import check_n_bins
from ..metrics.reliability import (
    bin_confidences,
    draw_diagonal,
    draw_reliability_bars,
    reliability_legend_handles,
)
from ..rundir import check_writable

__all__ = [
    "DEFAULT_GROUP_BY",
    "DEFAULT_METRICS",
    "DEFAULT_SCALE",
    "GROUP_FIELDS",
    "PAPER_STYLE",
    "AggregateRow",
    "ResultRow",
    "aggregate",
    "collect_results",
    "latex_escape",
    "load_predictions",
    "plot_reliability_grid",
    "report",
    "save_figure",
    "split_list",
    "to_latex",
    "to_markdown",
    "write_report",
]

DEFAULT_METRICS = REPORT_METRICS
#: Metrics shown multiplied by these factors (percent); the others as they are.
DEFAULT_SCALE: Mapping[str, float] = {"acc": 100, "ece": 100}

# Counts written next to the scores in metrics.json; they are not averaged.
_BOOKKEEPING = frozenset({"num_examples", "num_samples", "n_bins"})
_METRIC_ORDER = ("acc", "ece", "nll", "brier", "entropy", "mutual_information")
_LOWER_IS_BETTER = frozenset({"ece", "nll", "brier"})
_NAMES = {
    "acc": "ACC",
    "ece": "ECE",
    "nll": "NLL",
    "brier": "Brier",
    "entropy": "Entropy",
    "mutual_information": "MI",
    "auroc_entropy": "AUROC (entropy)",
    "auroc_max_prob": "AUROC (max prob)",
    "auroc_mutual_information": "AUROC (MI)",
}
#: Matplotlib rc settings of the report figures: small type for a paper column, no top/right spines.
PAPER_STYLE: Mapping[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8.5,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_FIELD_NAMES = {"method": "Method", "model": "Model", "dataset": "Dataset", "split": "Split", "n_samples": "N"}


# --------------------------------------------------------------------------- collecting


@dataclass(frozen=True)
class ResultRow:
    """One evaluation: the contents of one ``metrics.json``.

    ``metrics`` keeps only the numeric entries; ``source`` is the ``metrics.json`` path,
    and the per-example records are in ``predictions_path`` next to it.
    """

    method: str
    model: str | None
    dataset: str
    split: str | None
    seed: int
    n_samples: int | None
    metrics: dict[str, float]
    source: Path

    @property
    def directory(self) -> Path:
        return self.source.parent

    @property
    def predictions_path(self) -> Path:
        return self.source.parent / "predictions.jsonl"

    def field(self, name: str) -> Any:
        if name not in GROUP_FIELDS and name != "seed":
            raise ConfigError(f"unknown group-by field {name!r} (--group-by); choose from {', '.join(GROUP_FIELDS)}")
        return getattr(self, name)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_result(path: Path) -> ResultRow:
    data = read_json(path)
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object with method, dataset, seed and metrics")

    def text(name: str, required: bool) -> str | None:
        value = data.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise RunDirError(f"{path}: field {name!r} must be a non-empty string, got {value!r}")
        return value

    def integer(name: str, required: bool) -> int | None:
        value = data.get(name)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise RunDirError(f"{path}: field {name!r} must be an integer, got {value!r}")
        return value

    metrics = data.get("metrics")
    if not isinstance(metrics, dict):
        raise RunDirError(f"{path}: field 'metrics' must be an object of scores, got {metrics!r}")
    return ResultRow(
        method=text("method", True),
        model=text("model", False),
        dataset=text("dataset", True),
        split=text("split", False),
        seed=integer("seed", True),
        n_samples=integer("n_samples", False),
        metrics={k: float(v) for k, v in metrics.items() if _is_number(v)},
        source=path,
    )


def _find_metrics(root: Path) -> list[Path]:
    found = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "checkpoints" and not d.startswith("."))
        if "metrics.json" in filenames:
            found.append(Path(directory) / "metrics.json")
    return found


def collect_results(paths: Sequence[str | os.PathLike[str]]) -> list[ResultRow]:
    """Read every ``metrics.json`` at or below ``paths`` (each found once), in path order.

    Raises ``RunDirError`` naming the file for a missing path or a malformed
    ``metrics.json``, and ``BayesPeftError`` naming the paths when nothing is found.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise BayesPeftError("no run directories given")
    seen: set[Path] = set()
    rows = []
    for root in paths:
        if root.is_file() and root.name == "metrics.json":
            files = [root]
        elif root.is_dir():
            files = _find_metrics(root)
        else:
            raise RunDirError(f"{root}: no such run directory")
        for file in files:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                rows.append(_parse_result(file))
    if not rows:
        raise BayesPeftError(f"no metrics.json found under {', '.join(str(p) for p in paths)}")
    return rows


def load_predictions(path: str | os.PathLike[str]) -> list[dict]:
    """The records of a ``predictions.jsonl`` (blank lines skipped); ``RunDirError`` names file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise RunDirError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: cannot read: {exc}") from exc
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{path}:{lineno}: malformed JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise RunDirError(f"{path}:{lineno}: expected a JSON object per line")
        records.append(record)
    return records


# --------------------------------------------------------------------------- aggregating


@dataclass(frozen=True)
class AggregateRow:
    """Mean and population std (ddof=0) over the seeds of one group.

    ``key`` maps each group-by field to its value; ``mean``/``std`` hold every metric
    that all runs of the group report.
    """

    key: dict[str, Any]
    mean: dict[str, float]
    std: dict[str, float]
    seeds: tuple[int, ...]
    sources: tuple[Path, ...] = field(default=())

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.key,
            "n_seeds": self.n_seeds,
            "seeds": list(self.seeds),
            "mean": dict(self.mean),
            "std": dict(self.std),
            "sources": [str(p) for p in self.sources],
        }


def _sort_key(value: Any) -> tuple:
    return (value is None, type(value).__name__, value if value is not None else 0)


def _check_group_by(group_by: Iterable[str]) -> tuple[str, ...]:
    group_by = tuple(group_by)
    if not group_by:
        raise ConfigError("group-by (--group-by) must name at least one field")
    for name in group_by:
        if name not in GROUP_FIELDS:
            raise ConfigError(f"unknown group-by field {name!r} (--group-by); choose from {', '.join(GROUP_FIELDS)}")
    if len(set(group_by)) != len(group_by):
        raise ConfigError(f"group-by (--group-by) repeats a field: {', '.join(group_by)}")
    return group_by


def _ordered_metrics(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [m for m in _METRIC_ORDER if m in names] + sorted(names - set(_METRIC_ORDER))


def aggregate(rows: Sequence[ResultRow], group_by: Sequence[str] = DEFAULT_GROUP_BY) -> list[AggregateRow]:
    """Group ``rows`` and average each metric over seeds (population std, ddof=0).

    Groups are sorted by their key. Two rows of a group with the same seed raise
    ``RunDirError`` naming both files.
    """
    group_by = _check_group_by(group_by)
    groups: dict[tuple, list[ResultRow]] = {}
    for row in rows:
        groups.setdefault(tuple(row.field(name) for name in group_by), []).append(row)
    result = []
    for key in sorted(groups, key=lambda k: tuple(_sort_key(v) for v in k)):
        members = groups[key]
        by_seed: dict[int, ResultRow] = {}
        for row in members:
            if row.seed in by_seed:
                desc = ", ".join(f"{n}={v}" for n, v in zip(group_by, key, strict=True))
                raise RunDirError(
                    f"seed {row.seed} appears twice in group ({desc}): {by_seed[row.seed].source} and {row.source}; "
                    "remove one or group on more fields (--group-by, e.g. add model or split)"
                )
            by_seed[row.seed] = row
        members = sorted(members, key=lambda r: r.seed)
        shared = set.intersection(*(set(r.metrics) for r in members)) - _BOOKKEEPING
        mean, std = {}, {}
        for name in _ordered_metrics(shared):
            values = [r.metrics[name] for r in members]
            mu = math.fsum(values) / len(values)
            mean[name] = mu
            std[name] = math.sqrt(math.fsum((v - mu) ** 2 for v in values) / len(values))
        result.append(
            AggregateRow(
                key=dict(zip(group_by, key, strict=True)),
                mean=mean,
                std=std,
                seeds=tuple(r.seed for r in members),
                sources=tuple(r.source for r in members),
            )
        )
    return result


# --------------------------------------------------------------------------- tables


@dataclass
class _Table:
    row_fields: list[str]
    datasets: list[Any]  # column groups; [None] when results are not grouped by dataset
    metrics: list[str]
    labels: list[tuple]
    cells: list[dict[tuple[Any, str], str]]  # (dataset, metric) -> "mean ± std" text
    best: set[tuple[int, Any, str]]  # (row index, dataset, metric) shown in bold


def _higher_is_better(metric: str) -> bool | None:
    if metric == "acc" or metric.startswith("auroc"):
        return True
    if metric in _LOWER_IS_BETTER:
        return False
    return None


def _build_table(
    aggregates: Sequence[AggregateRow], metrics: Sequence[str], scale: Mapping[str, float] | None, digits: int
) -> _Table:
    if not aggregates:
        raise BayesPeftError("no results to tabulate")
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(metrics)
    if not metrics:
        raise ConfigError("metrics (--metrics) must name at least one metric")
    available = set().union(*(a.mean for a in aggregates))
    for name in metrics:
        if name not in available:
            raise ConfigError(
                f"unknown metric {name!r} (--metrics); the results have: {', '.join(_ordered_metrics(available))}"
            )
    scale = DEFAULT_SCALE if scale is None else scale
    fields = list(aggregates[0].key)
    row_fields = [f for f in fields if f != "dataset"]
    by_dataset = "dataset" in fields
    datasets = sorted({a.key["dataset"] for a in aggregates}, key=_sort_key) if by_dataset else [None]

    labels: list[tuple] = []
    index: dict[tuple, int] = {}
    for agg in aggregates:
        label = tuple(agg.key[f] for f in row_fields)
        if label not in index:
            index[label] = len(labels)
            labels.append(label)
    order = sorted(range(len(labels)), key=lambda i: tuple(_sort_key(v) for v in labels[i]))
    position = {old: new for new, old in enumerate(order)}
    labels = [labels[i] for i in order]

    cells: list[dict[tuple[Any, str], str]] = [{} for _ in labels]
    shown: dict[tuple[Any, str], list[tuple[int, float]]] = {}
    for agg in aggregates:
        row = position[index[tuple(agg.key[f] for f in row_fields)]]
        dataset = agg.key["dataset"] if by_dataset else None
        for name in metrics:
            if name not in agg.mean:
                continue
            factor = float(scale.get(name, 1))
            mean = round(agg.mean[name] * factor, digits)
            cells[row][dataset, name] = f"{mean:.{digits}f} ± {agg.std[name] * factor:.{digits}f}"
            shown.setdefault((dataset, name), []).append((row, mean))

    best = set()
    for (dataset, name), entries in shown.items():
        direction = _higher_is_better(name)
        if direction is None or len(entries) < 2:
            continue
        target = (max if direction else min)(v for _, v in entries)
        best.update((row, dataset, name) for row, v in entries if v == target)
    return _Table(row_fields, datasets, metrics, labels, cells, best)


def metric_header(name: str, scale: Mapping[str, float] | None) -> tuple[str, bool, bool | None]:
    scale = DEFAULT_SCALE if scale is None else scale
    return _NAMES.get(name, name), float(scale.get(name, 1)) == 100, _higher_is_better(name)


def _plain(value: Any) -> str:
    return "–" if value is None else str(value)


def to_markdown(
    aggregates: Sequence[AggregateRow],
    metrics: Sequence[str] = DEFAULT_METRICS,
    scale: Mapping[str, float] | None = None,
    digits: int = 2,
) -> str:
    """A Markdown table: one row per method (and N), a column per dataset and metric.

    ``scale`` multiplies each metric (default :data:`DEFAULT_SCALE`, acc and ECE in
    percent). Cells read ``61.23 ± 0.45``; the best of each column is ``**bold**``.
    """
    table = _build_table(aggregates, metrics, scale, digits)

    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    header = [_FIELD_NAMES.get(f, f) for f in table.row_fields]
    for dataset in table.datasets:
        for name in table.metrics:
            title, percent, higher = metric_header(name, scale)
            text = f"{title}{' (%)' if percent else ''}{'' if higher is None else ' ↑' if higher else ' ↓'}"
            header.append(esc(text if dataset is None else f"{dataset} {text}"))
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] * len(table.row_fields) + ["---:"] * (len(header) - len(table.row_fields))) + "|",
    ]
    for i, label in enumerate(table.labels):
        cells = [esc(_plain(v)) for v in label]
        for dataset in table.datasets:
            for name in table.metrics:
                text = table.cells[i].get((dataset, name), "–")
                cells.append(f"**{text}**" if (i, dataset, name) in table.best else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (underscores included) in plain text."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(
    aggregates: Sequence[AggregateRow],
    metrics: Sequence[str] = DEFAULT_METRICS,
    scale: Mapping[str, float] | None = None,
    digits: int = 2,
) -> str:
    """The :func:`to_markdown` table as a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    table = _build_table(aggregates, metrics, scale, digits)
    n_label = len(table.row_fields)
    n_metrics = len(table.metrics)
    lines = [r"\begin{tabular}{" + "l" * n_label + "c" * (n_metrics * len(table.datasets)) + "}", r"\toprule"]
    if table.datasets != [None]:
        groups = [rf"\multicolumn{{{n_metrics}}}{{c}}{{{latex_escape(str(d))}}}" for d in table.datasets]
        lines.append(" & ".join([""] * n_label + groups) + r" \\")
        rules = []
        for j in range(len(table.datasets)):
            start = n_label + j * n_metrics + 1
            rules.append(rf"\cmidrule(lr){{{start}-{start + n_metrics - 1}}}")
        lines.append(" ".join(rules))
    header = [r"$N$" if f == "n_samples" else latex_escape(_FIELD_NAMES.get(f, f)) for f in table.row_fields]
    for _ in table.datasets:
        for name in table.metrics:
            title, percent, higher = metric_header(name, scale)
            arrow = "" if higher is None else r" $\uparrow$" if higher else r" $\downarrow$"
            header.append(latex_escape(title) + (r" (\%)" if percent else "") + arrow)
    lines.append(" & ".join(header) + r" \\")
    lines.append(r"\midrule")
    for i, label in enumerate(table.labels):
        cells = [latex_escape(_plain(v)) for v in label]
        for dataset in table.datasets:
            for name in table.metrics:
                text = table.cells[i].get((dataset, name))
                if text is None:
                    cells.append("--")
                    continue
                text = text.replace(" ± ", r" $\pm$ ")
                cells.append(rf"\textbf{{{text}}}" if (i, dataset, name) in table.best else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- figure


def _confidence_correct(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    confidence, correct = [], []
    for i, record in enumerate(load_predictions(path), 1):
        conf, ok = record.get("confidence"), record.get("correct")
        if not _is_number(conf) or not 0.0 <= conf <= 1.0:
            raise RunDirError(f"{path}: record {i}: 'confidence' must be a number in [0, 1], got {conf!r}")
        if not isinstance(ok, bool):
            raise RunDirError(f"{path}: record {i}: 'correct' must be true or false, got {ok!r}")
        confidence.append(float(conf))
        correct.append(ok)
    if not confidence:
        raise RunDirError(f"{path}: no predictions")
    return torch.tensor(confidence, dtype=torch.float64), torch.tensor(correct)


def plot_reliability_grid(
    rows: Sequence[ResultRow], path: str | os.PathLike[str], n_bins: int = 15, title: str | None = None
) -> Path:
    """Reliability diagrams of ``rows``: a row of panels per dataset, a column per method.

    Each panel pools the ``predictions.jsonl`` records (confidence, correct) of all seeds
    of its method and dataset, and bins them like :func:`bayespeft.metrics.reliability_bins`;
    the title gives that pooled ECE. A method run with several N gets a column per N.
    Written as a 150-dpi PNG; returns ``path``.
    """
    check_n_bins(n_bins)
    if not rows:
        raise BayesPeftError("no results to plot")
    path = Path(path)
    several_n = {m for m in {r.method for r in rows} if len({r.n_samples for r in rows if r.method == m}) > 1}
    columns = sorted({(r.method, r.n_samples) for r in rows}, key=lambda k: tuple(_sort_key(v) for v in k))
    datasets = sorted({r.dataset for r in rows}, key=_sort_key)
    pooled: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for r in rows:
        pooled.setdefault((r.dataset, r.method, r.n_samples), []).append(_confidence_correct(r.predictions_path))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(PAPER_STYLE):
        n_rows, n_cols = len(datasets), len(columns)
        fig, axes = plt.subplots(
            n_rows, n_cols, sharex=True, sharey=True, squeeze=False, figsize=(2.3 * n_cols + 0.4, 2.35 * n_rows + 0.6)
        )
        try:
            for i, dataset in enumerate(datasets):
                for j, (method, n_samples) in enumerate(columns):
                    ax = axes[i][j]
                    name = f"{method} (N={n_samples})" if method in several_n else method
                    draw_diagonal(ax, lw=0.9)
                    parts = pooled.get((dataset, method, n_samples))
                    if parts:
                        confidence = torch.cat([c for c, _ in parts])
                        correct = torch.cat([k for _, k in parts])
                        bins = bin_confidences(confidence, correct, n_bins)
                        draw_reliability_bars(ax, bins, lw=0.5)
                        seeds = f", {len(parts)} seeds" if len(parts) > 1 else ""
                        ax.set_title(f"{name} · {dataset}\nECE {100 * bins.ece():.2f}%, n={bins.num_examples}{seeds}")
                    else:
                        ax.set_title(f"{name} · {dataset}\n(no run)")
                        ax.text(
                            0.5,
                            0.5,
                            "no run",
                            ha="center",
                            va="center",
                            color="0.4",
                            transform=ax.transAxes,
                            bbox={"facecolor": "white", "edgecolor": "none"},
                        )
                    ax.set_xlim(0, 1)
                    ax.set_ylim(0, 1)
                    ax.set_aspect("equal")
                    ax.set_xticks([0, 0.5, 1])
                    ax.set_yticks([0, 0.5, 1])
                    ax.grid(alpha=0.25, lw=0.5)
                    ax.set_axisbelow(True)
                    if i == n_rows - 1:
                        ax.set_xlabel("Confidence")
                    if j == 0:
                        ax.set_ylabel("Accuracy")
            handles = reliability_legend_handles(diagonal_lw=0.9)
            ncol = 3 if n_cols > 1 else 1
            fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False, bbox_to_anchor=(0.5, 0.0))
            if title:
                fig.suptitle(title)
            # Leave room below the x labels for the legend (about 0.2 inch per legend row).
            legend_in = 0.1 + 0.2 * math.ceil(len(handles) / ncol)
            fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1), h_pad=2.5)
            save_figure(fig, path)
        finally:
            plt.close(fig)
    return path


def heldout_curves(row: ResultRow) -> list[tuple[int, float, float]]:
    """(step, held-out NLL, held-out ECE) of the evaluations during a run's training (``train.eval_every``)."""
    log = row.directory / "train_log.jsonl"
    if not log.is_file():
        return []
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["step"], r["eval_nll"], r["eval_ece"]) for r in records if "eval_nll" in r]


def plot_heldout_curves(rows: Sequence[ResultRow], path: str | os.PathLike[str]) -> Path | None:
    """Held-out NLL and ECE during training, a column per dataset and a line per method (each seed drawn):
    where plain LoRA over-fits, its held-out NLL climbs while a posterior keeps it down. None without curves."""
    curves = [(r, heldout_curves(r)) for r in rows]
    curves = [(r, c) for r, c in curves if c]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r.dataset for r, _ in curves}, key=_sort_key)
    methods = sorted({r.method for r, _ in curves}, key=_sort_key)
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    with plt.rc_context(PAPER_STYLE):
        fig, axes = plt.subplots(2, len(datasets), squeeze=False, sharex="col", figsize=(3.4 * len(datasets), 4.6))
        try:
            for j, dataset in enumerate(datasets):
                labelled: set[str] = set()
                for row, curve in curves:
                    if row.dataset != dataset:
                        continue
                    steps = [c[0] for c in curve]
                    label = None if row.method in labelled else row.method
                    labelled.add(row.method)
                    for i in (0, 1):
                        values = [c[1 + i] for c in curve]
                        axes[i][j].plot(steps, values, color=colors[row.method], lw=1.3, marker="o", ms=2, label=label)
                axes[0][j].set_title(dataset)
                axes[1][j].set_xlabel("Step")
                for i in (0, 1):
                    axes[i][j].grid(alpha=0.25, lw=0.5)
            axes[0][0].set_ylabel("Held-out NLL")
            axes[1][0].set_ylabel("Held-out ECE")
            axes[0][0].legend(frameon=False)
            fig.tight_layout()
            save_figure(fig, Path(path))
        finally:
            plt.close(fig)
    return Path(path)


def save_figure(fig: Any, path: Path, file_format: str = "png", dpi: int = 150) -> None:
    """Write a matplotlib figure to ``path`` atomically (a crash leaves the old file or the new one)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=file_format, dpi=dpi, bbox_inches="tight")
    write_bytes_atomic(path, buffer.getvalue())


# --------------------------------------------------------------------------- report


def write_report(
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    scale: Mapping[str, float] | None = None,
    n_bins: int = 15,
) -> dict[str, Path]:
    """Write ``results.md``, ``results.tex``, ``results.json`` and ``reliability_grid.png`` into ``out_dir``,
    and ``heldout_curves.png`` where the runs evaluated during training (``train.eval_every``).

    Every input is read and every table rendered before anything is written, and each
    file is replaced atomically. Returns ``{"markdown", "latex", "json", "reliability_grid"}`` (+ ``"heldout_curves"``).
    """
    rows = collect_results(paths)
    aggregates = aggregate(rows, group_by)
    markdown = to_markdown(aggregates, metrics, scale)
    latex = to_latex(aggregates, metrics, scale)
    summary = {
        "group_by": list(_check_group_by(group_by)),
        "std": "population standard deviation over seeds (ddof=0)",
        "groups": [a.to_dict() for a in aggregates],
    }
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a directory")
    check_writable(out, "--output-dir")
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "markdown": out / "results.md",
        "latex": out / "results.tex",
        "json": out / "results.json",
        "reliability_grid": out / "reliability_grid.png",
    }
    plot_reliability_grid(rows, written["reliability_grid"], n_bins=n_bins)
    curves = plot_heldout_curves(rows, out / "heldout_curves.png")
    if curves is not None:
        written["heldout_curves"] = curves
    write_text_atomic(written["markdown"], markdown)
    write_text_atomic(written["latex"], latex)
    write_json_atomic(written["json"], summary)
    return written


def split_list(value: str | Sequence[str], flag: str) -> list[str]:
    """A comma-separated string (or a sequence) as its non-empty items; none at all is an error naming ``flag``."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise ConfigError(f"{flag}: give a comma-separated list, got {value!r}")
    return items


def report(
    paths: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    *,
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    group_by: str | Sequence[str] = DEFAULT_GROUP_BY,
    n_bins: int = 15,
) -> dict[str, Path]:
    """Aggregate runs over seeds into tables and figures, as ``bayespeft report`` does; returns the files written.

    ``paths`` are run directories, ``eval/<name>`` folders or folders of runs; ``metrics`` and
    ``group_by`` are lists or comma-separated strings.
    """
    metric_names = split_list(metrics, "--metrics")
    fields = _check_group_by(split_list(group_by, "--group-by"))
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ConfigError(f"--n-bins must be an integer >= 1, got {n_bins!r}")
    return write_report(paths, output_dir, metrics=metric_names, group_by=fields, n_bins=n_bins)
