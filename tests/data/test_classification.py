"""Tests for the GLUE / SuperGLUE classification loaders, on the real staged data and on bad files."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import datasets
import pytest

from bayespeft.data import classification as cls
from bayespeft.data.classification import (
    ClassificationExample,
    classification_task_info,
    list_classification_datasets,
    load_classification_dataset,
    task_metric,
)
from bayespeft.data.multiple_choice import load_mc_dataset
from bayespeft.errors import ConfigError, DataError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the once-per-process warnings again."""
    monkeypatch.setattr(cls, "_warned", set())


def load(name: str, split: str, data_dir: Path = DATA, **kwargs) -> list[ClassificationExample]:
    """Load offline, ignoring the hold-out/split warnings (tested separately)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_classification_dataset(name, split, data_dir, **kwargs)


# ----------------------------------------------------------------------------- real data

COUNTS = [
    ("rte", "train", 2490),
    ("rte", "validation", 277),
    ("mrpc", "train", 3668),
    ("mrpc", "validation", 408),
    ("mrpc", "test", 1725),
    ("cola", "train", 8551),
    ("cola", "validation", 1043),
    ("wic", "train", 5428),
    ("wic", "validation", 638),
    ("wic", "test", 1400),
    ("boolq", "train", 2270),
    ("boolq", "validation", 1000),
]


@pytest.mark.parametrize(("name", "split", "count"), COUNTS)
def test_offline_counts_and_well_formed(name: str, split: str, count: int) -> None:
    examples = load(name, split)
    assert len(examples) == count
    assert len({ex.uid for ex in examples}) == count
    assert {ex.label for ex in examples} == {0, 1}  # both classes present
    assert all(ex.dataset == name and ex.text and ex.text == ex.text.strip() for ex in examples)
    if name == "cola":
        assert all(ex.text_pair is None for ex in examples)
    else:
        assert all(ex.text_pair and ex.text_pair == ex.text_pair.strip() for ex in examples)


def test_label_balance_matches_the_files() -> None:
    def positives(name: str, split: str) -> int:
        return sum(ex.label for ex in load(name, split))

    assert positives("rte", "train") == 1241  # not_entailment
    assert positives("cola", "validation") == 365 + 354
    assert positives("wic", "validation") == 319
    assert positives("mrpc", "test") == 1147
    assert positives("mrpc", "train") + positives("mrpc", "validation") == 2753
    assert positives("boolq", "train") + positives("boolq", "validation") == 2033


def test_rte_snapshot() -> None:
    assert load("rte", "train")[0] == ClassificationExample(
        uid="rte:train:0",
        text="No Weapons of Mass Destruction Found in Iraq Yet.",
        text_pair="Weapons of Mass Destruction Found in Iraq.",
        label=1,
        dataset="rte",
    )
    assert [ex.label for ex in load("rte", "train", limit=2)] == [1, 0]  # not_entailment, entailment


def test_mrpc_snapshot_keeps_literal_quotes() -> None:
    train = load("mrpc", "train")
    assert train[0] == ClassificationExample(
        uid="mrpc:702876-702977",
        text='Amrozi accused his brother, whom he called "the witness", of deliberately distorting his evidence.',
        text_pair='Referring to him as only "the witness", Amrozi accused his brother of deliberately '
        "distorting his evidence.",
        label=1,
        dataset="mrpc",
    )
    # an unbalanced leading quote is text, not CSV quoting
    validation = {ex.uid: ex for ex in load("mrpc", "validation")}
    assert validation["mrpc:1355540-1355592"].text_pair == (
        '"The foodservice pie business does not fit our long-term growth strategy.'
    )
    test = load("mrpc", "test")
    assert test[0].uid == "mrpc:1089874-1089925" and test[0].label == 1


def test_mrpc_holdout_is_disjoint_complete_reproducible_and_seeded() -> None:
    train, validation = load("mrpc", "train"), load("mrpc", "validation")
    train_ids, val_ids = {ex.uid for ex in train}, {ex.uid for ex in validation}
    assert not train_ids & val_ids and len(train_ids | val_ids) == 4076
    assert not (train_ids | val_ids) & {ex.uid for ex in load("mrpc", "test")}
    assert [ex.uid for ex in load("mrpc", "validation")] == [ex.uid for ex in validation]
    other = {ex.uid for ex in load("mrpc", "validation", seed=1)}
    assert len(other) == 408 and other != val_ids


def test_mrpc_warns_once_that_dev_is_a_holdout(recwarn: pytest.WarningsRecorder) -> None:
    load_classification_dataset("mrpc", "train", DATA)
    load_classification_dataset("mrpc", "validation", DATA)
    load_classification_dataset("mrpc", "test", DATA)
    messages = [str(w.message) for w in recwarn]
    assert len(messages) == 1 and "seeded hold-out" in messages[0] and "3668/408" in messages[0]


def test_cola_snapshot_and_dev_order() -> None:
    assert load("cola", "train")[0] == ClassificationExample(
        uid="cola:in_domain_train:0",
        text="Our friends won't buy this analysis, let alone the next one we propose.",
        text_pair=None,
        label=1,
        dataset="cola",
    )
    validation = load("cola", "validation")
    assert validation[0].uid == "cola:in_domain_dev:0"
    assert validation[527].uid == "cola:out_of_domain_dev:0"
    # the out-of-domain file has no final newline; its last line still counts
    assert validation[-1].uid == "cola:out_of_domain_dev:515"
    assert validation[-1].text == "John talked to Bill about himself."


def test_wic_snapshot_prepends_target_word() -> None:
    assert load("wic", "train")[0] == ClassificationExample(
        uid="wic:train:0",
        text="carry: You must carry your camping gear .",
        text_pair="Sound carries well over water .",
        label=0,
        dataset="wic",
    )
    assert load("wic", "test")[0].label == 1


def test_boolq_snapshot_and_same_split_as_multiple_choice() -> None:
    train, validation = load("boolq", "train"), load("boolq", "validation")
    first = train[0]
    assert first.uid == "boolq:validation:0" and first.label == 0
    assert first.text.startswith("Ethanol fuel -- All biomass goes through")
    assert first.text_pair == "does ethanol take more energy make that produces"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for split, ours in (("train", train), ("validation", validation)):
            theirs = load_mc_dataset("boolq", split, DATA)
            assert [ex.uid for ex in ours] == [ex.uid for ex in theirs]
            assert [ex.label for ex in ours] == [1 - ex.label for ex in theirs]  # MC: A) true = 0
        assert {ex.uid for ex in load("boolq", "validation", seed=3)} == {
            ex.uid for ex in load_mc_dataset("boolq", "validation", DATA, seed=3)
        }


def test_boolq_warns_once(recwarn: pytest.WarningsRecorder) -> None:
    load_classification_dataset("boolq", "train", DATA)
    load_classification_dataset("boolq", "validation", DATA)
    assert len(recwarn) == 1 and "seeded split" in str(recwarn[0].message)


def test_limit_keeps_first_examples() -> None:
    assert load("wic", "validation", limit=3) == load("wic", "validation")[:3]
    assert load("rte", "validation", limit=0) == []
    with pytest.raises(ConfigError, match="limit"):
        load("rte", "validation", limit=-1)


# ----------------------------------------------------------------------------- names, info


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("RTE", "rte"), ("glue_rte", "rte"), ("GLUE-MRPC", "mrpc"), ("glue:cola", "cola"), ("superglue_wic", "wic"),
     ("super_glue_boolq", "boolq"), ("SuperGLUE-BoolQ", "boolq")],
)  # fmt: skip
def test_aliases(alias: str, canonical: str) -> None:
    assert classification_task_info(alias).name == canonical
    assert load(alias, "validation", limit=1)[0].dataset == canonical


def test_list_and_task_info() -> None:
    assert list_classification_datasets() == ["rte", "mrpc", "cola", "wic", "boolq"]
    assert classification_task_info("rte").label_names == ("entailment", "not_entailment")
    assert classification_task_info("mrpc").metric == "f1"
    assert classification_task_info("cola").metric == "mcc"
    assert {classification_task_info(n).metric for n in ("rte", "wic", "boolq")} == {"accuracy"}
    assert all(classification_task_info(n).num_labels == 2 for n in list_classification_datasets())


@pytest.mark.parametrize("name", ["sst2", "glue_", "mnli", ""])
def test_unknown_name(name: str) -> None:
    with pytest.raises(ConfigError, match=r"unknown classification dataset.*valid names: rte, mrpc"):
        load_classification_dataset(name, "train", DATA)
    with pytest.raises(ConfigError, match="unknown classification dataset"):
        classification_task_info(name)


def test_unknown_and_unavailable_splits(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown split 'dev' for rte"):
        load_classification_dataset("rte", "dev", DATA)
    with pytest.raises(ConfigError, match="rte has no 'test' split in offline data; available: train, validation"):
        load_classification_dataset("rte", "test", DATA)
    with pytest.raises(ConfigError, match="cola has no 'test' split in offline data"):
        load_classification_dataset("cola", "test", DATA)
    with pytest.raises(ConfigError, match="wic has no 'test' split in the hub"):
        load_classification_dataset("wic", "test")
    with pytest.raises(DataError, match="data directory does not exist"):
        load_classification_dataset("rte", "train", tmp_path / "nope")
    with pytest.raises(DataError, match=r"rte train: data file not found: .*train\.tsv"):
        load_classification_dataset("rte", "train", tmp_path)


# ----------------------------------------------------------------------------- metrics


def test_task_metric_hand_computed() -> None:
    predictions = [1, 1, 0, 1, 0, 0]
    labels = [1, 0, 0, 1, 1, 0]  # tp=2 fp=1 fn=1 tn=2
    assert task_metric("rte", predictions, labels) == {"accuracy": 4 / 6}
    assert task_metric("mrpc", predictions, labels) == pytest.approx({"accuracy": 4 / 6, "f1": 2 / 3})
    mcc = task_metric("cola", predictions, labels)
    assert mcc == pytest.approx({"accuracy": 4 / 6, "matthews_corr": (4 - 1) / 9})
    assert task_metric("CoLA", [1, 0, 1], [1, 0, 1])["matthews_corr"] == 1.0
    assert task_metric("cola", [0, 1], [1, 0])["matthews_corr"] == -1.0
    # tp=1 fp=2 fn=0 tn=1 -> (1 - 0) / sqrt(3 * 1 * 3 * 1)
    assert task_metric("cola", [1, 1, 1, 0], [1, 0, 0, 0])["matthews_corr"] == pytest.approx(1 / 3)
    assert math.isclose(task_metric("mrpc", [1, 1, 1, 0], [1, 0, 0, 0])["f1"], 0.5)


def test_task_metric_degenerate_cases() -> None:
    labels = [1, 0, 1, 1, 0]
    assert task_metric("cola", [1] * 5, labels)["matthews_corr"] == 0.0
    assert task_metric("cola", [0] * 5, labels)["matthews_corr"] == 0.0
    assert task_metric("mrpc", [0] * 5, labels) == {"accuracy": 0.4, "f1": 0.0}
    assert task_metric("mrpc", [1] * 5, labels)["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2))
    with pytest.raises(ValueError, match="2 predictions but 3 labels"):
        task_metric("rte", [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="zero examples"):
        task_metric("rte", [], [])
    with pytest.raises(ValueError, match="prediction 2 is not a class index"):
        task_metric("rte", [2], [0])
    with pytest.raises(ConfigError):
        task_metric("sst2", [0], [0])


# ----------------------------------------------------------------------------- malformed files


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("1\tA.\tB.\tmaybe", "field 'label' should be one of 'entailment', 'not_entailment', got 'maybe'"),
        ("1\tA.\tB.", "expected 4 tab-separated columns, got 3"),
        ("1\t \tB.\tentailment", "field 'sentence1' is empty"),
    ],
)
def test_malformed_rte(tmp_path: Path, row: str, problem: str) -> None:
    path = write(tmp_path / "rte" / "glue" / "dev.tsv", f"{RTE_HEADER}0\tA.\tB.\tentailment\n\n{row}\n")
    with pytest.raises(DataError) as err:
        load("rte", "validation", tmp_path)
    assert str(err.value) == f"{path}:4: {problem}"


def test_rte_bad_header_and_small_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path / "rte" / "glue" / "train.tsv", "idx\ts1\ts2\tlabel\n")
    with pytest.raises(DataError, match=rf"^{path}:1: expected the header"):
        load("rte", "train", tmp_path)
    write(path, f'{RTE_HEADER}7\t"A" b.\tC.\tentailment\n')
    assert load("rte", "train", tmp_path) == [
        ClassificationExample(uid="rte:train:7", text='"A" b.', text_pair="C.", label=0, dataset="rte")
    ]


MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


def test_mrpc_small_files_and_errors(tmp_path: Path) -> None:
    rows = "".join(f'0\t{i}\t{i + 1}\t"Quoted\tplain "\n' for i in range(0, 2 * 1725, 2))
    path = write(tmp_path / "mrpc" / "msr_paraphrase_test.txt", MRPC_HEADER + rows)
    assert load("mrpc", "test", tmp_path)[0] == ClassificationExample(
        uid="mrpc:0-1", text='"Quoted', text_pair='plain "', label=0, dataset="mrpc"
    )
    write(path, f"{MRPC_HEADER}0\t1\t2\tA.\tB.\n2\t3\t4\tC.\tD.\n")
    with pytest.raises(DataError, match=rf"^{path}:3: field 'label' should be one of '0', '1', got '2'$"):
        load("mrpc", "test", tmp_path)
    train = write(tmp_path / "mrpc" / "msr_paraphrase_train.txt", f"{MRPC_HEADER}1\t5\t6\tA.\tB.\n")
    with pytest.raises(DataError, match=rf"^{train}: has 1 records, the MSRP release has 4076 \(a truncated copy\?\)$"):
        load("mrpc", "validation", tmp_path)


def test_mrpc_cut_short_at_a_line_boundary(tmp_path: Path) -> None:
    full = (DATA / "mrpc" / "msr_paraphrase_test.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    path = write(tmp_path / "mrpc" / "msr_paraphrase_test.txt", "".join(full[:1000]))
    with pytest.raises(DataError, match=rf"^{path}: has 999 records, the MSRP release has 1725"):
        load("mrpc", "test", tmp_path)


def test_non_utf8_data_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "mrpc" / "msr_paraphrase_test.txt"
    path.parent.mkdir(parents=True)
    path.write_bytes(f"{MRPC_HEADER}0\t1\t2\tA.\tB.\n".encode() + b"0\t3\t4\tCaf\xe9\tD.\n")
    with pytest.raises(DataError, match=rf"^{path}:3: not UTF-8 text \(invalid continuation byte"):
        load("mrpc", "test", tmp_path)


def test_malformed_cola(tmp_path: Path) -> None:
    write(tmp_path / "cola" / "raw" / "in_domain_dev.tsv", "s\t1\t\tFine.\n")
    path = write(tmp_path / "cola" / "raw" / "out_of_domain_dev.tsv", "s\t0\t*\tBad.\ns\tyes\t\tOops.")
    with pytest.raises(DataError) as err:
        load("cola", "validation", tmp_path)
    assert str(err.value) == f"{path}:2: field 'label' should be one of '0', '1', got 'yes'"


def test_malformed_wic(tmp_path: Path) -> None:
    data = write(tmp_path / "wic" / "dev" / "dev.data.txt", "run\tV\t0-1\tRun .\tI run .\nx\tN\t0-0\tX .\n")
    gold = write(tmp_path / "wic" / "dev" / "dev.gold.txt", "T\nF\n")
    with pytest.raises(DataError, match=rf"^{data}:2: expected 5 tab-separated columns, got 4$"):
        load("wic", "validation", tmp_path)
    write(data, "run\tV\t0-1\tRun .\tI run .\n")
    with pytest.raises(DataError, match=rf"^{gold}: has 2 labels but the data has 1 records$"):
        load("wic", "validation", tmp_path)
    write(gold, "yes\n")
    with pytest.raises(DataError, match=rf"^{gold}:1: expected label T or F, got 'yes'$"):
        load("wic", "validation", tmp_path)
    write(gold, "T\n")
    assert load("wic", "validation", tmp_path)[0].text == "run: Run ."


def test_malformed_boolq(tmp_path: Path) -> None:
    good = {"question": "q", "passage": "p", "idx": 0, "label": "true"}
    path = write(tmp_path / "boolq" / "val.jsonl", json.dumps(good) + "\n{not json\n")
    with pytest.raises(DataError, match=rf"^{path}:2: invalid JSON"):
        load("boolq", "train", tmp_path)
    write(path, json.dumps(good) + "\n" + json.dumps({**good, "label": "yes"}) + "\n")
    with pytest.raises(DataError, match=rf"^{path}:2: field 'label' should be one of 'false', 'true', got 'yes'$"):
        load("boolq", "train", tmp_path)
    write(path, json.dumps(good) + "\n")
    with pytest.raises(DataError, match=r"needs more than 1000 records to split, has 1"):
        load("boolq", "train", tmp_path)


# ----------------------------------------------------------------------------- hub (faked)

FAKE_ROWS = {
    ("nyu-mll/glue", "rte", "validation"): [
        {"sentence1": "P.", "sentence2": "H.", "label": 1, "idx": 5},
        {"sentence1": "P2.", "sentence2": "H2.", "label": 0, "idx": 6},
    ],
    ("nyu-mll/glue", "mrpc", "test"): [{"sentence1": "A.", "sentence2": "B.", "label": 1, "idx": 0}],
    ("nyu-mll/glue", "cola", "train"): [{"sentence": "S.", "label": 0, "idx": 3}],
    ("super_glue", "wic", "validation"): [
        {"word": "bank", "sentence1": "River bank .", "sentence2": "Bank loan .", "label": 0, "idx": 9,
         "start1": 6, "end1": 10, "start2": 0, "end2": 4},
    ],
    ("google/boolq", None, "train"): [{"question": "is it", "passage": "It is.", "answer": True}],
    ("nyu-mll/glue", "rte", "train"): [{"sentence1": "P.", "sentence2": "H.", "label": -1, "idx": 0}],
    ("nyu-mll/glue", "mrpc", "validation"): [{"sentence1": "A.", "sentence2": "", "label": 0, "idx": 0}],
}  # fmt: skip


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []

    def fake_load_dataset(path: str, name: str | None = None, *, split: str) -> list[dict]:
        calls.append((path, name, split))
        return FAKE_ROWS[(path, name, split)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_hub_rows_for_each_dataset(hub: list[tuple]) -> None:
    assert load_classification_dataset("glue_rte", "validation") == [
        ClassificationExample(uid="rte:validation:5", text="P.", text_pair="H.", label=1, dataset="rte"),
        ClassificationExample(uid="rte:validation:6", text="P2.", text_pair="H2.", label=0, dataset="rte"),
    ]
    assert load_classification_dataset("mrpc", "test") == [
        ClassificationExample(uid="mrpc:test:0", text="A.", text_pair="B.", label=1, dataset="mrpc")
    ]
    assert load_classification_dataset("cola", "train") == [
        ClassificationExample(uid="cola:train:3", text="S.", text_pair=None, label=0, dataset="cola")
    ]
    assert load_classification_dataset("superglue_wic", "validation") == [
        ClassificationExample(uid="wic:validation:9", text="bank: River bank .", text_pair="Bank loan .", label=0,
                              dataset="wic")
    ]  # fmt: skip
    assert load_classification_dataset("boolq", "train") == [
        ClassificationExample(uid="boolq:train:0", text="It is.", text_pair="is it", label=1, dataset="boolq")
    ]
    assert hub == [
        ("nyu-mll/glue", "rte", "validation"),
        ("nyu-mll/glue", "mrpc", "test"),
        ("nyu-mll/glue", "cola", "train"),
        ("super_glue", "wic", "validation"),
        ("google/boolq", None, "train"),
    ]


def test_hub_bad_rows(hub: list[tuple]) -> None:
    with pytest.raises(DataError, match=r"^nyu-mll/glue \(rte\) split train row 0: field 'label' is -1"):
        load_classification_dataset("rte", "train")
    with pytest.raises(DataError, match=r"^nyu-mll/glue \(mrpc\) split validation row 0: field 'sentence2' is empty"):
        load_classification_dataset("mrpc", "validation")
    with pytest.raises(ConfigError, match="boolq has no 'test' split in the hub"):
        load_classification_dataset("boolq", "test")
    assert hub == [("nyu-mll/glue", "rte", "train"), ("nyu-mll/glue", "mrpc", "validation")]
