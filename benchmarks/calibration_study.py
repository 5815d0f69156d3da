"""The calibration study (issue 12): does a Bayesian adapter calibrate where plain LoRA over-fits?

Small training sets seen for many epochs, every method, several seeds, held-out evaluation with N = 10.
The grid is ``configs/study/calibration.yaml``; each (backbone, dataset, seed) is one ``bayespeft compare``
of the methods (post-hoc ones start from that seed's MLE run, the temperature is fitted on training
examples MLE never saw). Finished runs are recorded in the committed
``benchmarks/results/calibration_study.json`` (key ``runs``: one record per run, with its held-out curve)
and their predictions in ``calibration_study_predictions.json.gz`` beside it (``<stem>_predictions`` of
``--out``), so the study continues
across sessions and machines: ``run`` skips every (backbone, dataset, seed) whose methods are all
recorded, and re-running a killed ``compare`` resumes its unfinished runs.

    python benchmarks/calibration_study.py status                                 # what is recorded, what is not
    python benchmarks/calibration_study.py run --backbone minilm-l6 --jobs 1      # run what is missing
    python benchmarks/calibration_study.py collect                                # record finished runs
    python benchmarks/calibration_study.py report --figures docs/figures          # tables + figures

A probe of a setting off the grid runs the same units with ``--extra`` overrides into its own results file,
whose records carry those overrides as ``extra``; ``add-probes`` appends them to a probes JSON (their
predictions to ``<stem>_predictions.json.gz`` beside it), which ``report --probes`` judges setting by setting
against MLE of the same seed, with a paired interval on ΔACC where both runs' predictions are stored:

    python benchmarks/calibration_study.py run --backbone smollm2-135m --datasets boolq --methods blob \
        --seeds 1 --extra method.kl_lr=0.05 --work-dir runs/probe_kllr05 --out runs/probe_kllr05/results.json
    python benchmarks/calibration_study.py add-probes runs/probe_kllr05/results.json \
        --to benchmarks/results/smollm2_blob_probes.json --name kl_lr_0.05

A probe of another method (MAP at the same weight decay, say) is a control, judged the same way; ``paired``
sets any two stored runs against each other on their common examples:

    python benchmarks/calibration_study.py paired smollm2-135m/arc_challenge/blob/1@wd_20 \
        smollm2-135m/arc_challenge/map/1@map_wd_20 --results benchmarks/results/smollm2_blob_probes.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import gzip
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, pstdev
from typing import Any

import torch
import yaml
from torchmetrics.functional import matthews_corrcoef

from bayespeft.checkpoint import write_json_atomic
from bayespeft.errors import ConfigError, DataError, exit_on_bad_input
from bayespeft.methods import method_config_class, method_names
from bayespeft.metrics.classification import (
    accuracy,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "configs" / "study" / "calibration.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "calibration_study.json"
METRICS = {"acc": accuracy, "ece": expected_calibration_error, "nll": negative_log_likelihood, "brier": brier_score}
SCORES = ("acc", "ece", "nll", "brier", "entropy", "mutual_information", "f1", "matthews_corr")
REFERENCE = "mle"
ROUNDED_FLOOR = 5e-7  # half the unit of the 6-decimal rounding of the first records
_lock = threading.Lock()


@dataclass(frozen=True)
class Unit:
    """One `bayespeft compare` call: the methods of one backbone, dataset and seed."""

    backbone: str
    dataset: str
    seed: int
    methods: tuple[str, ...]
    overrides: tuple[str, ...]
    epochs: int
    train_examples: int
    steps: int
    extra: tuple[str, ...] = ()  # `run --extra` overrides: a probe of a setting off the grid

    @property
    def name(self) -> str:
        return f"{self.backbone}/{self.dataset}/seed{self.seed}"


def load_spec(path: Path = SPEC) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def plan(
    spec: dict[str, Any],
    backbones: Iterable[str],
    datasets: set[str] | None,
    data_dir: str,
    every_seed: bool = False,
) -> list[Unit]:
    """Every unit of the grid for ``backbones`` (and ``datasets`` if given), seeds outermost.

    ``every_seed`` lifts the spec's per-method ``seeds_for`` budget: every method on every seed of the grid
    (for a caller that names the methods and seeds it wants, e.g. a control's second seed).
    """
    units = []
    for backbone in backbones:
        grid = spec["backbones"][backbone]
        per_epoch = grid["train_examples"] // _batch_size(grid["overrides"])
        steps = grid["epochs"] * per_epoch
        for seed in grid["seeds"]:
            seeds_for = None if every_seed else grid.get("seeds_for")  # per method; others: the first seed
            methods = tuple(
                m for m in spec["methods"] if seeds_for is None or seed in seeds_for.get(m, grid["seeds"][:1])
            )
            for dataset, extra in grid["datasets"].items():
                if datasets and dataset not in datasets:
                    continue
                overrides = (
                    *applicable(grid["overrides"], methods),
                    *extra,
                    f"data.data_dir={data_dir}",
                    f"data.max_train_examples={grid['train_examples']}",
                    f"train.max_steps={steps}",
                    f"train.eval_every={grid['eval_every_epochs'] * per_epoch}",
                    f"train.checkpoint_every={per_epoch * 5}",
                )
                units.append(
                    Unit(backbone, dataset, seed, methods, overrides, grid["epochs"], grid["train_examples"], steps)
                )
    return units


def applicable(overrides: Iterable[str], methods: Iterable[str]) -> list[str]:
    """The overrides minus ``method.<param>=...`` ones that none of ``methods`` has (compare refuses those)."""
    params = set()
    for method in methods:
        if method in method_names():
            params |= {f.name for f in dataclasses.fields(method_config_class(method))}
    return [o for o in overrides if not o.startswith("method.") or o.split("=", 1)[0].split(".", 1)[1] in params]


def _batch_size(overrides: Iterable[str]) -> int:
    sizes = [int(item.split("=", 1)[1]) for item in overrides if item.startswith("train.batch_size=")]
    if not sizes:
        raise ConfigError(f"{SPEC}: every backbone needs a train.batch_size override")
    return sizes[-1]


def compare_command(unit: Unit, work: Path) -> list[str]:
    return [
        "compare",
        "--methods",
        ",".join(unit.methods),
        "--datasets",
        unit.dataset,
        "--seeds",
        str(unit.seed),
        "-c",
        "configs/base.yaml",
        "-o",
        str(unit_dir(unit, work)),
        "--quiet",
        *unit.overrides,
        *unit.extra,
    ]


def unit_dir(unit: Unit, work: Path) -> Path:
    return work / unit.backbone / unit.dataset / f"seed{unit.seed}"


# ----------------------------------------------------------------------------- records


def load_results(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"spec": str(SPEC.relative_to(ROOT)), "runs": []}


def predictions_path(results_path: Path) -> Path:
    """Where a results file's per-example predictions live: beside it, ``<stem>_predictions.json.gz``."""
    return results_path.with_name(results_path.stem + "_predictions.json.gz")


def load_predictions_store(path: Path) -> dict[str, Any]:
    if path.is_file():
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            return json.load(handle)
    return {}


def save_predictions_store(path: Path, store: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as handle:
        json.dump(store, handle, separators=(",", ":"), sort_keys=True)
    os.replace(tmp, path)


def run_key(backbone: str, dataset: str, method: str, seed: int) -> str:
    return f"{backbone}/{dataset}/{method}/{seed}"


def record_key(record: dict[str, Any]) -> str:
    """The run key of a recorded run."""
    return run_key(record["backbone"], record["dataset"], record["method"], record["seed"])


def probe_key(record: dict[str, Any]) -> str:
    """The predictions key of a probe run: its run key and the probe's name (one run key, many probes)."""
    return f"{record_key(record)}@{record['probe']}"


@contextlib.contextmanager
def results_lock(results_path: Path) -> Iterator[None]:
    """Hold the results of ``results_path`` for one read-modify-write, against threads and other processes.

    Two ``run`` processes sharing one ``--out`` would otherwise lose each other's records. The lock is an
    ``flock`` on the results' folder, so no lock file is left behind.
    """
    results_path.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        folder = os.open(results_path.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            yield
        finally:
            os.close(folder)  # closing the descriptor releases the flock


def update_results(results_path: Path, change: Callable[[dict[str, Any], dict[str, Any]], bool]) -> None:
    """Apply ``change(results, predictions_store)`` under the lock; both files are rewritten if it returns True."""
    with results_lock(results_path):
        results = load_results(results_path)
        store = load_predictions_store(predictions_path(results_path))
        if change(results, store):
            results["runs"].sort(key=lambda r: (r["backbone"], r["dataset"], r["method"], r["seed"]))
            save_predictions_store(predictions_path(results_path), store)
            write_json_atomic(results_path, results)


def record_unit(unit: Unit, work: Path, results_path: Path, device: str) -> list[str]:
    """Record every finished run of ``unit`` not yet in the results; returns the methods recorded now."""
    recorded: list[str] = []

    def add(results: dict[str, Any], store: dict[str, Any]) -> bool:
        have = {record_key(r) for r in results["runs"]}
        for method in unit.methods:
            key = run_key(unit.backbone, unit.dataset, method, unit.seed)
            run_dir = unit_dir(unit, work) / "runs" / f"method={method}__data={unit.dataset}__seed={unit.seed}"
            if key in have or not (run_dir / "metrics.json").is_file():
                continue
            record, predictions = run_record(unit, method, run_dir, work, device)
            results["runs"].append(record)
            store[key] = predictions
            recorded.append(method)
        return bool(recorded)

    update_results(results_path, add)
    return recorded


def run_record(unit: Unit, method: str, run_dir: Path, work: Path, device: str) -> tuple[dict, dict]:
    """The results record of one finished run and its per-example predictions (mean predictive)."""
    payload = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    metrics = payload["metrics"]
    lines = (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    log = run_dir / "train_log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    per_epoch = unit.train_examples // _batch_size(unit.overrides)
    last_epoch = [r["nll"] for r in records[-per_epoch:]]
    trained = method not in ("laplace", "tfb", "temperature")
    resumed_at = payload.get("train", {}).get("resumed_from_step", 0)
    record = {
        "backbone": unit.backbone,
        "dataset": unit.dataset,
        "method": method,
        "seed": unit.seed,
        **{k: metrics[k] for k in SCORES if k in metrics},
        "epochs": unit.epochs if trained else 0,
        "steps": unit.steps if trained else 0,
        "train_examples": unit.train_examples,
        "eval_examples": metrics["num_examples"],
        "eval_split": payload["split"],
        "n_samples": payload["n_samples"],
        "temperature": metrics.get("temperature"),
        "train_nll_last_epoch": fmean(last_epoch) if last_epoch else None,
        "heldout_curve": [[r["step"], r["eval_nll"], r["eval_acc"], r["eval_ece"]] for r in records if "eval_nll" in r],
        "command": "bayespeft " + " ".join(compare_command(unit, work)),
        "run": run_dir.name,
        "wall_s": round((run_dir / "metrics.json").stat().st_mtime - (run_dir / "config.yaml").stat().st_mtime, 1),
        "device": device,
        **({"extra": " ".join(unit.extra)} if unit.extra else {}),
        **({"resumed_at_step": resumed_at} if resumed_at else {}),  # wall_s then covers the last process only
    }
    predictions = {
        "ids": [r["id"] for r in rows],
        "labels": [r["label"] for r in rows],
        "probs": [[float(f"{p:.6g}") for p in r["probs"]] for r in rows],  # 6 significant digits: tiny p kept
    }
    return record, predictions


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def merge(sources: list[Path], out: Path) -> None:
    """Add every run of ``sources`` missing from ``out`` (with its predictions); a recorded run is kept."""

    def add(results: dict[str, Any], store: dict[str, Any]) -> bool:
        have = {record_key(r) for r in results["runs"]}
        total = 0
        for source in sources:
            added = 0
            theirs = load_predictions_store(predictions_path(source))
            for run in load_results(source)["runs"]:
                key = record_key(run)
                if key not in have and key in theirs:
                    results["runs"].append(run)
                    store[key] = theirs[key]
                    have.add(key)
                    added += 1
            print(f"{source}: {added} runs added")
            total += added
        return total > 0

    update_results(out, add)


def add_probes(source: Path, probes_path: Path, name: str | None) -> None:
    """Append the runs of a ``run --extra`` results file to a probes JSON (key ``probes``), each named by
    ``name`` (default: its overrides), and their predictions to the store beside it (so that the report can
    give paired intervals); a run already there under the same name is kept."""
    runs = load_results(source)["runs"] if source.is_file() else []
    if not runs:
        raise DataError(f"{source}: no recorded runs (give the --out of a finished `run --extra ...`)")
    plain = [record_key(r) for r in runs if "extra" not in r]
    if plain:
        raise DataError(f"{source}: run {plain[0]} has no `extra` overrides, so it is not a probe")
    with results_lock(probes_path):
        probes = json.loads(probes_path.read_text(encoding="utf-8")) if probes_path.is_file() else {}
        if not isinstance(probes.get("probes", []), list):
            raise DataError(f"{probes_path}: field `probes` must be a list of run records")
        have = {probe_key(r) for r in probes.setdefault("probes", [])}
        theirs = load_predictions_store(predictions_path(source))
        store = load_predictions_store(predictions_path(probes_path))
        added = []
        for run in runs:
            record = {k: v for k, v in run.items() if k != "run"} | {"probe": name or run["extra"]}
            if probe_key(record) not in have:
                probes["probes"].append(record)
                added.append(record_key(record))
                if record_key(record) in theirs:
                    store[probe_key(record)] = theirs[record_key(record)]
        if added:
            save_predictions_store(predictions_path(probes_path), store)
            write_json_atomic(probes_path, probes)
    print(f"{probes_path}: {len(added)} probe runs added ({', '.join(added) or 'all were there'})")


# ----------------------------------------------------------------------------- run


def run_units(units: list[Unit], args: argparse.Namespace) -> None:
    work, results_path, device = Path(args.work_dir), Path(args.out), device_name()
    results = load_results(results_path)
    done = {record_key(r) for r in results["runs"]}
    todo = [u for u in units if any(run_key(u.backbone, u.dataset, m, u.seed) not in done for m in u.methods)]
    print(f"{len(units) - len(todo)} of {len(units)} units recorded; running {len(todo)} with {args.jobs} jobs")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}

    if args.dry_run:
        for unit in todo:
            command = [sys.executable, "-m", "bayespeft.cli", *compare_command(unit, work), "--dry-run"]
            result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            print(f"{unit.name}: {'ok' if result.returncode == 0 else result.stderr.strip().splitlines()[-1]}")
        return

    def execute(unit: Unit) -> None:
        began = time.perf_counter()
        log = unit_dir(unit, work) / "compare.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as handle:
            command = [sys.executable, "-m", "bayespeft.cli", *compare_command(unit, work)]
            code = subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
        recorded = record_unit(unit, work, results_path, device)
        took = time.perf_counter() - began
        print(f"{unit.name}: exit {code}, {took:.0f} s, recorded {','.join(recorded) or 'nothing'}", flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(execute, todo))


# ----------------------------------------------------------------------------- report


def grouped(runs: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["backbone"], run["dataset"], run["method"]), []).append(run)
    return groups


def paired_bootstrap(
    store: dict[str, Any],
    backbone: str,
    dataset: str,
    method: str,
    seeds: list[int],
    resamples: int,
    reference: str = REFERENCE,
) -> dict[str, list[float]]:
    """Mean over seeds of (method - reference, MLE by default) per metric, with a 95 % interval: every
    resample draws the same examples for both methods within each seed."""
    pairs = []
    for seed in seeds:
        paired = paired_predictions(
            store.get(run_key(backbone, dataset, method, seed)), store.get(run_key(backbone, dataset, reference, seed))
        )
        if paired:
            pairs.append(paired)
    return paired_interval(pairs, resamples) if pairs else {}


def paired_predictions(
    ours: dict[str, Any] | None, ref: dict[str, Any] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(our probs, the reference's probs, labels) of two stored runs on the same examples, else None."""
    if not (ours and ref and ours["ids"] == ref["ids"]):
        return None
    return stored_probs(ours["probs"]), stored_probs(ref["probs"]), torch.tensor(ref["labels"])


def paired_interval(
    pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], resamples: int
) -> dict[str, list[float]]:
    """[point, low, high] of the mean over ``pairs`` (probs a, probs b, labels) of metric(a) - metric(b): a
    95 % paired bootstrap, each resample drawing the same examples for a and b within a pair."""
    generator = random.Random(0)
    point = {k: fmean(f(a, y) - f(b, y) for a, b, y in pairs) for k, f in METRICS.items()}
    draws: dict[str, list[float]] = {k: [] for k in METRICS}
    for _ in range(resamples):
        per_pair = {k: [] for k in METRICS}
        for a, b, y in pairs:
            index = torch.tensor([generator.randrange(len(y)) for _ in range(len(y))])
            for k, f in METRICS.items():
                per_pair[k].append(f(a[index], y[index]) - f(b[index], y[index]))
        for k in METRICS:
            draws[k].append(fmean(per_pair[k]))
    out = {}
    for k, values in draws.items():
        values.sort()
        out[k] = [point[k], values[int(0.025 * resamples)], values[int(0.975 * resamples) - 1]]
    return out


def stored_probs(rows: list[list[float]]) -> torch.Tensor:
    """Stored probabilities as a tensor (ragged rows zero-padded). Records made before they kept 6 significant
    digits were rounded to 6 decimals, so a probability below 5e-7 reads 0; it is floored at 5e-7 (half that
    unit), not at the NLL's 1e-12 clamp, which would charge 27.6 nats to each such example."""
    width = max(len(r) for r in rows)
    probs = torch.zeros(len(rows), width, dtype=torch.float64)
    for i, r in enumerate(rows):
        probs[i, : len(r)] = torch.tensor(r, dtype=torch.float64).clamp_min(ROUNDED_FLOOR)
    return probs / probs.sum(-1, keepdim=True)


BEGIN, END = "<!-- calibration-study tables: begin -->", "<!-- calibration-study tables: end -->"
PROBES_BEGIN, PROBES_END = "<!-- calibration-study probes: begin -->", "<!-- calibration-study probes: end -->"


def report(args: argparse.Namespace) -> None:
    """Print the tables (and write the figures); with --markdown, also replace the block between the
    BEGIN/END markers of that file with them."""
    lines: list[str] = []
    emit = lines.append
    results = load_results(Path(args.out))
    store = load_predictions_store(predictions_path(Path(args.out)))
    groups = grouped(results["runs"])
    recorded = {record_key(r) for r in results["runs"]}
    spec = load_spec(args.spec)
    summary: dict[str, Any] = {}
    for backbone, grid in spec["backbones"].items():
        datasets = [d for d in grid["datasets"] if (backbone, d, REFERENCE) in groups]
        if not datasets:
            continue
        emit(f"\n### {backbone}: {grid['train_examples']} training examples, {grid['epochs']} epochs\n")
        columns = ("ACC", "MCC", "ECE", "NLL", "Brier", "ΔACC [95% CI]", "ΔECE [95% CI]", "ΔNLL [95% CI]")
        emit("| dataset | method | seeds | " + " | ".join(columns) + " |")
        emit("|---|---|---|---|---|---|---|---|---|---|---|")
        for dataset in datasets:
            ref_seeds = [r["seed"] for r in groups[(backbone, dataset, REFERENCE)]]
            labels = store[run_key(backbone, dataset, REFERENCE, ref_seeds[0])]["labels"]
            majority = max(labels.count(c) for c in set(labels)) / len(labels)
            emit(f"| {dataset} | *majority class* | | {majority:.3f} | 0 | | | | | | |")
            for method in spec["methods"]:
                runs = groups.get((backbone, dataset, method))
                if not runs:
                    continue
                seeds = sorted(r["seed"] for r in runs)
                mcc = [matthews(store[run_key(backbone, dataset, method, seed)]) for seed in seeds]
                cells = [_mean_std([r[k] for r in runs]) for k in ("acc", "ece", "nll", "brier")]
                cells.insert(1, _mean_std(mcc))
                deltas = {}
                if method != REFERENCE:
                    deltas = paired_bootstrap(
                        store, backbone, dataset, method, [s for s in seeds if s in ref_seeds], args.resamples
                    )
                delta_cells = [_interval(deltas.get(k)) for k in ("acc", "ece", "nll")]
                emit(f"| {dataset} | {method} | {len(seeds)} | " + " | ".join(cells + delta_cells) + " |")
                summary[run_key(backbone, dataset, method, 0)[:-2]] = {
                    "seeds": seeds,
                    **{k: fmean(r[k] for r in runs) for k in ("acc", "ece", "nll", "brier")},
                    "delta_vs_mle": deltas,
                }
        lines.extend(targets(backbone, datasets, groups, spec["methods"], store, args.resamples))
        lines.extend(grid_gaps(spec, backbone, recorded))
    if args.figures:
        figures = Path(args.figures)
        for backbone, grid in spec["backbones"].items():
            datasets = [d for d in grid["datasets"] if (backbone, d, REFERENCE) in groups]
            if datasets:
                plot_reliability(
                    store, results["runs"], backbone, datasets, figures / f"study_reliability_{backbone}.png"
                )
                plot_curves(groups, backbone, datasets, figures / f"study_heldout_nll_{backbone}.png")
    if args.summary:
        write_json_atomic(Path(args.summary), summary)
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        splice(Path(args.markdown), text, BEGIN, END)
    if args.probes:
        probes = json.loads(Path(args.probes).read_text(encoding="utf-8"))["probes"]
        probe_store = load_predictions_store(predictions_path(Path(args.probes)))
        probe_text = "\n".join(probe_targets(probes, groups, store, probe_store, args.resamples))
        print(probe_text)
        if args.markdown:
            splice(Path(args.markdown), probe_text, PROBES_BEGIN, PROBES_END)


def splice(path: Path, text: str, begin: str, end: str) -> None:
    """Replace the text between the ``begin`` and ``end`` markers of ``path`` (both must be there)."""
    document = path.read_text(encoding="utf-8")
    if begin not in document or end not in document:
        raise ConfigError(f"--markdown: {path} lacks the markers {begin} ... {end}")
    head, rest = document.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{begin}\n{text.strip()}\n{end}{tail}", encoding="utf-8")


def matthews(predictions: dict[str, Any]) -> float:
    """Matthews correlation of a run's predicted classes (0 = no better than a constant or random guess)."""
    probs = stored_probs(predictions["probs"])
    labels = torch.tensor(predictions["labels"])
    return float(matthews_corrcoef(probs.argmax(-1), labels, task="multiclass", num_classes=probs.shape[1]))


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{fmean(values):.3f} ± {pstdev(values):.3f}"


def _interval(delta: list[float] | None) -> str:
    if not delta:
        return ""
    point, low, high = delta
    mark = "**" if low > 0 or high < 0 else ""
    return f"{mark}{point:+.3f}{mark} [{low:+.3f}, {high:+.3f}]"


def targets(
    backbone: str, datasets: list[str], groups: dict, methods: list[str], store: dict[str, Any], resamples: int
) -> list[str]:
    """Issue 12's targets: BLoB ECE <= 0.5x MLE, NLL <= 0.9x MLE, ACC >= MLE - 1 point; the best Bayesian
    method's ECE below temperature scaling's, with the paired interval of that difference (is it noise?)."""
    bayesian = [m for m in methods if m not in (REFERENCE, "map", "temperature")]
    out = [f"\n{backbone}: BLoB / MLE ratios and the targets (means over seeds)\n"]
    hits, wins = 0, 0
    for dataset in datasets:
        mean = {m: {k: fmean(r[k] for r in groups[(backbone, dataset, m)]) for k in ("acc", "ece", "nll")}
                for m in methods if (backbone, dataset, m) in groups}  # fmt: skip
        if "blob" in mean:
            ece, nll, dacc, ok = blob_target(mean["blob"], mean[REFERENCE])
            hits += ok
            line = f"- {dataset}: ECE x{ece:.2f}, NLL x{nll:.2f}, ACC {dacc:+.3f} -> {'met' if ok else 'not met'}"
        else:
            line = f"- {dataset}: no BLoB run"
        present = [m for m in bayesian if m in mean]
        if present and "temperature" in mean:
            best = min(present, key=lambda m: mean[m]["ece"])
            win = mean[best]["ece"] < mean["temperature"]["ece"]
            wins += win
            line += (
                f"; best Bayesian {best} ECE {mean[best]['ece']:.3f} vs temperature {mean['temperature']['ece']:.3f}"
            )
            seeds = sorted({r["seed"] for r in groups[(backbone, dataset, best)]}
                           & {r["seed"] for r in groups[(backbone, dataset, "temperature")]})  # fmt: skip
            delta = paired_bootstrap(store, backbone, dataset, best, seeds, resamples, reference="temperature")
            if delta:
                line += f" (ΔECE {_interval(delta['ece'])})"
        out.append(line)
    out.append(f"- BLoB target met on {hits} of {len(datasets)}; the best Bayesian method beats temperature on {wins}")
    return out


def grid_gaps(spec: dict[str, Any], backbone: str, recorded: set[str]) -> list[str]:
    """How much of ``backbone``'s planned grid is recorded, and per dataset which seeds each method still lacks.

    Generated from the spec and the records, so the report says what a later session still has to run.
    """
    units = plan(spec, [backbone], None, "")
    planned = [(u.dataset, m, u.seed) for u in units for m in u.methods]
    missing = [(d, m, s) for d, m, s in planned if run_key(backbone, d, m, s) not in recorded]
    out = [f"- grid: {len(planned) - len(missing)} of {len(planned)} planned runs recorded"]
    if not missing:
        return out
    out[0] += "; still to run:"
    lacking: dict[str, dict[str, list[int]]] = {}
    for dataset, method, seed in missing:
        lacking.setdefault(dataset, {}).setdefault(method, []).append(seed)
    for dataset in spec["backbones"][backbone]["datasets"]:
        by_seeds: dict[tuple[int, ...], list[str]] = {}
        for method, seeds in lacking.get(dataset, {}).items():
            by_seeds.setdefault(tuple(sorted(seeds)), []).append(method)
        parts = [
            f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} of {', '.join(methods)}"
            for seeds, methods in sorted(by_seeds.items())
        ]
        if parts:
            out.append(f"  - {dataset}: " + "; ".join(parts))
    return out


def status(spec: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """Every backbone's grid coverage (``grid_gaps``), without the report's bootstraps and figures."""
    recorded = {record_key(r) for r in results["runs"]}
    lines = []
    for backbone in spec["backbones"]:
        lines.append(f"{backbone}:")
        lines.extend(grid_gaps(spec, backbone, recorded))
    return lines


def blob_target(blob: dict[str, float], mle: dict[str, float]) -> tuple[float, float, float, bool]:
    """ECE and NLL ratios to MLE, the ACC difference, and whether issue 12's BLoB target holds."""
    ece, nll, dacc = blob["ece"] / mle["ece"], blob["nll"] / mle["nll"], blob["acc"] - mle["acc"]
    return ece, nll, dacc, ece <= 0.5 and nll <= 0.9 and dacc >= -0.01


def probe_targets(
    probes: list[dict[str, Any]],
    groups: dict,
    store: dict[str, Any] | None = None,
    probe_store: dict[str, Any] | None = None,
    resamples: int = 1000,
) -> list[str]:
    """The BLoB target for each probed setting (BLoB's, or another method's as a control), dataset by
    dataset, against MLE of the same seed: the probe's own MLE where it ran one under the same overrides,
    else the grid's; the grid's BLoB at the package defaults is listed first for the same datasets and
    seeds. A row per seed; the verdict line judges each dataset on the means over its seeds. Where both
    runs' predictions are stored (the grid's ``store``, the probes' ``probe_store``), ΔACC comes with its
    paired 95 % interval: the ACC clause is often decided by a point or two on 500 questions."""

    def pair(probed: dict, mle: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        ours, ref = (
            (probe_store or {}).get(probe_key(r)) if "probe" in r else (store or {}).get(record_key(r))
            for r in (probed, mle)
        )
        return paired_predictions(ours, ref)

    settings: dict[tuple[str, str], list[dict]] = {}  # (backbone, setting) -> the probed method's runs
    own_mle: dict[tuple[str, str, str, int], dict] = {}  # (backbone, extra, dataset, seed) -> MLE under them
    for record in probes:
        if record["method"] == REFERENCE:
            own_mle[(record["backbone"], record["extra"], record["dataset"], record["seed"])] = record
        else:
            setting = (
                f"`{record['extra']}`" if record["method"] == "blob" else f"{record['method']} `{record['extra']}`"
            )
            settings.setdefault((record["backbone"], setting), []).append(record)
    for backbone in sorted({b for b, _ in settings}):
        units = {(r["dataset"], r["seed"]) for (b, _), rs in settings.items() if b == backbone for r in rs}
        grid = [r for (d, s) in sorted(units) for r in groups.get((backbone, d, "blob"), []) if r["seed"] == s]
        settings[(backbone, "package defaults (grid)")] = grid
    out = [
        "| backbone | setting (BLoB unless a method is named) | dataset | seed | ACC | ECE | NLL | ECE / MLE "
        "| NLL / MLE | ΔACC [95% CI] | target | training NLL, last epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for (backbone, setting), records in sorted(settings.items(), key=lambda item: (item[0][0], "`" in item[0][1])):
        pairs: dict[str, list[tuple[dict, dict]]] = {}  # dataset -> (probed run, its MLE) per seed
        predicted: dict[str, list] = {}  # dataset -> the paired predictions of each seed (None: not stored)
        for probed in sorted(records, key=lambda r: (r["dataset"], r["seed"])):
            same = own_mle.get((backbone, probed.get("extra"), probed["dataset"], probed["seed"]))
            grid = [r for r in groups.get((backbone, probed["dataset"], REFERENCE), []) if r["seed"] == probed["seed"]]
            if not (same or grid):
                continue
            mle = same or grid[0]
            pairs.setdefault(probed["dataset"], []).append((probed, mle))
            predicted.setdefault(probed["dataset"], []).append(pair(probed, mle))
            ece, nll, dacc, ok = blob_target(probed, mle)
            scores = " | ".join(f"{probed[k]:.3f}" for k in ("acc", "ece", "nll"))
            paired = predicted[probed["dataset"]][-1]
            delta = _interval(paired_interval([paired], resamples)["acc"]) if paired else f"{dacc:+.3f}"
            train_nll = probed.get("train_nll_last_epoch", float("nan"))
            out.append(
                f"| {backbone} | {setting} | {probed['dataset']} | {probed['seed']} | {scores} | x{ece:.2f} "
                f"| x{nll:.2f} | {delta} | {'met' if ok else 'not met'} | {train_nll:.3f} |"
            )
        met, intervals = [], []
        for dataset, seeds in pairs.items():  # judged on the means over seeds, as the study's table is
            sides = zip(*seeds, strict=True)  # all the probed runs, then all their MLEs
            means = [{k: fmean(run[k] for run in side) for k in ("acc", "ece", "nll")} for side in sides]
            if blob_target(*means)[3]:
                met.append(dataset if len(seeds) == 1 else f"{dataset}, mean of {len(seeds)} seeds")
            if len(seeds) > 1 and all(predicted[dataset]):
                intervals.append(f"{dataset} {_interval(paired_interval(predicted[dataset], resamples)['acc'])}")
        verdict = f"- {backbone}, {setting}: met on {len(met)} of {len(pairs)} ({'; '.join(met) or 'none'})"
        verdicts.append(verdict + (f"; ΔACC over the seeds: {', '.join(intervals)}" if intervals else ""))
    return [*out, "", *verdicts]


def paired_runs(first: str, second: str, results: list[Path], resamples: int) -> list[str]:
    """``first`` minus ``second`` on the examples both were evaluated on, with 95 % paired-bootstrap intervals:
    any two stored runs, grid (``backbone/dataset/method/seed``) or probe (``...@name``), e.g. a BLoB
    probe against a MAP control at the same weight decay."""
    stored = {}
    for path in results:
        stored |= load_predictions_store(predictions_path(path))
    missing = [key for key in (first, second) if key not in stored]
    if missing:
        where = ", ".join(str(predictions_path(path)) for path in results)
        raise DataError(f"{missing[0]}: no stored predictions under that key in {where}")
    pair = paired_predictions(stored[first], stored[second])
    if pair is None:
        raise DataError(f"{first}, {second}: evaluated on different examples, so they cannot be paired")
    deltas = paired_interval([pair], resamples)
    cells = ", ".join(f"Δ{'Brier' if k == 'brier' else k.upper()} {_interval(deltas[k])}" for k in METRICS)
    return [f"{first} minus {second} ({len(pair[2])} examples, 95 % paired bootstrap): {cells}"]


def plot_reliability(store: dict, runs: list[dict], backbone: str, datasets: list[str], path: Path) -> None:
    """Reliability diagrams side by side: a row per dataset, a column per method (pooled over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [m for m in ("mle", "temperature", "blob", "laplace", "ensemble", "mcdropout") if
               any(r["backbone"] == backbone and r["method"] == m for r in runs)]  # fmt: skip
    fig, axes = plt.subplots(len(datasets), len(columns), figsize=(2.3 * len(columns), 2.3 * len(datasets)),
                             squeeze=False, sharex=True, sharey=True)  # fmt: skip
    for i, dataset in enumerate(datasets):
        for j, method in enumerate(columns):
            ax = axes[i][j]
            keys = [k for k in store if k.startswith(f"{backbone}/{dataset}/{method}/")]
            ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="gray")
            if keys:  # the same dataset: every seed's predictions have the same width
                probs = torch.cat([stored_probs(store[k]["probs"]) for k in keys])
                labels = torch.cat([torch.tensor(store[k]["labels"]) for k in keys])
                bins = reliability_bins(probs, labels, 10)
                shown = bins.count > 0
                centres = ((bins.edges[:-1] + bins.edges[1:]) / 2)[shown]
                ax.bar(centres, bins.accuracy[shown], width=0.1, edgecolor="black", lw=0.5, alpha=0.8)
                ax.plot(centres, bins.confidence[shown], "r.", ms=3)
                ece = expected_calibration_error(probs, labels)
                ax.text(0.04, 0.88, f"ECE {ece:.3f}", fontsize=8, transform=ax.transAxes)
            if i == 0:
                ax.set_title(method, fontsize=10)
            if j == 0:
                ax.set_ylabel(f"{dataset}\naccuracy", fontsize=9)
            if i == len(datasets) - 1:
                ax.set_xlabel("confidence", fontsize=9)
    fig.suptitle(f"{backbone}: reliability on held-out data, seeds pooled", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    print(f"wrote {path}")


def plot_curves(groups: dict, backbone: str, datasets: list[str], path: Path) -> None:
    """Held-out NLL during training against the epoch: MLE against BLoB (and MAP, MC dropout), first seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(3.2 * len(datasets), 2.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for method, color in (
            ("mle", "tab:red"),
            ("map", "tab:orange"),
            ("mcdropout", "tab:green"),
            ("blob", "tab:blue"),
        ):
            runs = sorted(groups.get((backbone, dataset, method), []), key=lambda r: r["seed"])
            if runs and runs[0]["heldout_curve"]:
                per_epoch = runs[0]["steps"] / runs[0]["epochs"]
                curve = runs[0]["heldout_curve"]
                ax.plot([c[0] / per_epoch for c in curve], [c[1] for c in curve], color=color, lw=1.4, label=method)
        ax.set_title(dataset, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out NLL (posterior mean)")
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "collect", "report"):
        command = sub.add_parser(name)
        command.add_argument("--out", default=str(RESULTS), help="the results JSON (predictions go beside it)")
        command.add_argument("--work-dir", default=str(ROOT / "runs" / "calibration_study"))
        command.add_argument("--backbone", help="comma-separated backbones (default: all in the spec)")
        command.add_argument("--datasets", help="comma-separated datasets (default: all of the backbone's)")
        command.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
        command.add_argument("--spec", type=Path, default=SPEC, help="the grid (default: %(default)s)")
    run = sub.choices["run"]
    run.add_argument("--jobs", type=int, default=1, help="compare processes at once (a GPU holds several)")
    run.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each process")
    run.add_argument("--dry-run", action="store_true", help="validate every unit with `compare --dry-run`")
    run.add_argument("--methods", help="comma-separated: run only these of each unit's methods (and their MLE source)")
    run.add_argument(
        "--seeds",
        help="comma-separated: run only these of the spec's seeds (with --methods: those methods on these seeds, "
        "beyond the spec's seeds_for)",
    )
    run.add_argument(
        "--extra", nargs="+", default=[], metavar="KEY=VALUE", help="overrides added to every unit (after the spec's)"
    )
    status_parser = sub.add_parser("status", help="how much of the grid is recorded and what each dataset lacks")
    status_parser.add_argument("--out", default=str(RESULTS), help="the results JSON")
    status_parser.add_argument("--spec", type=Path, default=SPEC, help="the grid (default: %(default)s)")
    merge_parser = sub.add_parser("merge", help="add the runs of other results files (e.g. from a GPU machine)")
    merge_parser.add_argument("sources", nargs="+", type=Path, help="results JSON files, predictions beside each")
    merge_parser.add_argument("--out", default=str(RESULTS))
    probes_parser = sub.add_parser("add-probes", help="append a `run --extra` results file's runs to a probes JSON")
    probes_parser.add_argument("source", type=Path, help="the --out of the `run --extra ...`")
    probes_parser.add_argument("--to", type=Path, required=True, help="the probes JSON (created if missing)")
    probes_parser.add_argument("--name", help="the probe's name (default: its overrides)")
    paired_parser = sub.add_parser("paired", help="one stored run minus another, with paired intervals")
    paired_parser.add_argument("first", help="a run key (backbone/dataset/method/seed) or probe key (...@name)")
    paired_parser.add_argument("second", help="the run it is compared against")
    paired_parser.add_argument(
        "--results", nargs="+", type=Path, default=[RESULTS], help="results or probes JSON files (predictions beside)"
    )
    paired_parser.add_argument("--resamples", type=int, default=1000)
    report_parser = sub.choices["report"]
    report_parser.add_argument("--resamples", type=int, default=1000)
    report_parser.add_argument("--figures", help="folder for the reliability grid and the held-out NLL curves")
    report_parser.add_argument("--summary", help="also write the table's numbers as JSON here")
    report_parser.add_argument("--markdown", help="replace the tables between the study markers of this file")
    report_parser.add_argument(
        "--probes", help="a probes JSON (records with `extra`): also the BLoB target for each probed setting"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.command == "report":
        report(args)
        return
    if args.command == "merge":
        merge(args.sources, Path(args.out))
        return
    if args.command == "status":
        print("\n".join(status(load_spec(args.spec), load_results(Path(args.out)))))
        return
    if args.command == "add-probes":
        add_probes(args.source, args.to, args.name)
        return
    if args.command == "paired":
        print("\n".join(paired_runs(args.first, args.second, args.results, args.resamples)))
        return
    spec = load_spec(args.spec)
    backbones = args.backbone.split(",") if args.backbone else list(spec["backbones"])
    unknown = [b for b in backbones if b not in spec["backbones"]]
    if unknown:
        raise ConfigError(f"--backbone: {unknown[0]} is not in {SPEC} (choose from {', '.join(spec['backbones'])})")
    datasets = set(args.datasets.split(",")) if args.datasets else None
    # naming both the methods and the seeds asks for exactly those runs, beyond the spec's seeds_for budget
    named = bool(getattr(args, "methods", None) and getattr(args, "seeds", None))
    units = plan(spec, backbones, datasets, args.data_dir, every_seed=named)
    if getattr(args, "methods", None):
        chosen = args.methods.split(",")
        units = [
            dataclasses.replace(u, methods=kept, overrides=tuple(applicable(u.overrides, kept)))
            for u in units
            if (kept := tuple(m for m in u.methods if m in chosen))
        ]
    if getattr(args, "seeds", None):
        try:
            chosen_seeds = {int(seed) for seed in args.seeds.split(",")}
        except ValueError:
            raise ConfigError(f"--seeds: expected comma-separated integers (got {args.seeds!r})") from None
        units = [u for u in units if u.seed in chosen_seeds]
    if getattr(args, "extra", None):
        units = [dataclasses.replace(u, extra=tuple(args.extra)) for u in units]
    if args.command == "collect":
        device = device_name()
        for unit in units:
            recorded = record_unit(unit, Path(args.work_dir), Path(args.out), device)
            if recorded:
                print(f"{unit.name}: recorded {','.join(recorded)}")
        return
    run_units(units, args)


if __name__ == "__main__":
    exit_on_bad_input(main)
