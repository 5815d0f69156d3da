"""Crash-safe, shardable store of sampled generations: one SQLite file per shard.

Every stored sample is keyed by (example uid, sample index, method, seed), so a sample can be
stored once only; a second write of the same key fails loudly instead of replacing it. Each batch
of rows is written in one transaction (WAL journal, ``synchronous=FULL``), so a crash or a kill
leaves whole batches and :func:`run_sampling` resumes where it stopped, with nothing lost and
nothing duplicated. A ``meta`` table holds the configuration fingerprint: a store is only ever
reopened, merged or resumed with the configuration it was made with.

Processes or machines each write their own shard file (``<stem>.shard-<i>-of-<n><suffix>``,
examples with index ``i`` modulo ``n``); :func:`merge` unites them into the final store, which
exports to JSONL or Parquet. A damaged file is refused with a one-line error, and
:func:`salvage` copies its readable rows to a fresh store.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tqdm.auto import tqdm

from .checkpoint import atomic_file, json_default
from .errors import BayesPeftError, ConfigError, DataError
from .methods.base import ADAPTER_WEIGHTS

__all__ = [
    "SCHEMA_VERSION",
    "CorruptStoreError",
    "Generation",
    "HasUid",
    "SalvageResult",
    "SampleRow",
    "SampleStore",
    "SampleStoreError",
    "SamplingSummary",
    "Shard",
    "adapter_sha256",
    "generation_fingerprint",
    "merge",
    "resolve_shard",
    "run_sampling",
    "salvage",
    "shard_paths",
]

SCHEMA_VERSION = 1
"""Version of the table layout; part of every fingerprint, so old and new layouts never mix."""

_REQUIRED_KEYS = ("method", "seed", "samples_per_example")
_KEY_COLUMNS = ("example_uid", "sample_index", "method", "seed")
_CONTENT_COLUMNS = (
    "example_index",
    "prompt",
    "text",
    "token_ids",
    "log_likelihood",
    "token_logprobs",
    "num_tokens",
    "finish_reason",
)
_COLUMNS = (*_KEY_COLUMNS, *_CONTENT_COLUMNS, "created", "shard")
_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE samples (
    example_uid TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    method TEXT NOT NULL,
    seed INTEGER NOT NULL,
    example_index INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    text TEXT NOT NULL,
    token_ids TEXT NOT NULL,        -- JSON list of ints
    log_likelihood REAL NOT NULL,
    token_logprobs TEXT NOT NULL,   -- JSON list of floats, one per token id
    num_tokens INTEGER NOT NULL,
    finish_reason TEXT,
    created TEXT NOT NULL,          -- ISO 8601 UTC time of the write
    shard TEXT NOT NULL,            -- "i/n" of the shard that generated the row
    PRIMARY KEY ({", ".join(_KEY_COLUMNS)})
);
"""
_INSERT = f"INSERT INTO samples ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM samples"
_ORDER = "ORDER BY example_index, example_uid, sample_index"
# Salvage reads this many rowids at a time and halves a range that fails down to single rows.
_SALVAGE_CHUNK = 256
# Bound on rowids when the table's last page is unreadable: no row is smaller than this many bytes.
_MIN_ROW_BYTES = 32


class SampleStoreError(BayesPeftError):
    """A store that cannot be used as asked: another configuration, a duplicate sample, a locked file."""


class CorruptStoreError(SampleStoreError):
    """A store file that SQLite cannot read (damaged pages, or not a database at all)."""


