"""``bayespeft evaluate``: parse the flags and call :func:`bayespeft.evaluate`."""

from __future__ import annotations

import argparse
from typing import Any

from ..rundir import path_flag
from .dispatch import call_api
from .flags import add_config_flags, cli_overrides, reject_config
from .output import print_scores

__all__ = ["add_evaluate_parser", "run_evaluate"]


def add_evaluate_parser(subparsers: Any) -> None:
    """Add the ``evaluate`` sub-command to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser("evaluate", help="evaluate a trained run (or adapter) on any dataset")
    parser.add_argument("--run-dir", type=path_flag("--run-dir"), required=True, help="a finished training run")
    parser.add_argument("--name", help="results folder under <run-dir>/eval, a plain name (default: dataset_split_nN)")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier results of the same name")
    parser.add_argument(
        "--checkpoint", type=int, metavar="STEP", help="evaluate the weights of checkpoints/checkpoint-STEP"
    )
    add_config_flags(parser, training=False)
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``bayespeft evaluate`` and print the scores."""
    from ..workflows.evaluate import evaluate

    reject_config(args)
    payload = call_api(evaluate, args, overrides=cli_overrides(args))
    print_scores(payload, payload["output_dir"])
    return 0
