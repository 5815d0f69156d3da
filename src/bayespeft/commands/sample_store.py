"""``bayespeft sample-store merge|export|salvage|info``: parse the flags and call the store functions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..choices import EXPORT_FORMATS
from ..errors import ConfigError
from ..rundir import path_flag

__all__ = ["add_sample_store_parser", "run_sample_store"]


def add_sample_store_parser(subparsers: Any) -> None:
    """Add the ``sample-store`` sub-command and its actions to ``subparsers`` (from ``add_subparsers``)."""
    store = subparsers.add_parser(
        "sample-store", help="merge, export, salvage or inspect sample stores made by `bayespeft sample`"
    )
    store.set_defaults(overrides=[], handler=run_sample_store)
    actions = store.add_subparsers(dest="action", required=True)
    merging = actions.add_parser("merge", help="unite shard stores into one store (rerunning it is harmless)")
    merging.add_argument(
        "--store", type=path_flag("--store"), required=True, help="the merged store (and base name of its shards)"
    )
    sources = merging.add_mutually_exclusive_group(required=True)
    sources.add_argument("--shards", type=int, help="merge <store stem>.shard-I-of-N files, I = 0..N-1")
    sources.add_argument("--inputs", type=Path, nargs="+", help="merge these store files")
    export = actions.add_parser("export", help="write a store's samples as JSONL or Parquet")
    export.add_argument("--store", type=Path, required=True)
    export.add_argument("--out", type=path_flag("--out"), required=True, help="output file")
    export.add_argument("--format", choices=EXPORT_FORMATS, help="default: from the --out suffix")
    rescue = actions.add_parser("salvage", help="copy the readable rows of a damaged store into a new store")
    rescue.add_argument("--store", type=Path, required=True, help="the damaged store (only read)")
    rescue.add_argument("--out", type=path_flag("--out"), required=True, help="the new store; resume sampling into it")
    info = actions.add_parser("info", help="print a store's configuration, shard and progress")
    info.add_argument("--store", type=Path, required=True)


def run_sample_store(args: argparse.Namespace) -> int:
    """Run ``bayespeft sample-store merge|export|salvage|info`` and print the outcome."""
    from ..sampling.stores import export_store, merge_stores, salvage_store, store_info

    if args.overrides:
        raise ConfigError(f"sample-store {args.action}: unexpected argument {args.overrides[0]!r}")
    if args.action == "merge":
        rows = merge_stores(args.store, shards=args.shards, inputs=args.inputs or ())
        count = args.shards if args.shards is not None else len(args.inputs)
        print(f"merged {count} stores: {rows} samples -> {args.store}")
    elif args.action == "export":
        rows = export_store(args.store, args.out, format=args.format)
        print(f"exported {rows} samples -> {args.out}")
    elif args.action == "salvage":
        result = salvage_store(args.store, args.out)
        print(
            f"salvaged {result.recovered} samples ({result.lost} unreadable) -> {args.out}; "
            "rerun bayespeft sample with --store on it to regenerate the lost ones"
        )
    else:
        info = store_info(args.store)
        print(
            f"{args.store}: shard {info['shard']}, {info['samples']} samples, "
            f"{info['complete_examples']} complete examples, {info['partial_examples']} partial"
        )
        for key, value in sorted(info["fingerprint"].items()):
            print(f"  {key}: {value}")
    return 0
