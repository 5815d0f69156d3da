"""The ``bayespeft`` command line: one sub-command per module of :mod:`bayespeft.commands`.

This module only builds the parser and dispatches; each command parses its flags and calls its
twin in the Python API (``bayespeft train`` -> :func:`bayespeft.train`, ...). A ``BayesPeftError``
becomes a one-line ``error:`` message and exit status 2. Building the parser imports no torch (each
command imports its API function when it runs), so ``--help`` is immediate.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .commands.calibrate import add_calibrate_parser
from .commands.compare import add_compare_parser
from .commands.evaluate import add_evaluate_parser
from .commands.ood import add_ood_parser
from .commands.report import add_report_parser
from .commands.sample import add_sample_parser
from .commands.sample_store import add_sample_store_parser
from .commands.score import add_score_parser
from .commands.sweep import add_sweep_parser
from .commands.train import add_train_parser
from .commands.tune import add_tune_parser
from .errors import BayesPeftError, report_bad_input

__all__ = ["build_parser", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    """The ``bayespeft`` parser with every sub-command; each sets ``handler``, the function that runs it."""
    parser = argparse.ArgumentParser(prog="bayespeft", description="Bayesian parameter-efficient fine-tuning.")
    parser.add_argument("--version", action="version", version=f"bayespeft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        add_train_parser,
        add_evaluate_parser,
        add_calibrate_parser,
        add_ood_parser,
        add_report_parser,
        add_sweep_parser,
        add_compare_parser,
        add_tune_parser,
        add_sample_parser,
        add_sample_store_parser,
        add_score_parser,
    ):
        add(sub)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may come before, between or after flags."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [item for item in extra if item.startswith("-") or "=" not in item]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = [*args.overrides, *extra]  # argparse leaves positionals after a flag in ``extra``
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (2 for bad input, with a one-line error)."""
    try:
        args = parse_args(argv)  # a path flag's check raises a BayesPeftError here
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return args.handler(args)
    except BayesPeftError as exc:
        return report_bad_input(exc)


if __name__ == "__main__":
    sys.exit(main())