# ---------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    """One sampled continuation of one example, as a producer returns it to :func:`run_sampling`.

    ``token_logprobs[i]`` is the log-probability of ``token_ids[i]``; ``log_likelihood`` is the
    sequence log-likelihood.
    """

    example_uid: str
    sample_index: int
    prompt: str
    text: str
    token_ids: Sequence[int]
    log_likelihood: float
    token_logprobs: Sequence[float]
    finish_reason: str | None = None


@dataclass(frozen=True)
class SampleRow:
    """One stored sample: its key (uid, sample index, method, seed) and content, as tuples so rows compare equal."""

    example_uid: str
    sample_index: int
    method: str
    seed: int
    example_index: int
    prompt: str
    text: str
    token_ids: tuple[int, ...]
    log_likelihood: float
    token_logprobs: tuple[float, ...]
    finish_reason: str | None = None

    @property
    def key(self) -> tuple[str, int, str, int]:
        return (self.example_uid, self.sample_index, self.method, self.seed)


def _row_values(row: SampleRow, created: str, shard: str) -> tuple[Any, ...]:
    """The SQL values of ``row`` in :data:`_COLUMNS` order (token lists as compact JSON)."""
    return (
        row.example_uid,
        row.sample_index,
        row.method,
        row.seed,
        row.example_index,
        row.prompt,
        row.text,
        json.dumps(list(row.token_ids), separators=(",", ":")),
        row.log_likelihood,
        json.dumps(list(row.token_logprobs), separators=(",", ":")),
        len(row.token_ids),
        row.finish_reason,
        created,
        shard,
    )


def _decode_row(values: Sequence[Any]) -> SampleRow:
    """A :class:`SampleRow` from SQL values in :data:`_COLUMNS` order."""
    record = dict(zip(_COLUMNS, values, strict=True))
    return SampleRow(
        **{f.name: record[f.name] for f in fields(SampleRow) if f.name not in ("token_ids", "token_logprobs")},
        token_ids=tuple(json.loads(record["token_ids"])),
        token_logprobs=tuple(json.loads(record["token_logprobs"])),
    )


def _intact(values: Sequence[Any]) -> bool:
    """Whether SQL values read from a damaged file still form a well-typed row."""
    try:
        row = _decode_row(values)
    except (ValueError, TypeError):
        return False
    record = dict(zip(_COLUMNS, values, strict=True))
    return (
        all(isinstance(getattr(row, name), str) for name in ("example_uid", "method", "prompt", "text"))
        and all(isinstance(record[name], str) for name in ("created", "shard"))
        and all(isinstance(getattr(row, name), int) for name in ("sample_index", "seed", "example_index"))
        and isinstance(row.log_likelihood, float)
        and isinstance(row.finish_reason, str | None)
        and all(isinstance(t, int) for t in row.token_ids)
        and all(isinstance(p, float | int) for p in row.token_logprobs)
        and record["num_tokens"] == len(row.token_ids) == len(row.token_logprobs)
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------
# Configuration fingerprint and shards
# ---------------------------------------------------------------------------


def adapter_sha256(adapter: str | os.PathLike[str]) -> str:
    """SHA-256 of an adapter's weights file (``adapter`` is the file or the adapter folder holding it)."""
    path = Path(adapter)
    weights = path / ADAPTER_WEIGHTS if path.is_dir() else path
    digest = hashlib.sha256()
    try:
        with open(weights, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"{weights}: cannot read adapter weights: {exc.strerror or exc}") from None
    return digest.hexdigest()


