"""``bayespeft train``: parse the flags and call :func:`bayespeft.train`."""

from __future__ import annotations

import argparse
from typing import Any

from ..rundir import path_flag
from .dispatch import call_api
from .flags import OUTPUT_DIR_FLAGS, add_config_flags, cli_overrides
from .output import print_scores

__all__ = ["add_train_parser", "run_train"]


def add_train_parser(subparsers: Any) -> None:
    """Add the ``train`` sub-command to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser("train", help="fine-tune, then evaluate and write a calibration report")
    parser.add_argument(*OUTPUT_DIR_FLAGS, type=path_flag("--output-dir"), required=True, help="run directory")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing run directory (only a bayespeft run; swapped in once the new run finished)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output-dir from its checkpoint (with its config; --lr may change)",
    )
    parser.add_argument(
        "--stop-after-steps", type=int, help="checkpoint and exit after this many steps (continue later with --resume)"
    )
    add_config_flags(parser)
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Run ``bayespeft train`` and print the scores (or how to resume a paused run)."""
    from ..workflows.train import train

    payload = call_api(train, args, overrides=cli_overrides(args))
    if payload["status"] == "paused":
        print(f"stopped after step {payload['step']}; continue with: bayespeft train -o {args.output_dir} --resume")
    else:
        print_scores(payload, args.output_dir)
    return 0
