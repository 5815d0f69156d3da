"""``bayespeft sample``: parse the flags and call :func:`bayespeft.sample`."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from ..rundir import path_flag
from .dispatch import call_api
from .flags import add_config_flags, cli_overrides

__all__ = ["add_sample_parser", "run_sample"]


def add_sample_parser(subparsers: Any) -> None:
    """Add the ``sample`` sub-command to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser(
        "sample",
        help="generate S answers per example under the posterior into a resumable SQLite store",
        description="Sample generations of a trained run (--run-dir) or, zero-shot, of a config's model. "
        "Decoding: generation.<field>=value overrides (strategy greedy|beam|sample, n_samples, max_new_tokens, "
        "num_beams, temperature, top_k, top_p, seed, decoding_seed, posterior_mean, prompts_per_batch). "
        "Rerunning resumes; a store of another configuration is refused.",
    )
    parser.add_argument(
        "--run-dir", type=path_flag("--run-dir"), help="a finished training run (default: zero-shot from the config)"
    )
    parser.add_argument(
        "--store", type=path_flag("--store"), required=True, help="the SQLite store (.sqlite) to create or resume"
    )
    parser.add_argument("--split", default="test", help="dataset split to sample (default: %(default)s)")
    parser.add_argument("--max-examples", type=int, help="sample the first N examples (a larger N extends the store)")
    parser.add_argument(
        "--shard", help="I/N: this machine samples the examples with index I modulo N into its own shard file"
    )
    add_config_flags(parser)
    parser.set_defaults(handler=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    """Run ``bayespeft sample`` and print what this machine sampled."""
    from ..sampling.sample import sample

    if getattr(args, "eval.n_samples") is not None:
        raise ConfigError("--n-samples: sets eval.n_samples, which sampling does not read; use generation.n_samples=S")
    done = call_api(sample, args, overrides=cli_overrides(args))
    if done["main_process"]:
        print(
            f"{done['method']} on {done['dataset']} {done['split']}: {done['examples']} examples in shard "
            f"{done['shard']} ({done['already_complete']} already complete, {done['completed']} sampled), "
            f"{done['samples_per_example']} samples each; {done['rows']} samples -> {done['store']}"
        )
        if done["machines"] > 1:
            print(
                f"once every shard has run: bayespeft sample-store merge --store {args.store} "
                f"--shards {done['machines']}"
            )
    return 0
