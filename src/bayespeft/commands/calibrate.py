"""``bayespeft calibrate``: parse the flags and call :func:`bayespeft.calibrate`."""

from __future__ import annotations

import argparse
from typing import Any

from ..rundir import path_flag
from .dispatch import call_api
from .flags import add_config_flags, cli_overrides, reject_config

__all__ = ["add_calibrate_parser", "run_calibrate"]


def add_calibrate_parser(subparsers: Any) -> None:
    """Add the ``calibrate`` sub-command to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser("calibrate", help="fit a post-hoc temperature on held-out data (any method)")
    parser.add_argument("--run-dir", type=path_flag("--run-dir"), required=True, help="a finished training run")
    parser.add_argument(
        "--fit-split", default="validation", help="held-out split to fit on (never the test split you report)"
    )
    parser.add_argument("--max-fit-examples", type=int, help="use the first N examples of the fit split")
    parser.add_argument(
        "--fit-offset", type=int, default=0, help="skip the first K examples of the fit split (e.g. those trained on)"
    )
    add_config_flags(parser, training=False)
    parser.set_defaults(handler=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    """Run ``bayespeft calibrate`` and print the fitted temperature and how to use it."""
    from ..workflows.calibrate import calibrate

    reject_config(args)
    payload = call_api(calibrate, args, overrides=cli_overrides(args))
    temperature = payload["temperature"]
    print(
        f"temperature {temperature:.4f} fitted on {payload['fit_dataset']} {args.fit_split} "
        f"({payload['num_examples']} examples): NLL {payload['nll_before']:.4f} -> {payload['nll_after']:.4f}; "
        f"use it with: bayespeft evaluate --run-dir {args.run_dir} eval.temperature={temperature:.6g}"
    )
    return 0
