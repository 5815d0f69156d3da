"""Open-ended QA and summarisation datasets as prompt / reference-answer records.

Every dataset is turned into :class:`QAExample` records: a prompt that ends where the answer
starts (``"...\\nAnswer:"``), the answer trained on, and every answer a generation counts as
correct against. Data comes either from a local folder laid out like the project's staged copies
(``data_dir``) or from the Hugging Face hub (``data_dir=None``).

Prompt templates (:data:`PROMPT_TEMPLATES`), zero-shot and short so that small models and long
dialogues fit; answers follow after one space:

* TriviaQA: ``"Question: {question}\\nAnswer:"`` (the staged file's own prompt).
* TruthfulQA: ``"Q: {question}\\nA:"`` (the paper's QA format, without its six-shot primer).
* DialogSum: ``"Dialogue:\\n{dialogue}\\nSummarize the dialogue above in one or two
  sentences.\\nSummary:"`` (instruction after the dialogue, so cutting an over-long prompt from the
  left drops the dialogue's start, never the instruction).

Offline quirks handled here (see the ``SOURCE.md`` of each data folder):

* TriviaQA offline is a 3,000-question evaluation subset with no ids and no splits;
  ``train``/``validation``/``test`` are a seeded 2000/500/500 carve of it (:func:`carve_split`).
  On the hub, ``train`` and ``validation`` are the official rc.nocontext splits (test answers are
  hidden).
* TruthfulQA has one released set of 817 questions (offline and on the hub); it is carved
  417/100/300 the same way, keyed by the question so that the generation form here and the
  MC1/MC2 forms in :mod:`bayespeft.data.multiple_choice` put each question in the same split.
  The current files are read (``TruthfulQA.csv``, ``data/mc_task.json``, as on the hub), not the
  paper's ``data/v0`` copies (same questions, fewer reference answers).
* DialogSum ``validation`` is the dev file; each ``test`` dialogue has three reference summaries
  (``summary1..3``), the first is the one trained on / scored by likelihood.
"""

from __future__ import annotations

import csv
import hashlib
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

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
    jsonl_rows,
    open_data,
    text,
    warn_once,
)
from bayespeft.errors import ConfigError, DataError

__all__ = [
    "PROMPT_TEMPLATES",
    "TRIVIAQA_CARVE",
    "TRUTHFULQA_CARVE",
    "Carve",
    "QAExample",
    "carve_split",
    "is_generative_dataset",
    "list_generative_datasets",
    "load_generative_dataset",
    "truthfulqa_uid",
]

T = TypeVar("T")


class _Identified(Protocol):
    """A record with an id."""

    @property
    def uid(self) -> str: ...


U = TypeVar("U", bound=_Identified)

PROMPT_TEMPLATES: dict[str, str] = {
    "triviaqa": "Question: {question}\nAnswer:",
    "truthfulqa": "Q: {question}\nA:",
    "dialogsum": "Dialogue:\n{question}\nSummarize the dialogue above in one or two sentences.\nSummary:",
}
"""Per dataset, the prompt with ``{question}`` standing for the question or the dialogue."""


@dataclass(frozen=True)
class Carve:
    """Sizes of the validation and test parts carved out of a dataset's single released set."""

    validation: int
    test: int


TRIVIAQA_CARVE = Carve(validation=500, test=500)
TRUTHFULQA_CARVE = Carve(validation=100, test=300)
_CARVE_SEED = 1234
_TRIVIAQA_PREFIX, _TRIVIAQA_SUFFIX = "Question:", "\nAnswer:"
_DIALOGSUM_TEST_REFERENCES = ("summary1", "summary2", "summary3")
_warned: set[str] = set()


@dataclass(frozen=True)
class QAExample:
    """One open-ended item.

    ``prompt`` ends where the answer starts; ``answer`` is the target trained on (TriviaQA's gold
    answer, TruthfulQA's best answer, DialogSum's (first) summary); ``references`` are all answers
    a generation is scored against, ``answer`` first (aliases and correct answers without repeats;
    DialogSum's three test summaries as given); ``incorrect`` holds TruthfulQA's false answers
    (empty elsewhere). ``question`` is the bare input (question or dialogue) of the prompt.
    """

    uid: str
    dataset: str
    prompt: str
    question: str
    answer: str
    references: tuple[str, ...]
    incorrect: tuple[str, ...] = ()


class _Request(NamedTuple):
    """What one loader call needs besides the location of the data."""

    dataset: str
    split: str
    seed: int


# ----------------------------------------------------------------------------- splits


