"""Multiple-choice benchmarks as zero-shot lettered prompts.

Every dataset is turned into :class:`MCExample` records whose prompt lists the choices as
``A) ...``, ``B) ...`` and ends with ``"Answer:"``, so a model is scored on the next-token
logits of the letters. Data comes either from a local folder laid out like the project's
staged copies (``data_dir``) or from the Hugging Face hub (``data_dir=None``).

Offline quirks handled here (see the ``SOURCE.md`` of each data folder):

* BoolQ has only the official dev set offline; ``train``/``validation`` are a seeded
  2270/1000 split of it (permutation from ``random.Random(1234 + seed)``).
* PIQA and HellaSwag offline are 40-item samples of their validation splits.
* WinoGrande has no test split offline; its validation split is the reconstructed dev set.
* TruthfulQA MC1 / MC2 (``data/mc_task.json`` offline, ``multiple_choice`` on the hub) are one
  set of 817 questions; ``train``/``validation``/``test`` are the seeded 417/100/300 carve that the
  generation form uses too (:func:`bayespeft.data.generative.truthfulqa_part`). The answers, listed
  true-first in the data, are shuffled per question (seeded by the question). MC1 has one true
  answer; MC2 several (``true_labels``), its ``label`` being the first true answer listed.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from bayespeft.data.generative import truthfulqa_part, truthfulqa_uid
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
    seeded_part,
    text,
    warn_once,
    with_aligned_labels,
)
from bayespeft.errors import ConfigError, DataError

__all__ = ["MMLU_GROUPS", "MMLU_SUBJECTS", "SPLITS", "MCExample", "list_mc_datasets", "load_mc_dataset", "split_boolq"]

MMLU_SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics", "econometrics",
    "electrical_engineering", "elementary_mathematics", "formal_logic", "global_facts",
    "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics",
    "high_school_physics", "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law", "jurisprudence",
    "logical_fallacies", "machine_learning", "management", "marketing", "medical_genetics",
    "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy", "prehistory",
    "professional_accounting", "professional_law", "professional_medicine", "professional_psychology",
    "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)  # fmt: skip

MMLU_GROUPS: dict[str, tuple[str, ...]] = {
    "cs": (
        "college_computer_science",
        "high_school_computer_science",
        "computer_security",
        "machine_learning",
    ),
    "eng": ("electrical_engineering",),
    "law": ("international_law", "jurisprudence", "professional_law"),
    "health": (
        "anatomy",
        "clinical_knowledge",
        "college_medicine",
        "human_aging",
        "nutrition",
        "professional_medicine",
        "virology",
    ),
    "chem": ("college_chemistry",),
    "bio": ("college_biology",),
    "phy": ("college_physics",),
}

BOOLQ_VALIDATION_SIZE = 1000
"""Size of the offline BoolQ validation part; the rest of the official dev set is ``train``."""

_BOOLQ_SEED_OFFSET = 1234
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # TruthfulQA MC2 has up to 24 choices
_QA_INTRO = "Return the label of the correct answer for the question below."
_BOOLQ_INTRO = "Read the passage below and return the label of the correct answer to the question."
_HELLASWAG_INTRO = "Choose the most plausible continuation."
_BOOLQ_PASSAGE_CHARS = 1024
_HELLASWAG_LINES_PER_ITEM = 6
_warned: set[str] = set()

T = TypeVar("T")


@dataclass(frozen=True)
class MCExample:
    """One zero-shot multiple-choice item.

    ``answer_labels`` are the letters offered in the prompt (one per choice); the model's
    next-token logits for them give the class scores, and ``label`` indexes the gold one.
    ``stem`` (the prompt without the lettered choices) and ``choices`` serve cloze scoring.
    ``true_labels`` indexes every true choice where several are (TruthfulQA MC2; empty elsewhere).
    ``cloze_contexts`` and ``cloze_continuation`` replace stem + choice for cloze scoring where the choice
    sits inside the text (WinoGrande): each context (the text up to the blank, filled with one choice) is
    followed by the same continuation (the rest of the sentence), whose log-probability is compared.
    """

    uid: str
    prompt: str
    answer_labels: tuple[str, ...]
    label: int
    dataset: str
    stem: str = ""
    choices: tuple[str, ...] = ()
    true_labels: tuple[int, ...] = ()
    cloze_contexts: tuple[str, ...] = ()
    cloze_continuation: str = ""


class _Request(NamedTuple):
    """What one loader call needs besides the location of the data."""

    dataset: str  # canonical name stored on the examples
    split: str
    uid_prefix: str  # "<prefix>:<split>:<index>" is the id of records without their own
    seed: int


# ----------------------------------------------------------------------------- prompts


def _prompt_example(dataset: str, uid: str, intro: str, body: str, choices: Sequence[str], label: int) -> MCExample:
    """Build the lettered prompt ``intro / body / Choices: A) .. / Answer:``."""
    if not 2 <= len(choices) <= len(_LETTERS):
        raise BadRow(f"expected 2 to {len(_LETTERS)} choices, got {len(choices)}")
    if not 0 <= label < len(choices):
        raise BadRow(f"answer index {label} out of range for {len(choices)} choices")
    letters = tuple(_LETTERS[: len(choices)])
    lines = "".join(f"{letter}) {choice}\n" for letter, choice in zip(letters, choices, strict=True))
    prompt = f"{intro}\n\n{body}\nChoices:\n{lines}Answer:"
    stem = f"{body}\nAnswer:"  # cloze: no instruction about labels
    return MCExample(uid, prompt, letters, label, dataset, stem=stem, choices=tuple(choices))


def _qa_example(
    dataset: str, uid: str, question: str, choices: Sequence[str], keys: Sequence[str], answer_key: str
) -> MCExample:
    """A question with choices tagged by ``keys`` (e.g. "A".."E" or "1".."4") and a gold key."""
    if answer_key not in keys:
        raise BadRow(f"answer key {answer_key!r} is not among the choice labels {list(keys)}")
    return _prompt_example(dataset, uid, _QA_INTRO, f"Question: {question}", choices, keys.index(answer_key))


# ----------------------------------------------------------------------------- field access


def _texts(values: Any, what: str) -> list[str]:
    """A list of non-empty stripped strings (choice texts or choice labels)."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise BadRow(f"{what} should be a list, got {type(values).__name__}")
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise BadRow(f"{what} must be non-empty strings, got {list(values)!r}")
    return [v.strip() for v in values]


