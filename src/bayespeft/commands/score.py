"""``bayespeft score``: parse the flags and call :func:`bayespeft.score`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..choices import CLUSTERINGS, CORRECTNESS_JUDGES, REFERENCE_AGGREGATES
from ..errors import ConfigError
from ..rundir import path_flag
from .dispatch import call_api
from .flags import OUTPUT_DIR_FLAGS

__all__ = ["add_score_parser", "run_score"]


def add_score_parser(subparsers: Any) -> None:
    """Add the ``score`` sub-command to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser(
        "score",
        help="score sample stores: correctness and uncertainty (QA) or ROUGE/BERTScore (summaries)",
        description="Score the generations of one or more sample stores (one per method) against the dataset's "
        "references. Uncertainty scores are oriented so that higher means more uncertain.",
    )
    parser.add_argument("--store", type=Path, action="append", required=True, help="a sample store (repeatable)")
    parser.add_argument(
        *OUTPUT_DIR_FLAGS,
        type=path_flag("--output-dir"),
        required=True,
        help="folder for scores.json, tables, figures",
    )
    parser.add_argument("--data-dir", help="the data folder the stores were sampled from (default: the hub)")
    parser.add_argument(
        "--correctness", choices=CORRECTNESS_JUDGES, default="em", help="QA correctness judge (default: %(default)s)"
    )
    parser.add_argument("--f1-threshold", type=float, default=0.5, help="token F1 counted as correct (default 0.5)")
    parser.add_argument("--nli-model", help="NLI classifier (hub id or folder), e.g. microsoft/deberta-large-mnli")
    parser.add_argument(
        "--nli-threshold", type=float, default=0.5, help="entailment probability both ways (default: %(default)s)"
    )
    parser.add_argument(
        "--judge-model", default="smollm2-135m", help="causal LM of --correctness llm (default: %(default)s)"
    )
    parser.add_argument(
        "--cluster", choices=CLUSTERINGS, help="meaning classes: nli (default with --nli-model) or embedding"
    )
    parser.add_argument("--embedding-model", default="minilm-l6", help="encoder of --cluster embedding")
    parser.add_argument(
        "--similarity-threshold", type=float, default=0.8, help="cosine similarity of one meaning (default 0.8)"
    )
    parser.add_argument("--bertscore-model", default="minilm-l6", help="BERTScore encoder (default: %(default)s)")
    parser.add_argument(
        "--kde-aggregate",
        choices=REFERENCE_AGGREGATES,
        default="max",
        help="reference aggregate shown in the density figure (default: %(default)s)",
    )
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--confidence", type=float, default=0.95, help="CI level (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    parser.set_defaults(overrides=[], handler=run_score)


def run_score(args: argparse.Namespace) -> int:
    """Run ``bayespeft score`` and print the tables."""
    from ..sampling.score import score

    if args.overrides:
        raise ConfigError(f"score: unexpected argument {args.overrides[0]!r}")
    payload = call_api(score, args, stores=args.store)
    print(payload["markdown"], end="")
    for store in payload["stores"]:
        if store["incomplete_examples_skipped"]:
            print(f"note: {store['store']}: {store['incomplete_examples_skipped']} incomplete examples not scored")
    print(f"scores -> {args.output_dir}")
    return 0
