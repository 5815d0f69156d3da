"""``bayespeft compare``: parse the flags and call :func:`bayespeft.compare`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..choices import COMPARE_METRICS, TEMPERATURE
from ..rundir import path_flag
from .dispatch import call_api
from .flags import OUTPUT_DIR_FLAGS

__all__ = ["add_compare_parser", "run_compare"]


def add_compare_parser(subparsers: Any) -> None:
    """Add the ``compare`` sub-command to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser(
        "compare",
        help="run methods x datasets x seeds and report mean ± std per method (tables, figures)",
        description="Compare methods on datasets over seeds; re-running skips finished runs and resumes the others.",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="for every run: train.max_steps=300, model=minilm; method.beta=0.1 goes to the methods that have beta",
    )
    parser.add_argument(
        "--methods",
        required=True,
        help=f"comma-separated methods, e.g. blob,blob_laplace,mle; post hoc on the MLE run: laplace, tfb, noise, "
        f"{TEMPERATURE}",
    )
    parser.add_argument(
        "--datasets",
        required=True,
        help="comma-separated datasets, or mc (every multiple-choice dataset) or glue (every GLUE-style task)",
    )
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (train.seed; default: %(default)s)")
    parser.add_argument("--config", "-c", type=Path, help="base config file (composed: defaults, groups)")
    parser.add_argument("--config-dir", type=Path, help="folder of the group files (default: the base's folder)")
    parser.add_argument(*OUTPUT_DIR_FLAGS, type=path_flag("--output-dir"), required=True, help="comparison folder")
    parser.add_argument(
        "--metrics", default=",".join(COMPARE_METRICS), help="table and figure metrics (default: %(default)s)"
    )
    parser.add_argument(
        "--temperature-split",
        default="train",
        help="split the temperature is fitted on (default train: the examples after data.max_train_examples)",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate and list the runs; run nothing")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    """Run ``bayespeft compare`` and print the plan or the report; returns 0 when every run finished, 1 otherwise."""
    from ..experiments.compare import compare

    manifest = call_api(compare, args)
    points = manifest["points"]
    if args.dry_run:
        for entry in points:
            role = "" if entry["reported"] else "  [MLE source, not reported]"
            print(f"{entry['action']:6s} {entry['run_dir']}{role}")
        print(f"{len(points)} runs; nothing run (--dry-run)")
        return 0
    if "report" in manifest:
        print(Path(manifest["report"]["markdown"]).read_text(encoding="utf-8"), end="")
        print(f"report -> {Path(manifest['report']['markdown']).parent}")
    failed = [e for e in points if e["status"] != "finished"]
    for entry in failed:
        print(f"not finished: {entry['name']}: {entry.get('error', entry['status'])}")
    print(f"{len(points) - len(failed)}/{len(points)} runs finished -> {args.output_dir}")
    return 1 if failed else 0