def carve_split(items: Sequence[T], keys: Sequence[str], split: str, carve: Carve, seed: int, where: str) -> list[T]:
    """The ``split`` part of a dataset released as one set, in the items' original order.

    Parts are drawn over the sorted distinct ``keys`` (items sharing a key stay together, and
    the file order does not matter): ``test`` is fixed (``random.Random(1234)``) so runs with
    different seeds are scored on the same items; ``validation`` is drawn from the rest with
    ``random.Random(1235 + seed)``; ``train`` is what remains.
    """
    distinct = sorted(set(keys))
    if len(distinct) <= carve.validation + carve.test:
        raise DataError(
            f"{where}: needs more than {carve.validation + carve.test} distinct items to carve "
            f"train/validation/test, has {len(distinct)}"
        )
    order = list(range(len(distinct)))
    random.Random(_CARVE_SEED).shuffle(order)
    test = {distinct[i] for i in order[: carve.test]}
    rest = [key for key in distinct if key not in test]
    random.Random(_CARVE_SEED + 1 + seed).shuffle(rest)
    validation = set(rest[: carve.validation])
    held_out = {"test": test, "validation": validation}
    if split in held_out:
        return [item for item, key in zip(items, keys, strict=True) if key in held_out[split]]
    return [item for item, key in zip(items, keys, strict=True) if key not in test and key not in validation]


def _warn_carved(request: _Request, total: int, carve: Carve, source: str) -> None:
    """Warn once per dataset that its splits are carved, not official."""
    sizes = f"{total - carve.validation - carve.test}/{carve.validation}/{carve.test}"
    warn_once(
        _warned,
        request.dataset,
        f"{request.dataset} {source} is one released set of {total}: train/validation/test are a seeded "
        f"{sizes} carve of it (test fixed, validation drawn with train.seed); not official splits",
        stacklevel=4,
    )


def _normalised(question: str) -> str:
    return " ".join(question.split())


