"""Dataset-agnostic pieces of the data loaders: reading rows from files or the hub, checked
field access, and turning bad rows into :class:`~bayespeft.errors.DataError` that name where
they came from.

Readers yield ``(line number, row mapping)`` pairs and raise ``DataError`` for lines they
cannot parse. Row converters raise :class:`BadRow` for content they cannot use;
:func:`convert_rows` adds the location (``path:LINE`` or the hub row) to the message.
"""

from __future__ import annotations

import io
import json
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TextIO, TypeVar

from bayespeft.errors import ConfigError, DataError

__all__ = [
    "SPLITS",
    "TRAIN_VAL",
    "TRAIN_VAL_TEST",
    "BadRow",
    "DatasetSpec",
    "Locator",
    "Request",
    "RowConverter",
    "Rows",
    "at",
    "check_load_args",
    "convert_rows",
    "get",
    "hub_rows",
    "jsonl_rows",
    "open_data",
    "seeded_part",
    "tab_rows",
    "text",
    "warn_once",
    "with_aligned_labels",
]

T = TypeVar("T")

SPLITS: tuple[str, ...] = ("train", "validation", "test")
TRAIN_VAL_TEST: Mapping[str, str] = {"train": "train", "validation": "validation", "test": "test"}
TRAIN_VAL: Mapping[str, str] = {"train": "train", "validation": "validation"}

Rows = Iterator[tuple[int, Mapping[str, Any]]]
Locator = Callable[[int], str]
RowConverter = Callable[[Mapping[str, Any], str, str], T]
"""``(row, dataset, uid) -> example``; raises :class:`BadRow` on bad content."""


class BadRow(Exception):
    """A record that cannot be converted; the caller adds where it came from."""


class Request(Protocol):
    """What the readers need to know of a loader call: which dataset and split asked."""

    @property
    def dataset(self) -> str: ...

    @property
    def split(self) -> str: ...


@dataclass(frozen=True)
class DatasetSpec(Generic[T]):
    """How to load one dataset offline and from the hub; loaders add what else they need."""

    offline: Mapping[str, Callable[[Path, Any], list[T]]]  # split -> loader(data_dir, request)
    hub_path: str
    hub_config: str | None
    hub_splits: Mapping[str, str]  # split -> hub split name (labelled splits only)
    from_hub: RowConverter[T]


# ----------------------------------------------------------------------------- field access