def generation_fingerprint(
    *,
    model: str,
    adapter: str | os.PathLike[str] | None,
    method: str,
    seed: int,
    samples_per_example: int,
    dataset: str,
    split: str,
    decoding: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The generation-relevant configuration that a store is tied to.

    The adapter enters by the hash of its weights, not its path, so that shards made on machines
    that keep the same adapter in different folders can be merged. ``extra`` holds anything
    else that changes the generations (prompt template, example limit, ...).
    """
    return {
        "model": model,
        "adapter_sha256": None if adapter is None else adapter_sha256(adapter),
        "method": method,
        "seed": seed,
        "samples_per_example": samples_per_example,
        "dataset": dataset,
        "split": split,
        "decoding": dict(decoding),
        "extra": dict(extra or {}),
    }


def _normalised(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """``fingerprint`` as the store keeps it: a JSON round trip plus the schema version."""
    missing = [key for key in _REQUIRED_KEYS if key not in fingerprint]
    if missing:
        raise ValueError(f"sample store fingerprint lacks {missing[0]!r}")
    normalised = json.loads(_canonical_json({**fingerprint, "store_schema": SCHEMA_VERSION}))
    method, seed, samples = (normalised[key] for key in _REQUIRED_KEYS)
    if not isinstance(method, str) or type(seed) is not int or type(samples) is not int or samples < 1:
        raise ValueError(
            f"sample store fingerprint: bad method/seed/samples_per_example {method!r}/{seed!r}/{samples!r}"
        )
    return normalised


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=json_default)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys, so a difference can name ``decoding.top_p``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _first_difference(stored: Mapping[str, Any], current: Mapping[str, Any], names: tuple[str, str]) -> str | None:
    """``'key is A in <names[0]>, B in <names[1]>'`` for the first differing key in sorted order, else None."""
    old, new = _flatten(stored), _flatten(current)
    for key in sorted(old.keys() | new.keys()):
        if key not in old or key not in new or old[key] != new[key]:
            shown = [json.dumps(side[key]) if key in side else "absent" for side in (old, new)]
            return f"{key} is {shown[0]} in {names[0]}, {shown[1]} in {names[1]}"
    return None


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the examples whose index is ``index`` modulo ``count``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index}/{self.count}: expected I/N with 0 <= I < N")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``'I/N'`` (for example the ``--shard`` flag) as a shard."""
        index, _, count = text.partition("/")
        try:
            return cls(int(index), int(count))
        except (ValueError, ConfigError):
            raise ConfigError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4") from None

    def owns(self, example_index: int) -> bool:
        return example_index % self.count == self.index

    def path_for(self, store: str | os.PathLike[str]) -> Path:
        """This shard's file next to ``store``; the store itself when there is a single shard."""
        store = Path(store)
        if self.count == 1:
            return store
        return store.with_name(f"{store.stem}.shard-{self.index}-of-{self.count}{store.suffix or '.sqlite'}")


def resolve_shard(flag: str | None, process_index: int = 0, num_processes: int = 1) -> Shard:
    """This process's shard: the machine's ``--shard I/N`` (default ``0/1``) split among its accelerate processes.

    Machine ``I`` of ``N`` running ``P`` processes gives process ``p`` shard ``I*P + p`` of ``N*P``.
    """
    machine = Shard.parse(flag) if flag else Shard()
    return Shard(machine.index * num_processes + process_index, machine.count * num_processes)


def shard_paths(store: str | os.PathLike[str], count: int) -> list[Path]:
    """The files of all ``count`` shards of ``store``, in shard order (the input of :func:`merge`)."""
    return [Shard(index, count).path_for(store) for index in range(count)]


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------


@contextmanager
def _sqlite_errors(path: Path) -> Iterator[None]:
    """Turn SQLite errors into one-line store errors that name ``path``."""
    try:
        yield
    except sqlite3.Error as exc:
        if type(exc) is sqlite3.DatabaseError:  # SQLITE_CORRUPT, SQLITE_NOTADB: no subclass of its own
            raise CorruptStoreError(_corrupt_message(path, str(exc))) from None
        raise SampleStoreError(f"{path}: {exc}") from None


def _corrupt_message(path: Path, detail: str) -> str:
    detail = detail.splitlines()[0] if detail else "unreadable"
    return f"{path}: corrupt sample store ({detail}); copy its readable rows to a new store with salvage"


def _connect(path: Path) -> sqlite3.Connection:
    """An autocommit connection: transactions are begun and committed explicitly."""
    return sqlite3.connect(path, isolation_level=None, timeout=30.0)


def _quick_check(path: Path, connection: sqlite3.Connection, full: bool = False) -> None:
    """Raise :class:`CorruptStoreError` unless SQLite's quick (or full) integrity check passes."""
    with _sqlite_errors(path):
        problems = [r[0] for r in connection.execute("PRAGMA integrity_check" if full else "PRAGMA quick_check")]
    if problems != ["ok"]:
        raise CorruptStoreError(_corrupt_message(path, problems[0]))


def _read_meta(path: Path, connection: sqlite3.Connection) -> tuple[dict[str, Any], Shard]:
    """The stored fingerprint and shard of the store at ``path``."""
    with _sqlite_errors(path):
        try:
            meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError:
            raise SampleStoreError(f"{path}: not a bayespeft sample store (no meta table)") from None
    try:
        return json.loads(meta["fingerprint"]), Shard.parse(meta["shard"])
    except (KeyError, ValueError, ConfigError):
        raise CorruptStoreError(_corrupt_message(path, "unreadable meta table")) from None


def _initialise(path: Path, fingerprint: Mapping[str, Any], shard: Shard) -> None:
    """Create the tables and meta rows in the new, empty database file ``path`` (a temp file)."""
    connection = _connect(path)
    try:
        with _sqlite_errors(path):
            connection.executescript(_SCHEMA)
            connection.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("fingerprint", _canonical_json(fingerprint)), ("shard", str(shard))],
            )
    finally:
        connection.close()


