"""``bayespeft sweep``: parse the flags and call :func:`bayespeft.sweep`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..rundir import path_flag
from .dispatch import call_api
from .flags import OUTPUT_DIR_FLAGS, spec_file_and_overrides

__all__ = ["add_sweep_parser", "run_sweep"]


def add_sweep_parser(subparsers: Any) -> None:
    """Add the ``sweep`` sub-command to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser(
        "sweep",
        help="run a grid of configs (values x seeds x datasets), one run directory per point",
        description="Run every point of a config grid; re-running skips finished points and resumes the others.",
    )
    parser.add_argument("spec", nargs="?", help="sweep spec YAML (base, grid, seeds, datasets, output_dir)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="fixed for every point: method.beta=0.1 or group=name"
    )
    parser.add_argument("--config", "-c", type=Path, help="base config file (replaces the spec's base)")
    parser.add_argument("--config-dir", type=Path, help="folder of the group files (default: the base's folder)")
    parser.add_argument(
        "--grid",
        "-g",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="swept values, repeatable: method.beta=0.1,0.2 or method=blob,mle",
    )
    parser.add_argument("--seeds", help="comma-separated seeds (train.seed), e.g. 1,2,3")
    parser.add_argument("--datasets", help="comma-separated datasets (data.dataset)")
    parser.add_argument(
        *OUTPUT_DIR_FLAGS, type=path_flag("--output-dir"), help="sweep folder (replaces the spec's output_dir)"
    )
    parser.add_argument("--dry-run", action="store_true", help="validate and list the points; run nothing")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    """Run ``bayespeft sweep`` and print the plan or the results; returns 0 when every point finished, 1 otherwise."""
    from ..experiments.sweep import sweep

    spec, overrides = spec_file_and_overrides(args, "sweep")
    manifest = call_api(sweep, args, spec=spec, overrides=overrides)
    points = manifest["points"]
    if args.dry_run:
        for entry in points:
            print(f"{entry['action']:6s} {entry['run_dir']}  ({' '.join(entry['overrides'])})")
        print(f"{len(points)} points; nothing run (--dry-run)")
        return 0
    if "results" in manifest:
        print(Path(manifest["results"]).read_text(encoding="utf-8"), end="")
    failed = [e for e in points if e["status"] != "finished"]
    for entry in failed:
        print(f"not finished: {entry['name']}: {entry.get('error', entry['status'])}")
    print(f"{len(points) - len(failed)}/{len(points)} points finished -> {manifest['spec']['output_dir']}")
    return 1 if failed else 0