def _index_label(value: Any, n: int, key: str) -> int:
    """An integer answer index given as int or digit string, checked against ``n`` choices."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise BadRow(f"field {key!r} should be an answer index in 0..{n - 1}, got {value!r}")
    return value


# ----------------------------------------------------------------------------- per-dataset rows
# Each converter takes (row, dataset, fallback uid) and raises BadRow on bad content.


def _arc_file_row(row: Mapping[str, Any], dataset: str, uid: str) -> MCExample:
    """ARC release JSONL: ``{id, question: {stem, choices: [{text, label}]}, answerKey}``."""
    question = get(row, "question", Mapping)
    choices = get(question, "choices", list)
    if not all(isinstance(c, Mapping) for c in choices):
        raise BadRow("question.choices must be a list of {text, label} objects")
    texts = _texts([c.get("text") for c in choices], "choice texts")
    keys = _texts([c.get("label") for c in choices], "choice labels")
    return _qa_example(dataset, text(row, "id"), text(question, "stem"), texts, keys, text(row, "answerKey"))


def _lettered_hub_row(row: Mapping[str, Any], dataset: str, uid: str, question_key: str) -> MCExample:
    """Hub ARC / OpenBookQA: ``{id, <question_key>, choices: {text, label}, answerKey}``."""
    choices = get(row, "choices", Mapping)
    texts = _texts(choices.get("text"), "choices.text")
    keys = _texts(choices.get("label"), "choices.label")
    if len(texts) != len(keys):
        raise BadRow(f"{len(texts)} choice texts but {len(keys)} choice labels")
    return _qa_example(dataset, text(row, "id"), text(row, question_key), texts, keys, text(row, "answerKey"))


_OBQA_CHOICES = re.compile(r"\(A\) (.*?) \(B\) (.*?) \(C\) (.*?) \(D\) (.*)", re.DOTALL)


def _obqa_file_row(row: Mapping[str, Any], dataset: str, uid: str) -> MCExample:
    """OpenBookQA release TSV row (keyed by header); ``Choices`` is ``"(A) .. (B) .. (C) .. (D) .."``.

    Markers are matched in order and the first occurrence wins, so a stray repeated marker
    inside an option stays part of that option instead of creating a fifth choice.
    """
    match = _OBQA_CHOICES.fullmatch(text(row, "Choices"))
    if match is None:
        raise BadRow("field 'Choices' is not of the form '(A) .. (B) .. (C) .. (D) ..'")
    texts = _texts(match.groups(), "choices")
    return _qa_example(dataset, text(row, "ID"), text(row, "Question Stem"), texts, "ABCD", text(row, "Answer Key"))


def _winogrande_row(row: Mapping[str, Any], dataset: str, uid: str) -> MCExample:
    """WinoGrande (release JSONL and hub): ``{qID?, sentence, option1, option2, answer "1"/"2"}``.

    Cloze scoring is the standard partial scoring (as lm-evaluation-harness): the blank ``_`` filled
    with each option is the context, and the rest of the sentence is the scored continuation.
    """
    options = [text(row, "option1"), text(row, "option2")]
    sentence = text(row, "sentence")
    if sentence.count("_") != 1:
        raise BadRow(f"field 'sentence' must hold exactly one blank '_' (got {sentence.count('_')})")
    row_id = row.get("qID")
    example = _qa_example(
        dataset,
        row_id.strip() if isinstance(row_id, str) and row_id.strip() else uid,
        sentence,
        options,
        ("1", "2"),
        text(row, "answer"),
    )
    before, after = sentence.split("_")
    return replace(
        example,
        cloze_contexts=tuple(before + option for option in options),
        cloze_continuation=" " + after.strip(),
    )


def _boolq_example(row: Mapping[str, Any], dataset: str, uid: str, answer: bool) -> MCExample:
    """BoolQ as a two-choice question; the passage is cut to 1024 characters."""
    passage = text(row, "passage")[:_BOOLQ_PASSAGE_CHARS].rstrip()
    question = text(row, "question")
    if not question.endswith("?"):
        question += "?"
    body = f"Passage: {passage}\nQuestion: {question}"
    return _prompt_example(dataset, uid, _BOOLQ_INTRO, body, ("true", "false"), 0 if answer else 1)


def _boolq_file_row(row: Mapping[str, Any], dataset: str, uid: str) -> MCExample:
    """SuperGLUE BoolQ JSONL: ``{question, passage, idx, label}``, label ``"true"``/``"false"`` or bool.

    The id is the official dev index, so it stays the same whichever offline split holds it.
    """
    label = get(row, "label", (bool, str))
    if isinstance(label, str):
        if label not in ("true", "false"):
            raise BadRow(f"field 'label' should be 'true' or 'false', got {label!r}")
        label = label == "true"
    idx = get(row, "idx", int)
    return _boolq_example(row, dataset, f"boolq:validation:{idx}", label)


def _boolq_hub_row(row: Mapping[str, Any], dataset: str, uid: str) -> MCExample:
    """Hub ``google/boolq``: ``{question, passage, answer: bool}``."""
    return _boolq_example(row, dataset, uid, get(row, "answer", bool))


def _piqa_row(row: Mapping[str, Any], dataset: str, uid: str) -> MCExample:
    """PIQA (hub, or release JSONL with its ``.lst`` label merged in): ``{goal, sol1, sol2, label}``."""
    label = _index_label(get(row, "label", (int, str)), 2, "label")
    body = f"Question: {text(row, 'goal')}"
    return _prompt_example(dataset, uid, _QA_INTRO, body, [text(row, "sol1"), text(row, "sol2")], label)


def _hellaswag_row(row: Mapping[str, Any], dataset: str, uid: str) -> MCExample:
    """HellaSwag: ``{activity_label?, ctx, endings, label}``; the context reads ``"<activity>: <ctx>"``."""
    context = text(row, "ctx")
    activity = row.get("activity_label")
    if isinstance(activity, str) and activity.strip():
        context = f"{activity.strip()}: {context}"
    endings = _texts(get(row, "endings", (list, tuple)), "endings")
    label = _index_label(get(row, "label", (int, str)), len(endings), "label")
    return _prompt_example(dataset, uid, _HELLASWAG_INTRO, f"Context: {context}", endings, label)


def _mmlu_file_row(row: Mapping[str, Any], dataset: str, uid: str) -> MCExample:
    """MMLU CSV columns (named by the reader): question, A, B, C, D, answer letter."""
    texts = [text(row, letter) for letter in "ABCD"]
    return _qa_example(dataset, uid, text(row, "question"), texts, "ABCD", text(row, "answer"))


def _mmlu_hub_row(row: Mapping[str, Any], dataset: str, uid: str) -> MCExample:
    """Hub ``cais/mmlu``: ``{question, choices: [4 texts], answer: int}``."""
    texts = _texts(get(row, "choices", (list, tuple)), "choices")
    label = _index_label(get(row, "answer", int), len(texts), "answer")
    return _qa_example(dataset, uid, text(row, "question"), texts, _LETTERS[: len(texts)], _LETTERS[label])


def _truthfulqa_targets(row: Mapping[str, Any], key: str) -> tuple[list[str], list[bool]]:
    """Answer texts and truth of ``mc1_targets`` / ``mc2_targets``: ``{text: 0/1}`` in mc_task.json,
    ``{choices: [...], labels: [...]}`` on the hub."""
    targets = get(row, key, Mapping)
    if set(targets) == {"choices", "labels"}:
        texts, truth = targets["choices"], targets["labels"]
    else:
        texts, truth = list(targets), list(targets.values())
    texts = _texts(texts, f"{key} answers")
    if not isinstance(truth, Sequence) or len(truth) != len(texts) or any(v not in (0, 1) for v in truth):
        raise BadRow(f"field {key!r} should mark each answer 1 (true) or 0 (false), got {truth!r}")
    return texts, [bool(v) for v in truth]


def _truthfulqa_row(row: Mapping[str, Any], dataset: str, uid: str, targets: str) -> MCExample:
    """TruthfulQA ``{question, mc1_targets, mc2_targets}``: lettered choices of ``targets``, shuffled
    by a generator seeded with the question (same order offline and on the hub)."""
    question = text(row, "question")
    texts, truth = _truthfulqa_targets(row, targets)
    true = [i for i, is_true in enumerate(truth) if is_true]
    if targets == "mc1_targets" and len(true) != 1:
        raise BadRow(f"field 'mc1_targets' should mark exactly one answer true, marks {len(true)}")
    if not true or len(true) == len(texts):
        raise BadRow(f"field {targets!r} needs both true and false answers")
    uid = truthfulqa_uid(question)
    order = list(range(len(texts)))
    random.Random(uid).shuffle(order)
    position = {original: shown for shown, original in enumerate(order)}
    example = _prompt_example(
        dataset, uid, _QA_INTRO, f"Question: {question}", [texts[i] for i in order], position[true[0]]
    )
    if targets == "mc1_targets":
        return example
    return replace(example, true_labels=tuple(sorted(position[i] for i in true)))


# ----------------------------------------------------------------------------- file readers
# Readers yield (line number, row mapping) and raise DataError for unparsable lines.

_PIQA_LABELS = {"0": 0, "1": 1}


def _delimited_rows(path: Path, request: _Request, columns: Sequence[str], *, tsv: bool) -> Rows:
    """CSV (quoted, no header) or TSV (unquoted, header must equal ``columns``) rows keyed by column."""
    with open_data(path, request) as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.reader(handle)
        end = 0
        while True:
            start = end + 1  # records may span lines (quoted newlines); report the first one
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise DataError(f"{path}:{start}: {err}") from None
            end = reader.line_num
            if tsv and start == 1:
                if cells != list(columns):
                    raise DataError(f"{path}:1: expected the header {list(columns)}, got {cells}")
                continue
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(columns):
                raise DataError(f"{path}:{start}: expected {len(columns)} columns, got {len(cells)}")
            yield start, dict(zip(columns, cells, strict=True))


def _json_list_rows(path: Path, request: _Request) -> Rows:
    """A JSON file holding one list of objects; each object is reported at the line it starts on."""
    with open_data(path, request) as handle:
        content = handle.read()
    decoder = json.JSONDecoder()
    line, counted = 1, 0

    def line_at(position: int) -> int:
        nonlocal line, counted
        line += content.count("\n", counted, position)
        counted = position
        return line

    def skip_space(position: int) -> int:
        while position < len(content) and content[position].isspace():
            position += 1
        return position

    position = skip_space(0)
    if content[position : position + 1] != "[":
        raise DataError(f"{path}:{line_at(position)}: expected a JSON list of objects")
    position = skip_space(position + 1)
    while content[position : position + 1] != "]":
        start = line_at(position)
        try:
            row, position = decoder.raw_decode(content, position)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{start}: expected a JSON object, got {type(row).__name__}")
        yield start, row
        position = skip_space(position)
        if content[position : position + 1] == ",":
            position = skip_space(position + 1)
        elif content[position : position + 1] != "]":
            raise DataError(f"{path}:{line_at(position)}: expected ',' or ']' after the object")


def _hellaswag_rows(path: Path, request: _Request) -> Rows:
    """Plain-text HellaSwag: 6 lines per item (context, gold index, 4 endings)."""
    with open_data(path, request) as handle:
        lines = handle.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    size = _HELLASWAG_LINES_PER_ITEM
    if len(lines) % size:
        first = len(lines) - len(lines) % size + 1
        raise DataError(f"{path}:{first}: incomplete item ({len(lines) % size} of {size} lines)")
    for start in range(0, len(lines), size):
        context, gold, *endings = lines[start : start + size]
        if not gold.strip().isdigit():
            raise DataError(f"{path}:{start + 2}: expected the gold ending index, got {gold!r}")
        yield start + 1, {"ctx": context, "label": int(gold), "endings": endings}


def _convert(
    rows: Iterable[tuple[int, Mapping[str, Any]]],
    where: Locator,
    convert: RowConverter[MCExample],
    request: _Request,
) -> list[MCExample]:
    """Convert rows; each converter call gets the fallback uid ``<prefix>:<split>:<index>``."""
    fallback = f"{request.uid_prefix}:{request.split}"
    return convert_rows(rows, where, convert, request.dataset, lambda index, row: f"{fallback}:{index}")


# ----------------------------------------------------------------------------- offline loaders
# Signature: (data_dir, request) -> examples.

OfflineLoader = Callable[[Path, _Request], list[MCExample]]


def _offline_jsonl(data_dir: Path, request: _Request, file: str, convert: RowConverter[MCExample]) -> list[MCExample]:
    path = data_dir / file
    return _convert(jsonl_rows(path, request), at(path), convert, request)


_OBQA_COLUMNS = ("ID", "Question Stem", "Choices", "Complete Question", "Answer Key")
_MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")


def _offline_obqa(data_dir: Path, request: _Request, file: str) -> list[MCExample]:
    path = data_dir / file
    return _convert(_delimited_rows(path, request, _OBQA_COLUMNS, tsv=True), at(path), _obqa_file_row, request)


def _offline_mmlu(data_dir: Path, request: _Request, subject: str, folder: str) -> list[MCExample]:
    path = data_dir / "mmlu" / folder / f"{subject}_{folder}.csv"
    rows = _delimited_rows(path, request, _MMLU_COLUMNS, tsv=False)
    return _convert(rows, at(path), _mmlu_file_row, request)


def _offline_sample(data_dir: Path, request: _Request, kind: str) -> list[MCExample]:
    """The 40-item PIQA / HellaSwag validation samples (warns that they are samples)."""
    if kind == "piqa":
        path = data_dir / "piqa" / "sample.jsonl"
        labels = data_dir / "piqa" / "sample-labels.lst"
        rows = with_aligned_labels(jsonl_rows(path, request), labels, request, _PIQA_LABELS)
        examples = _convert(rows, at(path), _piqa_row, request)
    else:
        path = data_dir / "hellaswag" / "sample.txt"
        examples = _convert(_hellaswag_rows(path, request), at(path), _hellaswag_row, request)
    warn_once(
        _warned,
        kind,
        f"offline {kind} validation is a {len(examples)}-item sample of the official validation split; "
        "load from the hub (data_dir=None) for the full split",
        stacklevel=3,
    )
    return examples


def _offline_truthfulqa_mc(data_dir: Path, request: _Request, targets: str) -> list[MCExample]:
    """Every question of ``truthfulqa/data/mc_task.json`` (the spec's ``carve`` picks the split)."""
    path = data_dir / "truthfulqa" / "data" / "mc_task.json"
    convert = partial(_truthfulqa_row, targets=targets)
    return _convert(_json_list_rows(path, request), at(path), convert, request)


def _carve_truthfulqa(examples: list[MCExample], request: _Request) -> list[MCExample]:
    """The split's part of TruthfulQA, shared with the generation form (keyed by question)."""
    return truthfulqa_part(examples, request.split, request.seed, f"{request.dataset} data", request.dataset)


def split_boolq(examples: list[T], path: Path, split: str, seed: int, warned: set[str]) -> list[T]:
    """The ``split`` part of the seeded BoolQ split of ``examples`` (the official dev set, read from
    ``path``): ``validation`` gets 1000 items, ``train`` the rest.

    The permutation comes from ``random.Random(1234 + seed)``; each part keeps file order. Shared
    with :mod:`bayespeft.data.classification`, so both forms of BoolQ hold the same items; warns once per ``warned``.
    """
    if len(examples) <= BOOLQ_VALIDATION_SIZE:
        raise DataError(f"{path}: needs more than {BOOLQ_VALIDATION_SIZE} records to split, has {len(examples)}")
    warn_once(
        warned,
        "boolq",
        "offline BoolQ train/validation are a seeded split of the official dev set "
        f"({len(examples) - BOOLQ_VALIDATION_SIZE}/{BOOLQ_VALIDATION_SIZE}); "
        "there is no official train data offline",
        stacklevel=4,
    )
    return seeded_part(examples, BOOLQ_VALIDATION_SIZE, _BOOLQ_SEED_OFFSET + seed, split == "validation")


def _offline_boolq(data_dir: Path, request: _Request) -> list[MCExample]:
    """Seeded split of the official BoolQ dev set (see :func:`split_boolq`)."""
    path = data_dir / "boolq" / "val.jsonl"
    examples = _convert(jsonl_rows(path, request), at(path), _boolq_file_row, request)
    return split_boolq(examples, path, request.split, request.seed, _warned)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Spec(DatasetSpec[MCExample]):
    """How to load one dataset (one MMLU subject) offline and from the hub.

    ``carve`` picks the requested split out of a dataset released as one set (offline and hub).
    """

    uid_prefix: str
    carve: Callable[[list[MCExample], _Request], list[MCExample]] | None = None


def _arc_spec(name: str, stem: str) -> _Spec:
    files = {"train": "Train", "validation": "Dev", "test": "Test"}
    return _Spec(
        uid_prefix=name,
        offline={
            split: partial(_offline_jsonl, file=f"{name}/{stem}-{part}.jsonl", convert=_arc_file_row)
            for split, part in files.items()
        },
        hub_path="allenai/ai2_arc",
        hub_config=stem,
        hub_splits=TRAIN_VAL_TEST,
        from_hub=partial(_lettered_hub_row, question_key="question"),
    )


def _winogrande_spec(size: str) -> _Spec:
    def load(file: str) -> OfflineLoader:
        return partial(_offline_jsonl, file=f"winogrande/{file}", convert=_winogrande_row)

    return _Spec(
        uid_prefix=f"winogrande_{size}",
        offline={"train": load(f"train_{size}.jsonl"), "validation": load("dev.reconstructed.jsonl")},
        hub_path="allenai/winogrande",
        hub_config=f"winogrande_{size}",
        hub_splits=TRAIN_VAL,
        from_hub=_winogrande_row,
    )


def _truthfulqa_spec(targets: str) -> _Spec:
    return _Spec(
        uid_prefix="truthfulqa",
        offline=dict.fromkeys(SPLITS, partial(_offline_truthfulqa_mc, targets=targets)),
        hub_path="truthfulqa/truthful_qa",
        hub_config="multiple_choice",
        hub_splits=dict.fromkeys(SPLITS, "validation"),
        from_hub=partial(_truthfulqa_row, targets=targets),
        carve=_carve_truthfulqa,
    )


def _mmlu_spec(subject: str) -> _Spec:
    folders = {"train": "dev", "validation": "val", "test": "test"}
    return _Spec(
        uid_prefix=f"mmlu:{subject}",
        offline={split: partial(_offline_mmlu, subject=subject, folder=f) for split, f in folders.items()},
        hub_path="cais/mmlu",
        hub_config=subject,
        hub_splits={"train": "dev", "validation": "validation", "test": "test"},
        from_hub=_mmlu_hub_row,
    )


_SPECS: dict[str, _Spec] = {
    "arc_easy": _arc_spec("arc_easy", "ARC-Easy"),
    "arc_challenge": _arc_spec("arc_challenge", "ARC-Challenge"),
    "obqa": _Spec(
        uid_prefix="obqa",
        offline={
            split: partial(_offline_obqa, file=f"openbookqa/Main/{f}.tsv")
            for split, f in {"train": "train", "validation": "dev", "test": "test"}.items()
        },
        hub_path="allenai/openbookqa",
        hub_config="main",
        hub_splits=TRAIN_VAL_TEST,
        from_hub=partial(_lettered_hub_row, question_key="question_stem"),
    ),
    **{f"winogrande_{size}": _winogrande_spec(size) for size in ("xs", "s", "m", "l")},
    "boolq": _Spec(
        uid_prefix="boolq",
        offline={"train": _offline_boolq, "validation": _offline_boolq},
        hub_path="google/boolq",
        hub_config=None,
        hub_splits=TRAIN_VAL,
        from_hub=_boolq_hub_row,
    ),
    "piqa": _Spec(
        uid_prefix="piqa",
        offline={"validation": partial(_offline_sample, kind="piqa")},
        hub_path="ybisk/piqa",
        hub_config=None,
        hub_splits=TRAIN_VAL,
        from_hub=_piqa_row,
    ),
    "hellaswag": _Spec(
        uid_prefix="hellaswag",
        offline={"validation": partial(_offline_sample, kind="hellaswag")},
        hub_path="Rowan/hellaswag",
        hub_config=None,
        hub_splits=TRAIN_VAL,
        from_hub=_hellaswag_row,
    ),
    "truthfulqa_mc1": _truthfulqa_spec("mc1_targets"),
    "truthfulqa_mc2": _truthfulqa_spec("mc2_targets"),
}

_ALIASES = {"openbookqa": "obqa", "arc_e": "arc_easy", "arc_c": "arc_challenge"}


def list_mc_datasets() -> list[str]:
    """Canonical dataset names; MMLU appears as its groups plus the ``mmlu:<subject>`` pattern."""
    return [*_SPECS, *(f"mmlu:{group}" for group in MMLU_GROUPS), "mmlu:<subject>"]


def is_mc_dataset(name: str) -> bool:
    """Whether ``name`` (or an alias of it) is a multiple-choice dataset."""
    try:
        _canonical(name)
    except ConfigError:
        return False
    return True


def _canonical(name: str) -> str:
    """Resolve aliases (case-insensitive, ``-`` = ``_``; ``MMLU-chem`` = ``mmlu:chem``)."""
    key = name.strip().lower().replace("-", "_")
    mmlu = re.fullmatch(r"mmlu[:_](.+)", key)
    if mmlu and (mmlu[1] in MMLU_GROUPS or mmlu[1] in MMLU_SUBJECTS):
        return f"mmlu:{mmlu[1]}"
    key = _ALIASES.get(key, key)
    if key in _SPECS:
        return key
    raise ConfigError(
        f"unknown multiple-choice dataset {name!r}; valid names: {', '.join(list_mc_datasets())} "
        "(subjects: bayespeft.data.multiple_choice.MMLU_SUBJECTS)"
    )


def _specs_for(name: str) -> list[_Spec]:
    """The spec of a dataset, or one per subject (in group order) for an MMLU name."""
    if name.startswith("mmlu:"):
        part = name.removeprefix("mmlu:")
        return [_mmlu_spec(subject) for subject in MMLU_GROUPS.get(part, (part,))]
    return [_SPECS[name]]


# ----------------------------------------------------------------------------- loading


def _load_hub(spec: _Spec, request: _Request) -> list[MCExample]:
    """Rows of the hub split converted with the spec's row converter."""
    rows, where = hub_rows(spec.hub_path, spec.hub_config, spec.hub_splits[request.split])
    return _convert(rows, where, spec.from_hub, request)


def load_mc_dataset(
    name: str,
    split: str,
    data_dir: str | Path | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
) -> list[MCExample]:
    """Load a multiple-choice dataset split as zero-shot lettered prompts.

    ``data_dir`` is a folder laid out like the project's staged data (``arc_easy/``, ``mmlu/``,
    ...); ``None`` loads from the Hugging Face hub. ``seed`` only affects the offline BoolQ
    train/validation split and the TruthfulQA validation part. ``limit`` keeps the first ``limit`` examples.
    """
    canonical = _canonical(name)
    specs = _specs_for(canonical)
    offline_dir = check_load_args(canonical, split, data_dir, limit, specs[0].offline, specs[0].hub_splits)
    examples: list[MCExample] = []
    for spec in specs:
        request = _Request(canonical, split, spec.uid_prefix, seed)
        loaded = _load_hub(spec, request) if offline_dir is None else spec.offline[split](offline_dir, request)
        examples += loaded if spec.carve is None else spec.carve(loaded, request)
    return examples if limit is None else examples[:limit]