def _create(path: Path, fingerprint: Mapping[str, Any], shard: Shard) -> None:
    """Make a new empty store at ``path`` atomically, so a store under its name always has its meta."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        _initialise(tmp, fingerprint, shard)


class SampleStore:
    """Generations of one configuration and shard in one SQLite file; use :meth:`open` or :meth:`open_existing`.

    One process writes a given file; several may read it at the same time.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection, fingerprint: dict[str, Any], shard: Shard) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.shard = shard
        self._connection = connection

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], fingerprint: Mapping[str, Any], shard: Shard | None = None
    ) -> SampleStore:
        """Create the store or reopen it to resume; refuse (writing nothing) a store of another configuration.

        ``fingerprint`` must hold ``method``, ``seed`` and ``samples_per_example``
        (see :func:`generation_fingerprint`).
        """
        path, shard = Path(path), shard or Shard()
        wanted = _normalised(fingerprint)
        if not path.exists():
            _create(path, wanted, shard)
        store = cls._connect_existing(path)
        try:
            difference = _first_difference(store.fingerprint, wanted, ("the store", "this run"))
            if difference:
                raise SampleStoreError(
                    f"{path}: store was made with another configuration ({difference}); "
                    "use a new store path or the store's settings"
                )
            if store.shard != shard:
                raise SampleStoreError(f"{path}: store holds shard {store.shard}, not shard {shard}")
            store._enable_writes()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open_existing(cls, path: str | os.PathLike[str]) -> SampleStore:
        """Open a store with the configuration it was made with (to read, export or inspect it)."""
        store = cls._connect_existing(Path(path))
        try:
            store._enable_writes()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def _connect_existing(cls, path: Path) -> SampleStore:
        """Connect to ``path``, check its pages and read its meta, without writing anything."""
        if not path.is_file():
            raise SampleStoreError(f"{path}: sample store not found")
        connection = _connect(path)
        try:
            _quick_check(path, connection)
            fingerprint, shard = _read_meta(path, connection)
        except BaseException:
            connection.close()
            raise
        return cls(path, connection, fingerprint, shard)

    def _enable_writes(self) -> None:
        with _sqlite_errors(self.path):
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def method(self) -> str:
        return self.fingerprint["method"]

    @property
    def seed(self) -> int:
        return self.fingerprint["seed"]

    @property
    def samples_per_example(self) -> int:
        return self.fingerprint["samples_per_example"]

    def check_integrity(self, full: bool = False) -> None:
        """Raise :class:`CorruptStoreError` if SQLite's ``quick_check`` (``integrity_check`` when ``full``) fails."""
        _quick_check(self.path, self._connection, full)

    def count(self) -> int:
        """Number of stored samples."""
        with _sqlite_errors(self.path):
            return self._connection.execute("SELECT count(*) FROM samples").fetchone()[0]

    def _sample_counts(self) -> dict[str, int]:
        """Distinct valid sample indices stored per example uid."""
        with _sqlite_errors(self.path):
            return dict(
                self._connection.execute(
                    "SELECT example_uid, count(DISTINCT sample_index) FROM samples"
                    " WHERE method = ? AND seed = ? AND sample_index BETWEEN 0 AND ? - 1 GROUP BY example_uid",
                    (self.method, self.seed, self.samples_per_example),
                ).fetchall()
            )

    def complete_examples(self) -> set[str]:
        """Uids of the examples with all ``samples_per_example`` samples stored."""
        return {uid for uid, n in self._sample_counts().items() if n == self.samples_per_example}

    def partial_examples(self) -> dict[str, set[int]]:
        """The stored sample indices of each example that has some but not all of its samples."""
        partial = {uid for uid, n in self._sample_counts().items() if n < self.samples_per_example}
        stored: dict[str, set[int]] = {uid: set() for uid in partial}
        if partial:
            with _sqlite_errors(self.path):
                for uid, index in self._connection.execute(
                    "SELECT example_uid, sample_index FROM samples WHERE method = ? AND seed = ?",
                    (self.method, self.seed),
                ):
                    if uid in stored:
                        stored[uid].add(index)
        return stored

    def _check_row(self, row: SampleRow) -> None:
        """Refuse a row that does not belong to this store (programming errors of the producer)."""
        if (row.method, row.seed) != (self.method, self.seed):
            raise ValueError(f"{self.path}: row {row.key} is not of this store's method/seed {self.method}/{self.seed}")
        if not 0 <= row.sample_index < self.samples_per_example:
            raise ValueError(f"{self.path}: row {row.key} has sample index outside 0..{self.samples_per_example - 1}")
        if len(row.token_ids) != len(row.token_logprobs):
            raise ValueError(
                f"{self.path}: row {row.key} has {len(row.token_ids)} tokens but {len(row.token_logprobs)} log-probs"
            )
        if math.isnan(row.log_likelihood):
            raise ValueError(f"{self.path}: row {row.key} has a NaN log-likelihood")

    def write(self, rows: Sequence[SampleRow]) -> None:
        """Insert ``rows`` in one transaction: all of them, or none if any key is already stored."""
        keys = set()
        for row in rows:
            self._check_row(row)
            if row.key in keys:
                raise ValueError(f"{self.path}: sample {row.key} appears twice in one write")
            keys.add(row.key)
        created, shard = _now(), str(self.shard)
        values = [_row_values(row, created, shard) for row in rows]
        connection = self._connection
        with _sqlite_errors(self.path):
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(_INSERT, values)
            except sqlite3.IntegrityError:
                connection.execute("ROLLBACK")
                stored = next(row.key for row in rows if self._has(row.key))
                raise SampleStoreError(
                    f"{self.path}: sample {stored} is already stored; refusing to replace it"
                ) from None
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _has(self, key: tuple[str, int, str, int]) -> bool:
        where = " AND ".join(f"{column} = ?" for column in _KEY_COLUMNS)
        return self._connection.execute(f"SELECT 1 FROM samples WHERE {where}", key).fetchone() is not None

    def _select(self) -> Iterator[tuple[Any, ...]]:
        """All rows' SQL values in :data:`_COLUMNS` order, by example index then sample index."""
        with _sqlite_errors(self.path):
            yield from self._connection.execute(f"{_SELECT} {_ORDER}")

    def rows(self) -> Iterator[SampleRow]:
        """The stored samples (content only), by example index then sample index."""
        return (_decode_row(values) for values in self._select())

    def records(self) -> Iterator[dict[str, Any]]:
        """Every column of every stored sample as a JSON-ready dict (token lists as lists), in :meth:`rows` order."""
        for values in self._select():
            record = dict(zip(_COLUMNS, values, strict=True))
            record["token_ids"] = json.loads(record["token_ids"])
            record["token_logprobs"] = json.loads(record["token_logprobs"])
            yield record

    def export_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Write one JSON object per sample to ``path`` atomically; returns the number of rows."""
        path = Path(path)
        written = 0
        with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            for record in self.records():
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
        return written

    def export_parquet(self, path: str | os.PathLike[str], rows_per_group: int = 4096) -> int:
        """Write the samples as a Parquet table to ``path`` atomically; returns the number of rows."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema(
            [
                ("example_uid", pa.string()),
                ("sample_index", pa.int64()),
                ("method", pa.string()),
                ("seed", pa.int64()),
                ("example_index", pa.int64()),
                ("prompt", pa.string()),
                ("text", pa.string()),
                ("token_ids", pa.list_(pa.int64())),
                ("log_likelihood", pa.float64()),
                ("token_logprobs", pa.list_(pa.float64())),
                ("num_tokens", pa.int64()),
                ("finish_reason", pa.string()),
                ("created", pa.string()),
                ("shard", pa.string()),
            ]
        )
        path = Path(path)
        written = 0
        with atomic_file(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            group: list[dict[str, Any]] = []
            for record in self.records():
                group.append(record)
                if len(group) == rows_per_group:
                    writer.write_table(pa.Table.from_pylist(group, schema=schema))
                    written, group = written + len(group), []
            if group:
                writer.write_table(pa.Table.from_pylist(group, schema=schema))
                written += len(group)
        return written


# ---------------------------------------------------------------------------
# Merge and salvage
# ---------------------------------------------------------------------------


def merge(shard_paths: Iterable[str | os.PathLike[str]], out_path: str | os.PathLike[str]) -> int:
    """Unite shard stores (and ``out_path`` itself, if it exists) into ``out_path``; returns its row count.

    All fingerprints must be equal (shards differ in shard id only). A key stored in several
    inputs must have the same content everywhere (copies are kept once), so merging again is
    harmless. The result is built in a temporary file and renamed over ``out_path``.
    """
    out_path = Path(out_path)
    inputs = list(dict.fromkeys(Path(p) for p in shard_paths))
    if out_path.exists() and out_path not in inputs:
        inputs.append(out_path)
    if not inputs:
        raise SampleStoreError(f"{out_path}: no shard stores to merge")
    fingerprints = []
    for path in inputs:
        with SampleStore.open_existing(path) as store:
            fingerprints.append(store.fingerprint)
    for path, fingerprint in zip(inputs[1:], fingerprints[1:], strict=True):
        difference = _first_difference(fingerprints[0], fingerprint, (str(inputs[0]), "this store"))
        if difference:
            raise SampleStoreError(f"{path}: made with another configuration ({difference}); refusing to merge")
    key_match = " AND ".join(f"s.{column} = m.{column}" for column in _KEY_COLUMNS)
    same_content = " AND ".join(f"s.{column} IS m.{column}" for column in _CONTENT_COLUMNS)
    columns = ", ".join(_COLUMNS)
    with atomic_file(out_path) as tmp:
        _initialise(tmp, fingerprints[0], Shard())
        connection = _connect(tmp)
        try:
            for path in inputs:
                with _sqlite_errors(path):
                    connection.execute("ATTACH DATABASE ? AS source", (str(path),))
                    conflict = connection.execute(
                        f"SELECT s.example_uid, s.sample_index FROM source.samples AS s JOIN main.samples AS m"
                        f" ON {key_match} WHERE NOT ({same_content}) LIMIT 1"
                    ).fetchone()
                    if conflict:
                        raise SampleStoreError(
                            f"{path}: sample {tuple(conflict)} differs from the one in another shard; refusing to merge"
                        )
                    # Any key already merged has identical content (checked above), so IGNORE drops exact copies only.
                    connection.execute(
                        f"INSERT OR IGNORE INTO main.samples ({columns}) SELECT {columns} FROM source.samples"
                    )
                    connection.execute("DETACH DATABASE source")
            merged = connection.execute("SELECT count(*) FROM samples").fetchone()[0]
        finally:
            connection.close()
    return merged


@dataclass(frozen=True)
class SalvageResult:
    """What :func:`salvage` copied: ``recovered`` rows, and ``lost`` rows that were unreadable or damaged.

    ``lost`` counts unreadable rowids, so it is an upper bound when the table's last page and its
    key index are both damaged (the extent of the table is then unknown).
    """

    recovered: int
    lost: int


def _max_rowid(connection: sqlite3.Connection) -> int:
    """The largest rowid of the samples table: from the table, else from its key index (which holds
    every rowid) when the table's last page is damaged, else a bound from the file size."""
    for query in (
        "SELECT max(rowid) FROM samples",
        "SELECT max(rowid) FROM samples INDEXED BY sqlite_autoindex_samples_1",
    ):
        try:
            return connection.execute(query).fetchone()[0] or 0
        except sqlite3.DatabaseError:
            continue
    page_count = connection.execute("PRAGMA page_count").fetchone()[0]
    page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    return page_count * page_size // _MIN_ROW_BYTES


def _readable_rows(connection: sqlite3.Connection, last_rowid: int) -> Iterator[tuple[Any, ...] | None]:
    """Every row with rowid up to ``last_rowid``, and ``None`` for each rowid that cannot be read.

    Rowids are read in chunks; a chunk that fails is halved until the failures are single rows,
    so a damaged page costs only the rows on it.
    """
    pending = [(low, min(low + _SALVAGE_CHUNK - 1, last_rowid)) for low in range(1, last_rowid + 1, _SALVAGE_CHUNK)]
    pending.reverse()
    while pending:
        low, high = pending.pop()
        try:
            rows = connection.execute(f"{_SELECT} WHERE rowid BETWEEN ? AND ? ORDER BY rowid", (low, high)).fetchall()
        except sqlite3.DatabaseError:
            if low == high:
                yield None
            else:
                middle = (low + high) // 2
                pending += [(middle + 1, high), (low, middle)]
            continue
        yield from rows


def salvage(path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> SalvageResult:
    """Copy every readable, intact row of the (damaged) store ``path`` into a new store ``out_path``.

    The new store gets the old one's configuration and shard, so a run can then resume into it
    and regenerate what was lost. ``path`` itself is only read.
    """
    path, out_path = Path(path), Path(out_path)
    if out_path.exists():
        raise SampleStoreError(f"{out_path}: already exists; salvage writes a new store")
    if not path.is_file():
        raise SampleStoreError(f"{path}: sample store not found")
    source = _connect(path)
    try:
        try:
            fingerprint, shard = _read_meta(path, source)
        except CorruptStoreError:
            raise CorruptStoreError(
                f"{path}: cannot read the store's configuration (meta table); nothing to salvage"
            ) from None
        with atomic_file(out_path) as tmp:
            _initialise(tmp, fingerprint, shard)
            target = _connect(tmp)
            recovered = lost = 0
            try:
                target.execute("BEGIN")
                for values in _readable_rows(source, _max_rowid(source)):
                    if values is None or not _intact(values):
                        lost += 1
                        continue
                    try:
                        target.execute(_INSERT, values)
                    except sqlite3.IntegrityError:  # a damaged key that collides with an intact row
                        lost += 1
                        continue
                    recovered += 1
                target.execute("COMMIT")
            finally:
                target.close()
    finally:
        source.close()
    return SalvageResult(recovered=recovered, lost=lost)


# ---------------------------------------------------------------------------
# The resumable sampling loop
# ---------------------------------------------------------------------------


class HasUid(Protocol):
    """An example with a stable unique id (every bayespeft example type has one)."""

    @property
    def uid(self) -> str: ...


ExampleT = TypeVar("ExampleT", bound=HasUid)


@dataclass(frozen=True)
class SamplingSummary:
    """Examples of this shard: in all, complete before the call, and completed by it."""

    examples: int
    already_complete: int
    completed: int


def _rows_to_write(
    store: SampleStore,
    batch: Sequence[tuple[int, HasUid]],
    generations: Iterable[Generation],
    partial: Mapping[str, set[int]],
) -> list[SampleRow]:
    """The producer's generations as rows, minus samples already stored; every example must end complete."""
    index_of = {example.uid: index for index, example in batch}
    new: dict[str, set[int]] = {uid: set() for uid in index_of}
    rows = []
    for generation in generations:
        uid, sample_index = generation.example_uid, generation.sample_index
        if uid not in index_of:
            raise ValueError(f"produce_rows returned a sample of example {uid!r}, which is not in the batch")
        if sample_index in new[uid]:
            raise ValueError(f"produce_rows returned sample {sample_index} of {uid!r} twice")
        if sample_index in partial.get(uid, ()):
            continue  # stored before a crash or salvage: keep the stored sample
        new[uid].add(sample_index)
        rows.append(
            SampleRow(
                example_uid=uid,
                sample_index=sample_index,
                method=store.method,
                seed=store.seed,
                example_index=index_of[uid],
                prompt=generation.prompt,
                text=generation.text,
                token_ids=tuple(int(t) for t in generation.token_ids),
                log_likelihood=float(generation.log_likelihood),
                token_logprobs=tuple(float(p) for p in generation.token_logprobs),
                finish_reason=generation.finish_reason,
            )
        )
    expected = set(range(store.samples_per_example))
    for uid, indices in new.items():
        indices |= partial.get(uid, set())
        if indices != expected:
            raise ValueError(
                f"produce_rows left example {uid!r} with samples {sorted(indices)}; expected 0..{len(expected) - 1}"
            )
    return rows


def run_sampling(
    store: SampleStore,
    examples: Sequence[ExampleT],
    produce_rows: Callable[[list[ExampleT]], Iterable[Generation]],
    batch_size: int,
    progress: bool = True,
) -> SamplingSummary:
    """Generate and store the samples of this store's shard of ``examples`` that are not stored yet.

    ``examples`` is the whole, unsharded list (the same on every shard): an example's position is
    its index, which picks its shard. Complete examples are skipped; the rest go to
    ``produce_rows`` ``batch_size`` at a time, which must return all ``samples_per_example``
    samples of each, and each batch is written in one transaction, so a kill loses at most the
    batch in flight. Samples stored before (after a salvage) are kept and not duplicated.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size}: must be at least 1")
    seen: set[str] = set()
    for example in examples:
        if example.uid in seen:
            raise DataError(f"example uid {example.uid!r} appears twice; sample keys need unique uids")
        seen.add(example.uid)
    owned = [(index, example) for index, example in enumerate(examples) if store.shard.owns(index)]
    complete = store.complete_examples()
    partial = store.partial_examples()
    pending = [(index, example) for index, example in owned if example.uid not in complete]
    already = len(owned) - len(pending)
    with tqdm(
        total=len(owned), initial=already, unit="example", desc=f"sample {store.shard}", disable=not progress
    ) as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            generations = produce_rows([example for _, example in batch])
            store.write(_rows_to_write(store, batch, generations, partial))
            bar.update(len(batch))
    return SamplingSummary(examples=len(owned), already_complete=already, completed=len(pending))
