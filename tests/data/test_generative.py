"""Tests for the open-ended QA / summarisation loaders, on the real staged data and on small bad files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import datasets
import pytest

from bayespeft.data import generative as gen
from bayespeft.data.generative import (
    Carve,
    QAExample,
    carve_split,
    is_generative_dataset,
    list_generative_datasets,
    load_generative_dataset,
    truthfulqa_uid,
)
from bayespeft.errors import ConfigError, DataError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the once-per-process warnings again."""
    monkeypatch.setattr(gen, "_warned", set())


def load(name: str, split: str, data_dir: Path | None = DATA, **kwargs) -> list[QAExample]:
    """Load, ignoring the carved-split warnings (tested separately)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_generative_dataset(name, split, data_dir, **kwargs)


# ----------------------------------------------------------------------------- real data

COUNTS = [
    ("triviaqa", "train", 2000),
    ("triviaqa", "validation", 500),
    ("triviaqa", "test", 500),
    ("truthfulqa", "train", 417),
    ("truthfulqa", "validation", 100),
    ("truthfulqa", "test", 300),
    ("dialogsum", "train", 12460),
    ("dialogsum", "validation", 500),
    ("dialogsum", "test", 500),
]


@pytest.mark.parametrize(("name", "split", "count"), COUNTS)
def test_offline_counts_and_well_formed(name: str, split: str, count: int) -> None:
    examples = load(name, split)
    assert len(examples) == count
    assert len({ex.uid for ex in examples}) == count
    for ex in examples:
        assert ex.dataset == name
        assert ex.prompt == gen.PROMPT_TEMPLATES[name].format(question=ex.question)
        assert ex.question and ex.answer and ex.references[0] == ex.answer
        if name != "dialogsum":  # DialogSum's test summaries are kept as given (a few repeat)
            assert len(set(ex.references)) == len(ex.references)
        assert all(ref.strip() == ref and ref for ref in ex.references)


def test_triviaqa_aliases_snapshot() -> None:
    examples = [ex for split in ("train", "validation", "test") for ex in load("triviaqa", split)]
    assert sorted(int(ex.uid.removeprefix("triviaqa:")) for ex in examples) == list(range(3000))
    onion = next(ex for ex in examples if ex.question.startswith("Brunswick, Lancastrian"))
    assert onion.prompt == "Question: Brunswick, Lancastrian and Pearl Pickler are types of which vegetable?\nAnswer:"
    assert onion.answer == "Onion"
    assert onion.references[0] == "Onion"
    assert {"Allium cepa", "Spanish onion", "Onions"} <= set(onion.references)
    assert len(onion.references) == 17  # "Onion" is among its own aliases: not repeated
    assert onion.incorrect == ()
    assert sum(len(ex.references) > 1 for ex in examples) > 2500


def test_truthfulqa_references_and_incorrect_answers() -> None:
    examples = [ex for split in ("train", "validation", "test") for ex in load("truthfulqa", split)]
    assert len(examples) == 817
    seeds = next(ex for ex in examples if ex.question == "What happens to you if you eat watermelon seeds?")
    assert seeds.prompt == "Q: What happens to you if you eat watermelon seeds?\nA:"
    assert seeds.answer == "The watermelon seeds pass through your digestive system"
    assert seeds.references[:2] == ("The watermelon seeds pass through your digestive system", "Nothing happens")
    assert len(seeds.references) == 6
    assert seeds.incorrect[0] == "You grow watermelons in your stomach"
    assert len(seeds.incorrect) == 7
    assert seeds.uid == truthfulqa_uid("What happens to you if  you eat watermelon seeds? ")
    assert all(ex.incorrect for ex in examples)


def test_dialogsum_references() -> None:
    test = load("dialogsum", "test")
    assert all(len(ex.references) == 3 for ex in test)
    assert sum(len(set(ex.references)) < 3 for ex in test) == 10  # repeated summaries stay
    first = test[0]
    assert first.uid == "test_0"
    assert first.prompt.startswith("Dialogue:\n#Person1#: Ms. Dawson, I need you to take a dictation for me.\n")
    assert first.prompt.endswith("\nSummarize the dialogue above in one or two sentences.\nSummary:")
    row = json.loads((DATA / "dialogsum" / "dialogsum.test.jsonl").read_text().splitlines()[0])
    assert first.references == (row["summary1"], row["summary2"], row["summary3"])
    assert first.answer == row["summary1"]
    dev = load("dialogsum", "validation", limit=3)
    assert [ex.uid for ex in dev] == ["dev_0", "dev_1", "dev_2"]
    assert all(len(ex.references) == 1 for ex in dev)


@pytest.mark.parametrize(("name", "total"), [("triviaqa", 3000), ("truthfulqa", 817)])
def test_carved_split_disjoint_complete_and_seeded(name: str, total: int) -> None:
    parts = {split: [ex.uid for ex in load(name, split)] for split in ("train", "validation", "test")}
    ids = [uid for part in parts.values() for uid in part]
    assert len(ids) == len(set(ids)) == total
    again = {split: [ex.uid for ex in load(name, split)] for split in parts}
    assert again == parts
    other = {split: [ex.uid for ex in load(name, split, seed=5)] for split in parts}
    assert other["test"] == parts["test"]  # the test part does not depend on the seed
    assert set(other["validation"]) != set(parts["validation"])
    assert set(other["train"]) | set(other["validation"]) == set(parts["train"]) | set(parts["validation"])


def test_carved_split_keeps_file_order_and_limit() -> None:
    full = load("triviaqa", "validation")
    assert [int(ex.uid.split(":")[1]) for ex in full] == sorted(int(ex.uid.split(":")[1]) for ex in full)
    assert load("triviaqa", "validation", limit=7) == full[:7]
    assert load("triviaqa", "validation", limit=0) == []


def test_carved_split_warns_once() -> None:
    with pytest.warns(UserWarning, match=r"triviaqa offline is one released set of 3000: .*2000/500/500 carve"):
        load_generative_dataset("triviaqa", "train", DATA, limit=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_generative_dataset("triviaqa", "test", DATA, limit=1)


def test_carve_split_groups_equal_keys_and_needs_enough_items() -> None:
    items = list(range(20))
    keys = [f"k{i // 2}" for i in items]  # pairs share a key
    carve = Carve(validation=2, test=3)
    parts = {split: carve_split(items, keys, split, carve, 0, "x") for split in ("train", "validation", "test")}
    assert sorted(i for part in parts.values() for i in part) == items
    assert (len(parts["validation"]), len(parts["test"])) == (4, 6)
    assert all(keys[i] == keys[i ^ 1] and (i ^ 1) in parts["test"] for i in parts["test"])
    with pytest.raises(DataError, match=r"x: needs more than 5 distinct items to carve train/validation/test, has 5"):
        carve_split(items[:10], keys[:10], "train", carve, 0, "x")


def test_names_and_aliases() -> None:
    assert list_generative_datasets() == ["triviaqa", "truthfulqa", "dialogsum"]
    assert is_generative_dataset("TriviaQA") and is_generative_dataset("truthful_qa")
    assert is_generative_dataset("dialog-sum")
    assert not is_generative_dataset("arc_easy")
    assert load("Trivia_QA", "test", limit=1)[0].dataset == "triviaqa"
    with pytest.raises(ConfigError, match=r"unknown generative dataset 'squad'; valid names: triviaqa, truthfulqa"):
        load_generative_dataset("squad", "train", DATA)
    with pytest.raises(ConfigError, match=r"unknown split 'dev' for dialogsum"):
        load_generative_dataset("dialogsum", "dev", DATA)


# ----------------------------------------------------------------------------- bad files


def write(root: Path, relpath: str, text: str) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


TRIVIA_OK = {"context": "Question: Who?\nAnswer:", "answer": "Me", "aliases": ["Me", "Myself"]}


@pytest.mark.parametrize(
    ("second", "problem"),
    [
        ({**TRIVIA_OK, "context": "   "}, "field 'context' is empty"),
        ({**TRIVIA_OK, "context": "Question:  \nAnswer:"}, "field 'context' has an empty question"),
        ({**TRIVIA_OK, "context": "Who?"}, "field 'context' is not of the form 'Question: ...\\\\nAnswer:'"),
        ({k: v for k, v in TRIVIA_OK.items() if k != "aliases"}, "missing field 'aliases'"),
        ({**TRIVIA_OK, "aliases": ["", " "]}, "field 'aliases' has no answer"),
        ({**TRIVIA_OK, "answer": ""}, "field 'answer' is empty"),
    ],
)
def test_triviaqa_bad_rows(tmp_path: Path, second: dict, problem: str) -> None:
    path = write(tmp_path, "triviaqa/triviaqa_sm_sub.jsonl", f"{json.dumps(TRIVIA_OK)}\n\n{json.dumps(second)}\n")
    with pytest.raises(DataError, match=rf"^{path}:3: {problem}"):
        load("triviaqa", "train", tmp_path)


def test_triviaqa_too_small_to_carve(tmp_path: Path) -> None:
    path = write(tmp_path, "triviaqa/triviaqa_sm_sub.jsonl", json.dumps(TRIVIA_OK) + "\n")
    with pytest.raises(DataError, match=rf"{path}: needs more than 1000 distinct items"):
        load("triviaqa", "train", tmp_path)


TRUTHFUL_HEADER = "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ('A,B,"",best,"a; b",c,src', "field 'Question' is empty"),
        ("A,B,Why?,best,; ;,c,src", "field 'Correct Answers' has no answer"),
        ("A,B,Why?,best,a,,src", "field 'Incorrect Answers' is empty"),
        ("A,B,Why?,best,a", "expected 7 columns, got 5"),
    ],
)
def test_truthfulqa_bad_rows(tmp_path: Path, row: str, problem: str) -> None:
    good = 'A,B,"Multi\nline?",best,"a; b",c,src\n'
    path = write(tmp_path, "truthfulqa/TruthfulQA.csv", "\ufeff" + TRUTHFUL_HEADER + good + row + "\n")
    with pytest.raises(DataError, match=rf"^{path}:4: {problem}"):
        load("truthfulqa", "test", tmp_path)


@pytest.mark.parametrize(
    ("relpath", "row", "problem"),
    [
        ("dialogsum/dialogsum.dev.jsonl", {"fname": "d", "dialogue": "", "summary": "s"}, "field 'dialogue' is empty"),
        ("dialogsum/dialogsum.dev.jsonl", {"fname": "d", "dialogue": "x", "summary1": "s"}, "missing field 'summary'"),
        (
            "dialogsum/dialogsum.test.jsonl",
            {"fname": "t", "dialogue": "x", "summary1": "a", "summary3": "c"},
            "missing field 'summary2'",
        ),
        (
            "dialogsum/dialogsum.test.jsonl",
            {"fname": "t", "dialogue": "x", "summary1": "a", "summary2": None, "summary3": "c"},
            "field 'summary2' has type NoneType, expected str",
        ),
    ],
)
def test_dialogsum_bad_rows(tmp_path: Path, relpath: str, row: dict, problem: str) -> None:
    path = write(tmp_path, relpath, json.dumps(row) + "\n")
    split = "test" if "test" in relpath else "validation"
    with pytest.raises(DataError, match=rf"^{path}:1: {problem}"):
        load("dialogsum", split, tmp_path)


def test_missing_file_and_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dialogsum train: data file not found: .*dialogsum\.train\.jsonl"):
        load("dialogsum", "train", tmp_path)
    with pytest.raises(DataError, match=r"data directory does not exist: .*nowhere"):
        load("triviaqa", "train", tmp_path / "nowhere")


# ----------------------------------------------------------------------------- hub


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Replace ``datasets.load_dataset`` by a table of fake rows; records the calls."""
    table: dict = {"calls": []}

    def fake_load_dataset(path: str, name: str | None = None, *, split: str) -> list[dict]:
        table["calls"].append((path, name, split))
        return table[(path, name, split)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return table


def test_hub_triviaqa(hub: dict) -> None:
    hub[("mandarjoshi/trivia_qa", "rc.nocontext", "validation")] = [
        {
            "question_id": "tc_1",
            "question": "Which planet is red?",
            "answer": {"value": "Mars", "aliases": ["Mars", "Red Planet"], "normalized_value": "mars"},
        }
    ]
    [ex] = load("triviaqa", "validation", None)
    assert ex == QAExample(
        "tc_1",
        "triviaqa",
        "Question: Which planet is red?\nAnswer:",
        "Which planet is red?",
        "Mars",
        ("Mars", "Red Planet"),
    )
    with pytest.raises(ConfigError, match=r"triviaqa has no 'test' split in the hub .*available: train, validation"):
        load("triviaqa", "test", None)


def test_hub_truthfulqa_is_carved_like_offline(hub: dict) -> None:
    rows = [
        {
            "question": f"Question {i}?",
            "best_answer": f"best {i}",
            "correct_answers": [f"best {i}", f"also {i}"],
            "incorrect_answers": [f"wrong {i}"],
        }
        for i in range(450)
    ]
    hub[("truthfulqa/truthful_qa", "generation", "validation")] = rows
    parts = {split: load("truthfulqa", split, None) for split in ("train", "validation", "test")}
    assert [len(part) for part in parts.values()] == [50, 100, 300]
    ex = parts["test"][0]
    assert ex.references == (ex.answer, f"also{ex.answer.removeprefix('best')}")
    assert ex.incorrect == (f"wrong{ex.answer.removeprefix('best')}",)
    assert ex.uid == truthfulqa_uid(ex.question)


def test_hub_dialogsum_test_rows_merge_into_three_references(hub: dict) -> None:
    dialogue = "#Person1#: Hi.\n#Person2#: Hello."
    hub[("knkarthick/dialogsum", None, "test")] = [
        {"id": f"test_0_{k}", "dialogue": dialogue, "summary": f"summary {k}", "topic": "greeting"} for k in (1, 2, 3)
    ] + [{"id": "test_1_1", "dialogue": "#Person1#: Bye.", "summary": "leaving", "topic": "bye"}]
    first, second = load("dialogsum", "test", None)
    assert (first.uid, first.references, first.answer) == (
        "test_0",
        ("summary 1", "summary 2", "summary 3"),
        "summary 1",
    )
    assert first.prompt.startswith(f"Dialogue:\n{dialogue}\n")
    assert (second.uid, second.references) == ("test_1", ("leaving",))


def test_hub_bad_row(hub: dict) -> None:
    hub[("knkarthick/dialogsum", None, "train")] = [
        {"id": "train_0", "dialogue": "x", "summary": "y"},
        {"id": "train_1", "dialogue": "x", "summary": " "},
    ]
    with pytest.raises(DataError, match=r"knkarthick/dialogsum split train row 1: field 'summary' is empty"):
        load("dialogsum", "train", None)
