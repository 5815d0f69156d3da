"""Sentence(-pair) classification benchmarks (GLUE / SuperGLUE) for encoder models.

Every dataset is turned into :class:`ClassificationExample` records (``text``, optional
``text_pair``, integer ``label``) ready for a ``tokenizer(text, text_pair)`` call. Data comes
either from a local folder laid out like the project's staged copies (``data_dir``) or from
the Hugging Face hub (``data_dir=None``).

Task formats:

* RTE: ``text`` = sentence1 (premise), ``text_pair`` = sentence2; entailment=0, not_entailment=1
  (GLUE's order).
* MRPC: the two sentences; not_equivalent=0, equivalent=1.
* CoLA: single sentence (``text_pair`` is ``None``); unacceptable=0, acceptable=1.
* WiC: ``text`` = ``"<word>: <sentence1>"`` (the target word is prepended so that the pair is
  solvable without span markers), ``text_pair`` = sentence2; False=0, True=1.
* BoolQ: ``text`` = passage, ``text_pair`` = question; False=0, True=1.

Offline quirks handled here (see the ``SOURCE.md`` of each data folder):

* RTE has no labelled test split (GLUE's test file is unlabelled).
* MRPC offline is the original MSRP release; GLUE's dev ids are not available, so
  ``validation`` is a seeded hold-out of 408 pairs from the MSRP train file (permutation from
  ``random.Random(1234 + seed)``) and ``train`` the other 3668; ``test`` is the MSRP test file.
  The files are split on tabs only: quotes in them are literal text.
* CoLA ``validation`` is GLUE's dev set: in-domain dev followed by out-of-domain dev (1043).
* WiC's staged package includes the test gold labels.
* BoolQ has only the official dev set offline; ``train``/``validation`` are the same seeded
  2270/1000 split as :mod:`bayespeft.data.multiple_choice` uses (same seed, same uids).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from bayespeft.data import records
from bayespeft.data.multiple_choice import split_boolq
from bayespeft.data.records import (
    SPLITS,
    TRAIN_VAL,
    TRAIN_VAL_TEST,
    BadRow,
    DatasetSpec,
    Locator,
    RowConverter,
    Rows,
    at,
    check_load_args,
    convert_rows,
    get,
    hub_rows,
    seeded_part,
    text,
    warn_once,
)
from bayespeft.errors import ConfigError, DataError

__all__ = [
    "SPLITS",
    "ClassificationExample",
    "ClassificationTaskInfo",
    "classification_task_info",
    "list_classification_datasets",
    "load_classification_dataset",
    "task_metric",
]

#: Records of the offline MSRP files: a file with fewer was cut short (a copy interrupted).
MRPC_RECORDS = {"msr_paraphrase_train.txt": 4076, "msr_paraphrase_test.txt": 1725}
MRPC_VALIDATION_SIZE = 408
"""Size of the offline MRPC hold-out (GLUE's dev size); the rest of the MSRP train file is ``train``."""

_MRPC_SEED_OFFSET = 1234
_MRPC_COLUMNS = ("label", "id1", "id2", "sentence1", "sentence2")
_MRPC_HEADER = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
_RTE_COLUMNS = ("idx", "sentence1", "sentence2", "label")
_RTE_HEADER = ("index", "sentence1", "sentence2", "label")
_COLA_COLUMNS = ("source", "label", "mark", "sentence")
_WIC_COLUMNS = ("word", "pos", "indices", "sentence1", "sentence2")
_warned: set[str] = set()


@dataclass(frozen=True)
class ClassificationExample:
    """One sentence or sentence-pair classification item.

    ``text_pair`` is ``None`` for single-sentence tasks (CoLA); ``label`` indexes the task's
    ``label_names``.
    """

    uid: str
    text: str
    text_pair: str | None
    label: int
    dataset: str


@dataclass(frozen=True)
class ClassificationTaskInfo:
    """Label space and usual metric of a task (``"accuracy"``, ``"f1"`` or ``"mcc"``)."""

    name: str
    num_labels: int
    label_names: tuple[str, ...]
    metric: str


class _Request(NamedTuple):
    """What one loader call needs besides the location of the data."""

    dataset: str  # canonical name stored on the examples
    split: str
    seed: int


# ----------------------------------------------------------------------------- field access


def _label(row: Mapping[str, Any], key: str, strings: Mapping[str, int]) -> int:
    """A class index given as one of ``strings`` (file form) or as an int (hub form)."""
    value = get(row, key, (int, str))
    if isinstance(value, str):
        if value.strip() not in strings:
            raise BadRow(f"field {key!r} should be one of {', '.join(map(repr, strings))}, got {value!r}")
        return strings[value.strip()]
    if isinstance(value, bool):
        raise BadRow(f"field {key!r} has type bool, expected int or str")
    if value == -1:
        raise BadRow(f"field {key!r} is -1: this split is unlabelled")
    if value not in set(strings.values()):
        raise BadRow(f"field {key!r} should be a class index in 0..{len(set(strings.values())) - 1}, got {value}")
    return value


# ----------------------------------------------------------------------------- per-dataset rows
# Each converter takes (row, dataset, uid) and raises BadRow on bad content; offline and hub
# rows use the same field names (offline readers name their columns like the hub does).

_RTE_LABELS = {"entailment": 0, "not_entailment": 1}
_BINARY_LABELS = {"0": 0, "1": 1}
_WIC_LABELS = {"F": 0, "T": 1}
_WIC_GOLD = {"T": "T", "F": "F"}  # gold-file lines, merged in as read
_BOOLQ_LABELS = {"false": 0, "true": 1}


def _pair_row(row: Mapping[str, Any], dataset: str, uid: str, labels: Mapping[str, int]) -> ClassificationExample:
    """RTE / MRPC (GLUE TSV, MSRP file and hub): ``{sentence1, sentence2, label}``."""
    return ClassificationExample(
        uid=uid,
        text=text(row, "sentence1"),
        text_pair=text(row, "sentence2"),
        label=_label(row, "label", labels),
        dataset=dataset,
    )


def _cola_row(row: Mapping[str, Any], dataset: str, uid: str) -> ClassificationExample:
    """CoLA (raw TSV and hub): ``{sentence, label}``; a single sentence."""
    return ClassificationExample(
        uid=uid,
        text=text(row, "sentence"),
        text_pair=None,
        label=_label(row, "label", _BINARY_LABELS),
        dataset=dataset,
    )


def _wic_row(row: Mapping[str, Any], dataset: str, uid: str) -> ClassificationExample:
    """WiC (package files with gold merged in, and hub): ``{word, sentence1, sentence2, label}``.

    The target word is prepended to the first sentence (``"<word>: <sentence1>"``).
    """
    return ClassificationExample(
        uid=uid,
        text=f"{text(row, 'word')}: {text(row, 'sentence1')}",
        text_pair=text(row, "sentence2"),
        label=_label(row, "label", _WIC_LABELS),
        dataset=dataset,
    )


def _boolq_row(row: Mapping[str, Any], dataset: str, uid: str) -> ClassificationExample:
    """BoolQ: SuperGLUE JSONL ``{passage, question, idx, label "true"/"false"}``, hub
    ``google/boolq`` ``{passage, question, answer: bool}`` or hub ``super_glue`` ``{.., label: int}``."""
    if "answer" in row:
        label = int(get(row, "answer", bool))
    elif isinstance(row.get("label"), bool):
        label = int(row["label"])
    else:
        label = _label(row, "label", _BOOLQ_LABELS)
    return ClassificationExample(
        uid=uid, text=text(row, "passage"), text_pair=text(row, "question"), label=label, dataset=dataset
    )


# ----------------------------------------------------------------------------- file readers
# Readers yield (line number, row mapping) and raise DataError for unparsable lines. A row may
# carry "_uid" (its id, set by offline readers) or "idx" (GLUE/SuperGLUE index).

_ENCODING = "utf-8-sig"  # a UTF-8 BOM is dropped
_jsonl_rows = partial(records.jsonl_rows, encoding=_ENCODING)
_tab_rows = partial(records.tab_rows, encoding=_ENCODING)
_with_labels = partial(records.with_aligned_labels, encoding=_ENCODING)


def _row_uid(row: Mapping[str, Any], request: _Request, index: int) -> str:
    """``row["_uid"]``, else ``<dataset>:<split>:<idx>`` from the row's GLUE index, else its position."""
    uid = row.get("_uid")
    if isinstance(uid, str):
        return uid
    idx = row.get("idx")
    if isinstance(idx, str) and idx.strip().isdigit():
        idx = int(idx)
    if not isinstance(idx, int) or isinstance(idx, bool):
        idx = index
    return f"{request.dataset}:{request.split}:{idx}"


def _convert(
    rows: Iterable[tuple[int, Mapping[str, Any]]],
    where: Locator,
    convert: RowConverter[ClassificationExample],
    request: _Request,
) -> list[ClassificationExample]:
    """Convert rows; uids come from :func:`_row_uid`."""
    return convert_rows(rows, where, convert, request.dataset, lambda index, row: _row_uid(row, request, index))


# ----------------------------------------------------------------------------- offline loaders
# Signature: (data_dir, request) -> examples.

OfflineLoader = Callable[[Path, _Request], list[ClassificationExample]]


def _offline_rte(data_dir: Path, request: _Request, file: str) -> list[ClassificationExample]:
    path = data_dir / "rte" / "glue" / file
    rows = _tab_rows(path, request, _RTE_COLUMNS, _RTE_HEADER)
    return _convert(rows, at(path), partial(_pair_row, labels=_RTE_LABELS), request)


def _mrpc_rows(path: Path, request: _Request) -> Rows:
    """MSRP file rows, with the sentence-id pair as uid (unique over train and test)."""
    for lineno, row in _tab_rows(path, request, _MRPC_COLUMNS, _MRPC_HEADER):
        yield lineno, {**row, "_uid": f"mrpc:{row['id1'].strip()}-{row['id2'].strip()}"}


def _offline_mrpc(data_dir: Path, request: _Request) -> list[ClassificationExample]:
    """MSRP test file, or a seeded 3668/408 train/validation split of the MSRP train file.

    The permutation comes from ``random.Random(1234 + seed)``; each part keeps file order.
    """
    file = "msr_paraphrase_test.txt" if request.split == "test" else "msr_paraphrase_train.txt"
    path = data_dir / "mrpc" / file
    examples = _convert(_mrpc_rows(path, request), at(path), partial(_pair_row, labels=_BINARY_LABELS), request)
    if len(examples) != MRPC_RECORDS[file]:
        raise DataError(
            f"{path}: has {len(examples)} records, the MSRP release has {MRPC_RECORDS[file]} (a truncated copy?)"
        )
    if request.split == "test":
        return examples
    warn_once(
        _warned,
        "mrpc",
        "offline MRPC train/validation are a seeded hold-out of the MSRP train file "
        f"({len(examples) - MRPC_VALIDATION_SIZE}/{MRPC_VALIDATION_SIZE}), not GLUE's dev ids; "
        "load from the hub (data_dir=None) for GLUE's split",
        stacklevel=3,
    )
    return seeded_part(examples, MRPC_VALIDATION_SIZE, _MRPC_SEED_OFFSET + request.seed, request.split == "validation")


def _offline_cola(data_dir: Path, request: _Request, parts: Sequence[str]) -> list[ClassificationExample]:
    """Raw CoLA TSV files (concatenated in order); uids ``cola:<file stem>:<n>``."""
    examples: list[ClassificationExample] = []
    for part in parts:
        path = data_dir / "cola" / "raw" / f"{part}.tsv"
        rows = (
            (lineno, {**row, "_uid": f"cola:{part}:{n}"})
            for n, (lineno, row) in enumerate(_tab_rows(path, request, _COLA_COLUMNS))
        )
        examples += _convert(rows, at(path), _cola_row, request)
    return examples


def _offline_wic(data_dir: Path, request: _Request, folder: str) -> list[ClassificationExample]:
    path = data_dir / "wic" / folder / f"{folder}.data.txt"
    gold = path.with_name(f"{folder}.gold.txt")
    rows = _with_labels(_tab_rows(path, request, _WIC_COLUMNS), gold, request, _WIC_GOLD)
    return _convert(rows, at(path), _wic_row, request)


def _offline_boolq(data_dir: Path, request: _Request) -> list[ClassificationExample]:
    """Seeded split of the official BoolQ dev set, identical to the multiple-choice module's:
    ``validation`` gets 1000 items picked by ``random.Random(1234 + seed)``, ``train`` the rest.

    Uids are ``boolq:validation:<official dev idx>`` whichever part holds the item.
    """
    path = data_dir / "boolq" / "val.jsonl"
    uid_request = request._replace(split="validation")
    examples = _convert(_jsonl_rows(path, request), at(path), _boolq_row, uid_request)
    return split_boolq(examples, path, request.split, request.seed, _warned)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Spec(DatasetSpec[ClassificationExample]):
    """How to load one dataset offline and from the hub, and its label space."""

    info: ClassificationTaskInfo


_SPECS: dict[str, _Spec] = {
    "rte": _Spec(
        info=ClassificationTaskInfo("rte", 2, ("entailment", "not_entailment"), "accuracy"),
        offline={
            "train": partial(_offline_rte, file="train.tsv"),
            "validation": partial(_offline_rte, file="dev.tsv"),
        },
        hub_path="nyu-mll/glue",
        hub_config="rte",
        hub_splits=TRAIN_VAL,
        from_hub=partial(_pair_row, labels=_RTE_LABELS),
    ),
    "mrpc": _Spec(
        info=ClassificationTaskInfo("mrpc", 2, ("not_equivalent", "equivalent"), "f1"),
        offline={"train": _offline_mrpc, "validation": _offline_mrpc, "test": _offline_mrpc},
        hub_path="nyu-mll/glue",
        hub_config="mrpc",
        hub_splits=TRAIN_VAL_TEST,
        from_hub=partial(_pair_row, labels=_BINARY_LABELS),
    ),
    "cola": _Spec(
        info=ClassificationTaskInfo("cola", 2, ("unacceptable", "acceptable"), "mcc"),
        offline={
            "train": partial(_offline_cola, parts=("in_domain_train",)),
            "validation": partial(_offline_cola, parts=("in_domain_dev", "out_of_domain_dev")),
        },
        hub_path="nyu-mll/glue",
        hub_config="cola",
        hub_splits=TRAIN_VAL,
        from_hub=_cola_row,
    ),
    "wic": _Spec(
        info=ClassificationTaskInfo("wic", 2, ("False", "True"), "accuracy"),
        offline={
            "train": partial(_offline_wic, folder="train"),
            "validation": partial(_offline_wic, folder="dev"),
            "test": partial(_offline_wic, folder="test"),
        },
        hub_path="super_glue",
        hub_config="wic",
        hub_splits=TRAIN_VAL,
        from_hub=_wic_row,
    ),
    "boolq": _Spec(
        info=ClassificationTaskInfo("boolq", 2, ("False", "True"), "accuracy"),
        offline={"train": _offline_boolq, "validation": _offline_boolq},
        hub_path="google/boolq",
        hub_config=None,
        hub_splits=TRAIN_VAL,
        from_hub=_boolq_row,
    ),
}


def list_classification_datasets() -> list[str]:
    """Canonical dataset names."""
    return list(_SPECS)


def _canonical(name: str) -> str:
    """Resolve aliases: case-insensitive, ``-``/``:`` = ``_``, optional ``glue_``/``superglue_`` prefix."""
    key = re.sub(r"[-:\s]+", "_", name.strip().lower())
    key = re.sub(r"^(glue|superglue|super_glue)_", "", key)
    if key in _SPECS:
        return key
    raise ConfigError(
        f"unknown classification dataset {name!r}; valid names: {', '.join(list_classification_datasets())}"
    )


def classification_task_info(name: str) -> ClassificationTaskInfo:
    """Label space and usual metric of a dataset (aliases accepted)."""
    return _SPECS[_canonical(name)].info


# ----------------------------------------------------------------------------- metrics


def task_metric(name: str, predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """The task's usual metric(s): ``accuracy`` always, plus ``f1`` (positive class 1) for MRPC and
    ``matthews_corr`` for CoLA. F1 and MCC are 0.0 where undefined (no positives, constant predictor).
    """
    info = classification_task_info(name)
    predictions, labels = list(predictions), list(labels)
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    if not labels:
        raise ValueError("cannot compute a metric over zero examples")
    for what, values in (("prediction", predictions), ("label", labels)):
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < info.num_labels]
        if bad:
            raise ValueError(f"{info.name}: {what} {bad[0]!r} is not a class index in 0..{info.num_labels - 1}")
    result = {"accuracy": sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)}
    if info.name in ("mrpc", "cola"):
        tp = sum(p == 1 and y == 1 for p, y in zip(predictions, labels, strict=True))
        fp = sum(p == 1 and y == 0 for p, y in zip(predictions, labels, strict=True))
        fn = sum(p == 0 and y == 1 for p, y in zip(predictions, labels, strict=True))
        tn = len(labels) - tp - fp - fn
        if info.name == "mrpc":
            result["f1"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        else:
            denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
            result["matthews_corr"] = (tp * tn - fp * fn) / denominator if denominator else 0.0
    return result


# ----------------------------------------------------------------------------- loading


def _load_hub(spec: _Spec, request: _Request) -> list[ClassificationExample]:
    """Rows of the hub split converted with the spec's row converter."""
    rows, where = hub_rows(spec.hub_path, spec.hub_config, spec.hub_splits[request.split])
    return _convert(rows, where, spec.from_hub, request)


def load_classification_dataset(
    name: str,
    split: str,
    data_dir: str | Path | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
) -> list[ClassificationExample]:
    """Load a sentence(-pair) classification dataset split.

    ``data_dir`` is a folder laid out like the project's staged data (``rte/``, ``mrpc/``, ...);
    ``None`` loads from the Hugging Face hub. ``seed`` only affects the offline MRPC and BoolQ
    train/validation splits. ``limit`` keeps the first ``limit`` examples.
    """
    canonical = _canonical(name)
    spec = _SPECS[canonical]
    offline_dir = check_load_args(canonical, split, data_dir, limit, spec.offline, spec.hub_splits)
    request = _Request(canonical, split, seed)
    examples = _load_hub(spec, request) if offline_dir is None else spec.offline[split](offline_dir, request)
    return examples if limit is None else examples[:limit]