def get(row: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """``row[key]`` checked to be of ``kind``."""
    try:
        value = row[key]
    except (KeyError, TypeError):
        raise BadRow(f"missing field {key!r}") from None
    if not isinstance(value, kind):
        expected = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise BadRow(f"field {key!r} has type {type(value).__name__}, expected {expected}")
    return value


def text(row: Mapping[str, Any], key: str) -> str:
    """A non-empty, whitespace-stripped string field."""
    value = get(row, key, str).strip()
    if not value:
        raise BadRow(f"field {key!r} is empty")
    return value


# ----------------------------------------------------------------------------- file readers


def open_data(path: Path, request: Request, *, encoding: str = "utf-8") -> TextIO:
    """A data file's text (decoded whole, so a bad byte is a DataError naming the file and line), or
    a DataError saying which dataset and split needed the missing file."""
    if not path.is_file():
        raise DataError(f"{request.dataset} {request.split}: data file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        name = "UTF-8" if encoding.lower().replace("_", "-").startswith("utf-8") else encoding
        raise DataError(f"{path}:{line}: not {name} text ({exc.reason} at byte {exc.start})") from None
    return io.StringIO(text, newline="")


def jsonl_rows(path: Path, request: Request, *, encoding: str = "utf-8") -> Rows:
    """Non-blank lines of a JSONL file, each a JSON object."""
    with open_data(path, request, encoding=encoding) as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def tab_rows(
    path: Path,
    request: Request,
    columns: Sequence[str],
    header: Sequence[str] | None = None,
    *,
    encoding: str = "utf-8",
) -> Rows:
    """Lines split on tabs only (no quoting: quotes are text), keyed by ``columns``.

    With ``header``, the first line must equal it. Blank lines are skipped.
    """
    with open_data(path, request, encoding=encoding) as handle:
        for lineno, line in enumerate(handle, 1):
            cells = line.rstrip("\r\n").split("\t")
            if header is not None and lineno == 1:
                if cells != list(header):
                    raise DataError(f"{path}:1: expected the header {list(header)}, got {cells}")
                continue
            if not line.strip():
                continue
            if len(cells) != len(columns):
                raise DataError(f"{path}:{lineno}: expected {len(columns)} tab-separated columns, got {len(cells)}")
            yield lineno, dict(zip(columns, cells, strict=True))


def with_aligned_labels(
    rows: Rows,
    labels_path: Path,
    request: Request,
    labels: Mapping[str, Any],
    *,
    encoding: str = "utf-8",
) -> Rows:
    """Merge a labels file (one label per non-blank line, aligned with ``rows``) in as ``row["label"]``.

    Each line must be a key of ``labels``; the row gets the value it maps to.
    """
    with open_data(labels_path, request, encoding=encoding) as handle:
        lines = [(n, line.strip()) for n, line in enumerate(handle, 1) if line.strip()]
    count = 0
    for count, (lineno, row) in enumerate(rows, 1):
        if count > len(lines):
            raise DataError(f"{labels_path}: has {len(lines)} labels but more records follow in the data")
        label_line, label = lines[count - 1]
        if label not in labels:
            raise DataError(f"{labels_path}:{label_line}: expected label {' or '.join(labels)}, got {label!r}")
        yield lineno, {**row, "label": labels[label]}
    if count != len(lines):
        raise DataError(f"{labels_path}: has {len(lines)} labels but the data has {count} records")


def at(path: Path) -> Locator:
    """Locator ``path:LINE`` for error messages."""
    return lambda line: f"{path}:{line}"


def hub_rows(hub_path: str, hub_config: str | None, hub_split: str) -> tuple[Iterable[tuple[int, Any]], Locator]:
    """Rows of a Hugging Face hub split, numbered from 0, and their locator ``<source> split <s> row <i>``."""
    import datasets  # slow import, only needed online

    source = hub_path + (f" ({hub_config})" if hub_config else "")
    rows = datasets.load_dataset(hub_path, hub_config, split=hub_split)
    return enumerate(rows), lambda i: f"{source} split {hub_split} row {i}"


# ----------------------------------------------------------------------------- converting


def convert_rows(
    rows: Iterable[tuple[int, Mapping[str, Any]]],
    where: Locator,
    convert: RowConverter[T],
    dataset: str,
    uid: Callable[[int, Mapping[str, Any]], str],
) -> list[T]:
    """``convert(row, dataset, uid(index, row))`` for each row, turning :class:`BadRow` into
    ``DataError("<where(line)>: ...")``."""
    examples = []
    for index, (line, row) in enumerate(rows):
        try:
            examples.append(convert(row, dataset, uid(index, row)))
        except BadRow as err:
            raise DataError(f"{where(line)}: {err}") from None
    return examples


def warn_once(seen: set[str], key: str, message: str, *, stacklevel: int = 1) -> None:
    """Emit a UserWarning the first time ``key`` is added to ``seen``.

    ``stacklevel`` counts from the caller, as for :func:`warnings.warn` called there.
    """
    if key not in seen:
        seen.add(key)
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)


def seeded_part(items: list[T], size: int, seed: int, held_out: bool) -> list[T]:
    """The ``size`` items picked by ``random.Random(seed)`` (or the others), in their original order."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:size])
    return [item for i, item in enumerate(items) if (i in chosen) == held_out]


# ----------------------------------------------------------------------------- loader arguments


def check_load_args(
    dataset: str,
    split: str,
    data_dir: str | Path | None,
    limit: int | None,
    offline_splits: Iterable[str],
    hub_splits: Iterable[str],
) -> Path | None:
    """Check the arguments of a loader call; returns ``data_dir`` as a ``Path`` (``None``: the hub).

    ``split`` must be one of :data:`SPLITS` and available offline (``offline_splits``) or on
    the hub (``hub_splits``), whichever ``data_dir`` asks for; ``limit`` must not be negative.
    """
    offline_splits, hub_splits = list(offline_splits), list(hub_splits)
    if split not in SPLITS:
        raise ConfigError(
            f"unknown split {split!r} for {dataset}; choose one of {', '.join(SPLITS)} "
            f"(offline data has: {', '.join(offline_splits)})"
        )
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    offline_dir = None if data_dir is None else Path(data_dir)
    if offline_dir is not None and not offline_dir.is_dir():
        raise DataError(f"data directory does not exist: {offline_dir}")
    available = offline_splits if offline_dir is not None else hub_splits
    if split not in available:
        source = "offline data" if offline_dir is not None else "the hub (labelled splits)"
        raise ConfigError(f"{dataset} has no {split!r} split in {source}; available: {', '.join(available)}")
    return offline_dir
