"""``bayespeft report``: parse the flags and call :func:`bayespeft.report`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..choices import DEFAULT_GROUP_BY, GROUP_FIELDS, REPORT_METRICS
from ..rundir import path_flag
from .dispatch import call_api
from .flags import OUTPUT_DIR_FLAGS

__all__ = ["add_report_parser", "run_report"]


def add_report_parser(subparsers: Any) -> None:
    """Add the ``report`` sub-command to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser(
        "report",
        help="aggregate runs over seeds into Markdown/LaTeX tables and a reliability grid",
        description="Aggregate run directories into paper tables (mean ± population std over seeds) and figures.",
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="RUN_DIR", help="run directories, eval/<name> folders or folders of runs"
    )
    parser.add_argument(
        *OUTPUT_DIR_FLAGS, type=path_flag("--output-dir"), required=True, help="folder for the report files"
    )
    parser.add_argument(
        "--metrics", default=",".join(REPORT_METRICS), help="comma-separated metrics (default: %(default)s)"
    )
    parser.add_argument(
        "--group-by",
        default=",".join(DEFAULT_GROUP_BY),
        help=f"comma-separated fields from {', '.join(GROUP_FIELDS)} (default: %(default)s)",
    )
    parser.add_argument("--n-bins", type=int, default=15, help="reliability bins (default: %(default)s)")
    parser.set_defaults(overrides=[], handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Run ``bayespeft report``: write the report and print the Markdown table; returns 0."""
    from ..experiments.report import report

    written = call_api(report, args)
    print(written["markdown"].read_text(encoding="utf-8"), end="")
    print(f"wrote {', '.join(p.name for p in written.values())} -> {args.output_dir}")
    return 0
