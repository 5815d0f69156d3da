"""``bayespeft tune``: parse the flags and call :func:`bayespeft.tune`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..rundir import path_flag
from .dispatch import call_api
from .flags import OUTPUT_DIR_FLAGS, spec_file_and_overrides

__all__ = ["add_tune_parser", "run_tune"]


def add_tune_parser(subparsers: Any) -> None:
    """Add the ``tune`` sub-command to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser(
        "tune",
        help="multi-objective hyperparameter search (Optuna) on a validation split carved from training data",
        description="Search hyperparameters for several objectives at once; each trial is a run directory. "
        "Studies live in a database (SQLite by default) that several workers can share.",
    )
    parser.add_argument("spec", nargs="?", help="tune spec YAML (base, overrides, space, objectives, ...)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="fixed for every trial: method.beta=0.1 or group=name"
    )
    parser.add_argument("--config", "-c", type=Path, help="base config file (replaces the spec's base)")
    parser.add_argument("--config-dir", type=Path, help="folder of the group files (default: the base's folder)")
    parser.add_argument(
        "--space",
        "-s",
        action="append",
        default=[],
        metavar="KEY=SPEC",
        help="searched key, repeatable: method.beta=log:0.05:0.5, train.lr=float:1e-4:1e-2, "
        "model.lora.r=int:4:16 (intlog:LO:HI), method.kl_schedule=cat:cyclic,uniform",
    )
    parser.add_argument("--objectives", help="comma-separated METRIC:max|min, e.g. acc:max,ece:min,nll:min")
    parser.add_argument("--trials", "-n", type=int, help="trials this worker adds to the study (default 20)")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///<output-dir>/study.db)")
    parser.add_argument("--study-name", help="study name in the storage (default tune)")
    parser.add_argument(
        *OUTPUT_DIR_FLAGS,
        type=path_flag("--output-dir"),
        help="tune folder: trials/, study.db, pareto.md, plots/",
    )
    parser.add_argument(
        "--validation-fraction", type=float, help="share of the training split held out for scoring (default 0.2)"
    )
    parser.add_argument("--validation-seed", type=int, help="seed of the held-out choice (default 0)")
    parser.add_argument(
        "--sampler",
        choices=("tpe", "gp", "random"),
        help="tpe (multivariate TPE, default), gp (Gaussian process), random",
    )
    parser.add_argument("--seed", type=int, help="sampler seed (default 0; give each worker its own)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    """Run ``bayespeft tune`` and print the Pareto table; returns 0 unless every trial of this call failed (then 1)."""
    from ..experiments.tune import tune

    spec, overrides = spec_file_and_overrides(args, "tune")
    summary = call_api(tune, args, spec=spec, overrides=overrides)
    rows = {r["trial"]: r for r in summary["trials"]}
    print((Path(summary["output_dir"]) / "pareto.md").read_text(encoding="utf-8"), end="")
    done = [n for n in summary["this_run"] if rows.get(n, {}).get("state") == "COMPLETE"]
    print(
        f"{len(done)}/{len(summary['this_run'])} trials finished; study {summary['study_name']!r} in "
        f"{summary['storage']} has {len(rows)} trials, {len(summary['pareto'])} on the Pareto front"
    )
    return 0 if done else 1