def truthfulqa_uid(question: str) -> str:
    """``truthfulqa:<12 hex>`` from the whitespace-normalised question: the same id (and so the same
    carved split) for a question in the generation CSV, ``mc_task.json`` and on the hub."""
    return "truthfulqa:" + hashlib.sha256(_normalised(question).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- field access


def _answers(values: Any, key: str) -> list[str]:
    """A list of answer strings; blank ones are dropped, at least one must remain."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise BadRow(f"field {key!r} should be a list of answers, got {type(values).__name__}")
    if not all(isinstance(v, str) for v in values):
        raise BadRow(f"field {key!r} must hold strings, got {list(values)!r}")
    answers = [v.strip() for v in values if v.strip()]
    if not answers:
        raise BadRow(f"field {key!r} has no answer")
    return answers


def _semicolon_list(row: Mapping[str, Any], key: str) -> list[str]:
    """TruthfulQA's CSV answer lists: ``"a; b; c"``."""
    return _answers(text(row, key).split(";"), key)


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    """Values without repeats, first occurrence kept."""
    return tuple(dict.fromkeys(values))


def _example(
    dataset: str,
    uid: str,
    question: str,
    answer: str,
    references: Iterable[str],
    incorrect: Iterable[str] = (),
) -> QAExample:
    """A record with the dataset's prompt template applied; ``answer`` leads the references."""
    prompt = PROMPT_TEMPLATES[dataset].format(question=question)
    return QAExample(uid, dataset, prompt, question, answer, _unique([answer, *references]), _unique(incorrect))


# ----------------------------------------------------------------------------- per-dataset rows
# Each converter takes (row, dataset, fallback uid) and raises BadRow on bad content.


def _triviaqa_file_row(row: Mapping[str, Any], dataset: str, uid: str) -> QAExample:
    """Staged subset: ``{context: "Question: ...\\nAnswer:", answer, aliases: [...]}``."""
    context = text(row, "context")
    if not (context.startswith(_TRIVIAQA_PREFIX) and context.endswith(_TRIVIAQA_SUFFIX)):
        raise BadRow(f"field 'context' is not of the form 'Question: ...\\nAnswer:', got {context[:60]!r}")
    question = context.removeprefix(_TRIVIAQA_PREFIX).removesuffix(_TRIVIAQA_SUFFIX).strip()
    if not question:
        raise BadRow("field 'context' has an empty question")
    return _example(dataset, uid, question, text(row, "answer"), _answers(get(row, "aliases", list), "aliases"))


def _triviaqa_hub_row(row: Mapping[str, Any], dataset: str, uid: str) -> QAExample:
    """Hub ``mandarjoshi/trivia_qa`` (rc.nocontext): ``{question_id, question, answer: {value, aliases}}``."""
    answer = get(row, "answer", Mapping)
    aliases = _answers(get(answer, "aliases", (list, tuple)), "answer.aliases")
    return _example(dataset, text(row, "question_id"), text(row, "question"), text(answer, "value"), aliases)


def _truthfulqa_file_row(row: Mapping[str, Any], dataset: str, uid: str) -> QAExample:
    """Generation CSV: ``Question``, ``Best Answer``, ``Correct Answers`` / ``Incorrect Answers`` ("; " lists)."""
    question = text(row, "Question")
    correct, incorrect = _semicolon_list(row, "Correct Answers"), _semicolon_list(row, "Incorrect Answers")
    return _example(dataset, truthfulqa_uid(question), question, text(row, "Best Answer"), correct, incorrect)


def _truthfulqa_hub_row(row: Mapping[str, Any], dataset: str, uid: str) -> QAExample:
    """Hub ``truthfulqa/truthful_qa`` (generation): ``{question, best_answer, correct_answers, incorrect_answers}``."""
    question = text(row, "question")
    correct = _answers(get(row, "correct_answers", (list, tuple)), "correct_answers")
    incorrect = _answers(get(row, "incorrect_answers", (list, tuple)), "incorrect_answers")
    return _example(dataset, truthfulqa_uid(question), question, text(row, "best_answer"), correct, incorrect)


def _dialogsum_row(row: Mapping[str, Any], dataset: str, uid: str, id_key: str) -> QAExample:
    """Train/dev file and hub: ``{<id_key>, dialogue, summary}``."""
    summary = text(row, "summary")
    return _example(dataset, text(row, id_key), text(row, "dialogue"), summary, [summary])


def _dialogsum_test_row(row: Mapping[str, Any], dataset: str, uid: str) -> QAExample:
    """Test file: ``{fname, dialogue, summary1, summary2, summary3}``; the three are the references, as
    given (10 test dialogues repeat one: kept, so that every dialogue weighs three references)."""
    dialogue, summaries = text(row, "dialogue"), tuple(text(row, key) for key in _DIALOGSUM_TEST_REFERENCES)
    prompt = PROMPT_TEMPLATES[dataset].format(question=dialogue)
    return QAExample(text(row, "fname"), dataset, prompt, dialogue, summaries[0], summaries)


# ----------------------------------------------------------------------------- file readers


def _csv_rows(path: Path, request: _Request) -> Rows:
    """A CSV file with a header (UTF-8, optional BOM), rows keyed by the header; records may
    span lines (quoted newlines), the first line is reported."""
    with open_data(path, request, encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header: list[str] | None = None
        end = 0
        while True:
            start = end + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise DataError(f"{path}:{start}: {err}") from None
            end = reader.line_num
            if header is None:
                header = [cell.strip() for cell in cells]
                continue
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                raise DataError(f"{path}:{start}: expected {len(header)} columns, got {len(cells)}")
            yield start, dict(zip(header, cells, strict=True))


# ----------------------------------------------------------------------------- loaders


def _convert(
    rows: Iterable[tuple[int, Mapping[str, Any]]], where: Locator, convert: RowConverter[QAExample], request: _Request
) -> list[QAExample]:
    """Convert rows; each converter call gets the fallback uid ``<dataset>:<index>`` (index in the file)."""
    return convert_rows(rows, where, convert, request.dataset, lambda index, row: f"{request.dataset}:{index}")


def _offline_triviaqa(data_dir: Path, request: _Request) -> list[QAExample]:
    """The seeded carve of the staged 3,000-question subset (ids ``triviaqa:<line index>``)."""
    path = data_dir / "triviaqa" / "triviaqa_sm_sub.jsonl"
    examples = _convert(jsonl_rows(path, request), at(path), _triviaqa_file_row, request)
    _warn_carved(request, len(examples), TRIVIAQA_CARVE, "offline")
    keys = [ex.uid for ex in examples]
    return carve_split(examples, keys, request.split, TRIVIAQA_CARVE, request.seed, str(path))


def _offline_truthfulqa(data_dir: Path, request: _Request) -> list[QAExample]:
    """The seeded carve of the generation CSV (current version, 817 questions)."""
    path = data_dir / "truthfulqa" / "TruthfulQA.csv"
    examples = _convert(_csv_rows(path, request), at(path), _truthfulqa_file_row, request)
    return truthfulqa_part(examples, request.split, request.seed, str(path), request.dataset)


def _offline_jsonl(data_dir: Path, request: _Request, file: str, convert: RowConverter[QAExample]) -> list[QAExample]:
    path = data_dir / file
    return _convert(jsonl_rows(path, request), at(path), convert, request)


def truthfulqa_part(examples: list[U], split: str, seed: int, where: str, dataset: str) -> list[U]:
    """The ``split`` part of a TruthfulQA form (generation, MC1, MC2), keyed by the examples'
    :func:`truthfulqa_uid`, so every form splits its questions alike; warns once per ``dataset``."""
    uids = [example.uid for example in examples]
    _warn_carved(_Request(dataset, split, seed), len(examples), TRUTHFULQA_CARVE, "data")
    return carve_split(examples, uids, split, TRUTHFULQA_CARVE, seed, where)


def _merge_references(examples: list[QAExample]) -> list[QAExample]:
    """Consecutive records of one dialogue become one record with all their references: the hub's
    DialogSum test has one row per reference, ids ``test_<i>_<k>``, merged under ``test_<i>``."""
    merged: list[QAExample] = []
    for example in examples:
        if merged and merged[-1].question == example.question:
            last = merged[-1]
            merged[-1] = replace(last, references=(*last.references, *example.references))
        else:
            reference_id = re.fullmatch(r"(.+_\d+)_\d+", example.uid)
            merged.append(replace(example, uid=reference_id[1]) if reference_id else example)
    return merged


@dataclass(frozen=True)
class _Spec(DatasetSpec[QAExample]):
    """How to load one dataset offline and from the hub; ``hub_part`` post-processes a hub split."""

    hub_part: Callable[[list[QAExample], _Request], list[QAExample]] | None = None


def _truthfulqa_hub_part(examples: list[QAExample], request: _Request) -> list[QAExample]:
    return truthfulqa_part(examples, request.split, request.seed, "truthfulqa/truthful_qa", request.dataset)


def _dialogsum_hub_part(examples: list[QAExample], request: _Request) -> list[QAExample]:
    return _merge_references(examples) if request.split == "test" else examples


_SPECS: dict[str, _Spec] = {
    "triviaqa": _Spec(
        offline=dict.fromkeys(SPLITS, _offline_triviaqa),
        hub_path="mandarjoshi/trivia_qa",
        hub_config="rc.nocontext",
        hub_splits=TRAIN_VAL,
        from_hub=_triviaqa_hub_row,
    ),
    "truthfulqa": _Spec(
        offline=dict.fromkeys(SPLITS, _offline_truthfulqa),
        hub_path="truthfulqa/truthful_qa",
        hub_config="generation",
        hub_splits=dict.fromkeys(SPLITS, "validation"),  # one set on the hub too, carved like offline
        from_hub=_truthfulqa_hub_row,
        hub_part=_truthfulqa_hub_part,
    ),
    "dialogsum": _Spec(
        offline={
            "train": partial(
                _offline_jsonl, file="dialogsum/dialogsum.train.jsonl", convert=partial(_dialogsum_row, id_key="fname")
            ),
            "validation": partial(
                _offline_jsonl, file="dialogsum/dialogsum.dev.jsonl", convert=partial(_dialogsum_row, id_key="fname")
            ),
            "test": partial(_offline_jsonl, file="dialogsum/dialogsum.test.jsonl", convert=_dialogsum_test_row),
        },
        hub_path="knkarthick/dialogsum",
        hub_config=None,
        hub_splits=TRAIN_VAL_TEST,
        from_hub=partial(_dialogsum_row, id_key="id"),
        hub_part=_dialogsum_hub_part,
    ),
}

_ALIASES = {"trivia_qa": "triviaqa", "truthful_qa": "truthfulqa", "dialog_sum": "dialogsum"}


def list_generative_datasets() -> list[str]:
    """Canonical names of the open-ended datasets."""
    return list(_SPECS)


def _canonical(name: str) -> str:
    """Resolve aliases (case-insensitive, ``-`` = ``_``)."""
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key in _SPECS:
        return key
    raise ConfigError(f"unknown generative dataset {name!r}; valid names: {', '.join(_SPECS)}")


def is_generative_dataset(name: str) -> bool:
    """Whether ``name`` (or an alias of it) is an open-ended QA / summarisation dataset."""
    try:
        _canonical(name)
    except ConfigError:
        return False
    return True


def load_generative_dataset(
    name: str,
    split: str,
    data_dir: str | Path | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
) -> list[QAExample]:
    """Load an open-ended dataset split as prompt / references records.

    ``data_dir`` is a folder laid out like the project's staged data (``triviaqa/``,
    ``truthfulqa/``, ``dialogsum/``); ``None`` loads from the Hugging Face hub. ``seed`` picks the
    validation part of carved splits (TriviaQA offline, TruthfulQA). ``limit`` keeps the first
    ``limit`` examples.
    """
    canonical = _canonical(name)
    spec = _SPECS[canonical]
    offline_dir = check_load_args(canonical, split, data_dir, limit, spec.offline, spec.hub_splits)
    request = _Request(canonical, split, seed)
    if offline_dir is not None:
        examples = spec.offline[split](offline_dir, request)
    else:
        rows, where = hub_rows(spec.hub_path, spec.hub_config, spec.hub_splits[split])
        examples = _convert(rows, where, spec.from_hub, request)
        if spec.hub_part is not None:
            examples = spec.hub_part(examples, request)
    return examples if limit is None else examples[:limit]
