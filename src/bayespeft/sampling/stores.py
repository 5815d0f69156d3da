"""``bayespeft sample-store``'s actions as functions: merge shards, export, salvage and inspect sample stores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..choices import EXPORT_FORMATS
from ..errors import ConfigError
from ..rundir import check_writable
from ..sample_store import SalvageResult, SampleStore, merge, salvage, shard_paths

__all__ = ["EXPORT_FORMATS", "export_store", "merge_stores", "salvage_store", "store_info"]


def merge_stores(store: str | Path, *, shards: int | None = None, inputs: Sequence[str | Path] = ()) -> int:
    """Unite shard stores into ``store``, as ``bayespeft sample-store merge`` does; returns its row count.

    ``shards`` N merges ``<store stem>.shard-I-of-N`` for I = 0..N-1; otherwise the ``inputs`` files.
    """
    if shards is not None and shards < 1:
        raise ConfigError(f"--shards: must be >= 1 (got {shards})")
    check_writable(Path(store), "--store")
    return merge(shard_paths(store, shards) if shards is not None else inputs, store)


def export_store(store: str | Path, out: str | Path, *, format: str | None = None) -> int:
    """Write a store's samples as JSONL or Parquet, as ``bayespeft sample-store export`` does; returns the row count.

    ``format`` defaults to the suffix of ``out``.
    """
    out = Path(out)
    kind = format or out.suffix.lstrip(".").lower()
    if kind not in EXPORT_FORMATS:
        raise ConfigError(f"--out {out}: cannot tell the format from its suffix; pass --format jsonl|parquet")
    check_writable(out, "--out")
    with SampleStore.open_existing(store) as opened:
        return opened.export_jsonl(out) if kind == "jsonl" else opened.export_parquet(out)


def salvage_store(store: str | Path, out: str | Path) -> SalvageResult:
    """Copy the readable rows of a damaged store into a new one, as ``bayespeft sample-store salvage`` does."""
    check_writable(Path(out), "--out")
    return salvage(store, out)


def store_info(store: str | Path) -> dict[str, Any]:
    """A store's shard, progress and configuration, as ``bayespeft sample-store info`` prints them."""
    with SampleStore.open_existing(store) as opened:
        return {
            "shard": str(opened.shard),
            "samples": opened.count(),
            "complete_examples": len(opened.complete_examples()),
            "partial_examples": len(opened.partial_examples()),
            "fingerprint": dict(opened.fingerprint),
        }
