"""``bayespeft ood``: parse the flags and call :func:`bayespeft.ood`."""

from __future__ import annotations

import argparse
from typing import Any

from ..rundir import path_flag
from .dispatch import call_api
from .flags import add_config_flags, cli_overrides, reject_config

__all__ = ["add_ood_parser", "run_ood"]


def add_ood_parser(subparsers: Any) -> None:
    """Add the ``ood`` sub-command to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser("ood", help="evaluate on shifted datasets and score OOD detection (AUROC)")
    parser.add_argument(
        "--run-dir",
        type=path_flag("--run-dir"),
        required=True,
        help="a finished training run (the in-distribution data)",
    )
    parser.add_argument(
        "--datasets",
        required=True,
        help="comma-separated datasets, optionally name@split (default validation; MMLU: test)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace earlier results of the same names")
    add_config_flags(parser, training=False)
    parser.set_defaults(handler=run_ood)


def run_ood(args: argparse.Namespace) -> int:
    """Run ``bayespeft ood`` and print the summary table."""
    from ..workflows.ood import ood

    reject_config(args)
    summary = call_api(ood, args, overrides=cli_overrides(args))
    print(summary["table"], end="")
    return 0
