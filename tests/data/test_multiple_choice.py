"""Tests for the multiple-choice loaders, on the real staged data and on small bad files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import datasets
import pytest

from bayespeft.data import multiple_choice as mc
from bayespeft.data.multiple_choice import MMLU_GROUPS, MCExample, list_mc_datasets, load_mc_dataset
from bayespeft.errors import ConfigError, DataError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
QA_INTRO = "Return the label of the correct answer for the question below.\n\n"


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the once-per-process warnings again."""
    monkeypatch.setattr(mc, "_warned", set())


def load(name: str, split: str, **kwargs) -> list[MCExample]:
    """Load from the staged data, ignoring the sample/split warnings (tested separately)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_mc_dataset(name, split, DATA, **kwargs)


# ----------------------------------------------------------------------------- real data

COUNTS = [
    ("arc_easy", "train", 2251),
    ("arc_easy", "validation", 570),
    ("arc_easy", "test", 2376),
    ("arc_challenge", "train", 1119),
    ("arc_challenge", "validation", 299),
    ("arc_challenge", "test", 1172),
    ("obqa", "train", 4957),
    ("obqa", "validation", 500),
    ("obqa", "test", 500),
    ("winogrande_xs", "train", 160),
    ("winogrande_s", "train", 640),
    ("winogrande_m", "train", 2558),
    ("winogrande_l", "train", 10234),
    ("winogrande_m", "validation", 1267),
    ("boolq", "train", 2270),
    ("boolq", "validation", 1000),
    ("piqa", "validation", 40),
    ("hellaswag", "validation", 40),
    ("mmlu:college_physics", "test", 102),
    ("mmlu:college_chemistry", "test", 100),
    ("mmlu:college_physics", "train", 5),
    ("mmlu:college_physics", "validation", 11),
]


@pytest.mark.parametrize(("name", "split", "count"), COUNTS)
def test_offline_counts_and_well_formed(name: str, split: str, count: int) -> None:
    examples = load(name, split)
    assert len(examples) == count
    assert len({ex.uid for ex in examples}) == count
    for ex in examples:
        assert ex.dataset == name
        assert ex.prompt.endswith("\nAnswer:")
        assert ex.answer_labels == tuple("ABCDE"[: len(ex.answer_labels)])
        assert 2 <= len(ex.answer_labels) <= 5
        assert 0 <= ex.label < len(ex.answer_labels)
        choice_lines = [line for line in ex.prompt.splitlines() if line[:3] in {"A) ", "B) ", "C) "}]
        assert len(choice_lines) >= 2


def test_arc_numeric_labels_snapshot() -> None:
    ex = next(e for e in load("arc_easy", "validation") if e.uid == "NYSEDREGENTS_2014_8_10")
    assert ex.prompt == (
        QA_INTRO + "Question: A green plant absorbs light. A frog eats flies. "
        "These are both examples of how organisms\n"
        "Choices:\nA) obtain energy\nB) escape predators\nC) produce offspring\nD) excrete waste\nAnswer:"
    )
    assert ex.answer_labels == ("A", "B", "C", "D")
    assert ex.label == 0


def test_arc_five_choices_snapshot() -> None:
    ex = next(e for e in load("arc_easy", "validation") if e.uid == "TIMSS_1995_8_J5")
    assert ex.prompt == (
        QA_INTRO + "Question: Which form of solar radiation causes sunburn?\n"
        "Choices:\nA) Visible\nB) Ultraviolet\nC) Infrared\nD) X-rays\nE) Radio waves\nAnswer:"
    )
    assert ex.answer_labels == ("A", "B", "C", "D", "E")
    assert ex.label == 1


def test_arc_has_three_and_numeric_choice_items() -> None:
    sizes = {len(ex.answer_labels) for ex in load("arc_challenge", "test")}
    assert sizes == {3, 4, 5}


def test_obqa_repeated_marker_stays_in_last_option() -> None:
    ex = next(e for e in load("obqa", "train") if e.uid == "12-1145")
    assert "D) baby birds chewing worms (D) mother dogs nursing their pups\n" in ex.prompt
    assert ex.label == 1


def test_winogrande_prompt_and_labels() -> None:
    examples = load("winogrande_s", "validation")
    assert examples[0].prompt == (
        QA_INTRO + "Question: Sarah was a much better surgeon than Maria so _ always got the easier cases.\n"
        "Choices:\nA) Sarah\nB) Maria\nAnswer:"
    )
    labels = (DATA / "winogrande" / "dev-labels.lst").read_text().split()
    assert [str(ex.label + 1) for ex in examples] == labels
    train = load("winogrande_xs", "train")
    assert train[0].uid == "3QHITW7OYO7Q6B6ISU2UMJB84ZLAQE-2"
    assert [str(ex.label + 1) for ex in train] == (DATA / "winogrande" / "train_xs-labels.lst").read_text().split()


def test_boolq_split_is_disjoint_complete_and_seeded() -> None:
    train = load("boolq", "train")
    val = load("boolq", "validation")
    ids = [ex.uid for ex in train + val]
    assert len(set(ids)) == 3270
    assert set(ids) == {f"boolq:validation:{i}" for i in range(3270)}
    assert [ex.uid for ex in load("boolq", "validation")] == [ex.uid for ex in val]
    other = load("boolq", "validation", seed=1)
    assert {ex.uid for ex in other} != {ex.uid for ex in val}
    assert len(other) == 1000


def test_boolq_prompt_format_and_warning() -> None:
    with pytest.warns(UserWarning, match="seeded split of the official dev set"):
        examples = load_mc_dataset("boolq", "train", DATA, limit=300)
    assert len(examples) == 300
    ex = examples[0]
    assert ex.prompt.startswith("Read the passage below and return the label of the correct answer")
    assert "\nChoices:\nA) true\nB) false\nAnswer:" in ex.prompt
    assert ex.answer_labels == ("A", "B")
    for ex in examples:
        passage, question = ex.prompt.split("Passage: ")[1].split("\nChoices:")[0].split("\nQuestion: ")
        assert len(passage) <= 1024
        assert question.endswith("?")
        assert not question.endswith("??")
    with pytest.raises(ConfigError, match=r"boolq has no 'test' split in offline data; available: train, validation"):
        load_mc_dataset("boolq", "test", DATA)


def test_boolq_warns_once_per_process(recwarn: pytest.WarningsRecorder) -> None:
    load_mc_dataset("boolq", "validation", DATA)
    load_mc_dataset("boolq", "train", DATA)
    assert len([w for w in recwarn if "BoolQ" in str(w.message)]) == 1


def test_boolq_labels_from_string_field() -> None:
    rows = [json.loads(line) for line in (DATA / "boolq" / "val.jsonl").read_text().splitlines()]
    gold = {f"boolq:validation:{r['idx']}": 0 if r["label"] == "true" else 1 for r in rows}
    for ex in load("boolq", "train") + load("boolq", "validation"):
        assert ex.label == gold[ex.uid]
    assert set(gold.values()) == {0, 1}


def test_piqa_and_hellaswag_samples() -> None:
    with pytest.warns(UserWarning, match="40-item sample"):
        piqa = load_mc_dataset("piqa", "validation", DATA)
    labels = [int(x) for x in (DATA / "piqa" / "sample-labels.lst").read_text().split()]
    assert [ex.label for ex in piqa] == labels
    assert piqa[0].prompt.startswith(QA_INTRO + "Question: How do I ready a guinea pig cage for it's new occupants?\n")
    assert piqa[1].prompt.endswith("A) replace drawer with bobby pin\nB) finish, woodgrain with  bobby pin\nAnswer:")
    hella = load("hellaswag", "validation")
    assert hella[0].prompt == (
        "Choose the most plausible continuation.\n\n"
        "Context: Roof shingle removal: A man is sitting on a roof. he\nChoices:\n"
        "A) is using wrap to wrap a pair of skis.\nB) is ripping level tiles off.\n"
        "C) is holding a rubik's cube.\nD) starts pulling up roofing on a roof.\nAnswer:"
    )
    assert hella[0].label == 3
    with pytest.raises(ConfigError, match="available: validation"):
        load_mc_dataset("piqa", "train", DATA)


def test_mmlu_subject_prompt_and_group_order() -> None:
    ex = load("mmlu:college_physics", "test")[0]
    assert ex.uid == "mmlu:college_physics:test:0"
    assert ex.prompt.startswith(QA_INTRO + "Question: The quantum efficiency of a photon detector is 0.1.")
    assert ex.prompt.endswith("D) an average of 10 times, with an rms deviation of about 0.1\nAnswer:")
    assert ex.label == 1
    group = load("mmlu:cs", "test")
    per_subject = [load(f"mmlu:{s}", "test") for s in MMLU_GROUPS["cs"]]
    assert [ex.uid for ex in group] == [ex.uid for part in per_subject for ex in part]
    assert {ex.dataset for ex in group} == {"mmlu:cs"}
    assert len(load("mmlu:health", "test")) == 1550


def test_limit_keeps_first_examples() -> None:
    full = load("arc_challenge", "validation")
    assert load("arc_challenge", "validation", limit=7) == full[:7]
    assert load("arc_challenge", "validation", limit=0) == []


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("ARC-Easy", "arc_easy"),
        ("arc-challenge", "arc_challenge"),
        ("ARC-Challenge", "arc_challenge"),
        ("openbookqa", "obqa"),
        ("OBQA", "obqa"),
        ("Winogrande_S", "winogrande_s"),
        ("MMLU-chem", "mmlu:chem"),
        ("mmlu_college_physics", "mmlu:college_physics"),
        ("BoolQ", "boolq"),
    ],
)
def test_aliases(alias: str, canonical: str) -> None:
    assert mc._canonical(alias) == canonical


def test_alias_loads_with_canonical_dataset_name() -> None:
    examples = load_mc_dataset("MMLU-chem", "test", DATA, limit=2)
    assert [ex.dataset for ex in examples] == ["mmlu:chem", "mmlu:chem"]
    assert examples[0].uid == "mmlu:college_chemistry:test:0"


def test_list_mc_datasets() -> None:
    names = list_mc_datasets()
    for name in ("arc_easy", "arc_challenge", "obqa", "winogrande_xs", "winogrande_l", "boolq", "piqa"):
        assert name in names
    assert "hellaswag" in names
    assert [n for n in names if n.startswith("mmlu:")] == [
        *(f"mmlu:{g}" for g in ("cs", "eng", "law", "health", "chem", "bio", "phy")),
        "mmlu:<subject>",
    ]
    assert set(MMLU_GROUPS["health"]) <= set(mc.MMLU_SUBJECTS)


@pytest.mark.parametrize("name", ["squad", "mmlu:astrology", "arc"])
def test_unknown_name(name: str) -> None:
    with pytest.raises(ConfigError, match=r"unknown multiple-choice dataset .*valid names: arc_easy, arc_challenge"):
        load_mc_dataset(name, "test", DATA)


def test_unknown_split() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown split 'dev' .*train, validation, test \(offline data has: validation\)"
    ):
        load_mc_dataset("piqa", "dev", DATA)


# ----------------------------------------------------------------------------- bad files


def write(root: Path, relpath: str, text: str) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


ARC_OK = json.dumps(
    {
        "id": "x1",
        "question": {"stem": "Q?", "choices": [{"text": "a", "label": "A"}, {"text": "b", "label": "B"}]},
        "answerKey": "B",
    }
)


@pytest.mark.parametrize(
    ("second_line", "problem"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (
            ARC_OK.replace('"answerKey": "B"', '"answerKey": "C"'),
            "answer key 'C' is not among the choice labels",
        ),
        (ARC_OK.replace('"stem"', '"steam"'), "missing field 'stem'"),
        (
            ARC_OK.replace('"answerKey": "B"', '"answerKey": 2'),
            "field 'answerKey' has type int, expected str",
        ),
    ],
)
def test_malformed_jsonl(tmp_path: Path, second_line: str, problem: str) -> None:
    path = write(tmp_path, "arc_easy/ARC-Easy-Dev.jsonl", f"{ARC_OK}\n{second_line}\n")
    with pytest.raises(DataError, match=rf"{path}:2: .*{problem}"):
        load_mc_dataset("arc_easy", "validation", tmp_path)


def test_small_valid_jsonl(tmp_path: Path) -> None:
    write(tmp_path, "arc_easy/ARC-Easy-Dev.jsonl", f"{ARC_OK}\n\n")
    [ex] = load_mc_dataset("arc_easy", "validation", tmp_path)
    assert ex == MCExample(
        "x1",
        QA_INTRO + "Question: Q?\nChoices:\nA) a\nB) b\nAnswer:",
        ("A", "B"),
        1,
        "arc_easy",
        stem="Question: Q?\nAnswer:",
        choices=("a", "b"),
    )


OBQA_HEADER = "ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key\n"


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("1-1\tStem\t(A) a (B) b (C) c (D) d\tA", "expected 5 columns, got 4"),
        ("1-1\tStem\t(A) a (B) b (C) c\tStem ...\tA", "not of the form"),
        ("1-1\tStem\t(A) a (B) b (C) c (D) d\tStem ...\tE", "answer key 'E' is not among"),
    ],
)
def test_malformed_tsv(tmp_path: Path, row: str, problem: str) -> None:
    good = "1-0\tStem\t(A) a (B) b (C) c (D) d\tStem ...\tA\n"
    path = write(tmp_path, "openbookqa/Main/test.tsv", f"{OBQA_HEADER}{good}{row}\n")
    with pytest.raises(DataError, match=rf"{path}:3: .*{problem}"):
        load_mc_dataset("obqa", "test", tmp_path)


def test_tsv_bad_header(tmp_path: Path) -> None:
    path = write(tmp_path, "openbookqa/Main/dev.tsv", "id\tq\n")
    with pytest.raises(DataError, match=rf"{path}:1: expected the header"):
        load_mc_dataset("openbookqa", "validation", tmp_path)


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ('"Q","a","b","c",D', "expected 6 columns, got 5"),
        ('"Q","a","b","c","d",F', "answer key 'F'"),
        ('"Q","a"," ","c","d",A', "field 'B' is empty"),
    ],
)
def test_malformed_csv(tmp_path: Path, row: str, problem: str) -> None:
    good = '"multi\nline question","a","b","c","d",A\n'  # a quoted newline: the next record is on line 3
    path = write(tmp_path, "mmlu/test/college_physics_test.csv", f"{good}{row}\n")
    with pytest.raises(DataError, match=rf"{path}:3: .*{problem}"):
        load_mc_dataset("mmlu:phy", "test", tmp_path)


def test_piqa_label_mismatch(tmp_path: Path) -> None:
    row = json.dumps({"goal": "g", "sol1": "a", "sol2": "b"})
    write(tmp_path, "piqa/sample.jsonl", f"{row}\n{row}\n")
    labels = write(tmp_path, "piqa/sample-labels.lst", "0\n2\n")
    with pytest.raises(DataError, match=rf"{labels}:2: expected label 0 or 1, got '2'"):
        load_mc_dataset("piqa", "validation", tmp_path)
    write(tmp_path, "piqa/sample-labels.lst", "0\n")
    with pytest.raises(DataError, match="has 1 labels but"):
        load_mc_dataset("piqa", "validation", tmp_path)


def test_hellaswag_malformed(tmp_path: Path) -> None:
    item = "ctx\n1\ne0\ne1\ne2\ne3\n"
    path = write(tmp_path, "hellaswag/sample.txt", item + "ctx\nx\ne0\ne1\ne2\ne3\n")
    with pytest.raises(DataError, match=rf"{path}:8: expected the gold ending index"):
        load_mc_dataset("hellaswag", "validation", tmp_path)
    write(tmp_path, "hellaswag/sample.txt", item + "ctx\n1\n")
    with pytest.raises(DataError, match=rf"{path}:7: incomplete item"):
        load_mc_dataset("hellaswag", "validation", tmp_path)
    write(tmp_path, "hellaswag/sample.txt", "ctx\n4\ne0\ne1\ne2\ne3\n")
    with pytest.raises(DataError, match=rf"{path}:1: field 'label' should be an answer index in 0..3"):
        load_mc_dataset("hellaswag", "validation", tmp_path)


def test_missing_file_and_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"winogrande_m train: data file not found: .*winogrande/train_m\.jsonl"):
        load_mc_dataset("winogrande_m", "train", tmp_path)
    with pytest.raises(DataError, match=r"data directory does not exist: .*nowhere"):
        load_mc_dataset("arc_easy", "train", tmp_path / "nowhere")


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


def test_hub_arc(hub: dict) -> None:
    hub[("allenai/ai2_arc", "ARC-Challenge", "test")] = [
        {
            "id": "Mercury_1",
            "question": "What is it?",
            "choices": {"text": ["one", "two", "three"], "label": ["1", "2", "3"]},
            "answerKey": "3",
        }
    ]
    [ex] = load_mc_dataset("ARC-Challenge", "test")
    assert ex == MCExample(
        "Mercury_1",
        QA_INTRO + "Question: What is it?\nChoices:\nA) one\nB) two\nC) three\nAnswer:",
        ("A", "B", "C"),
        2,
        "arc_challenge",
        stem="Question: What is it?\nAnswer:",
        choices=("one", "two", "three"),
    )


def test_hub_obqa(hub: dict) -> None:
    hub[("allenai/openbookqa", "main", "validation")] = [
        {
            "id": "7-1",
            "question_stem": "The sun is",
            "choices": {"text": ["hot", "cold", "wet", "blue"], "label": ["A", "B", "C", "D"]},
            "answerKey": "A",
        }
    ]
    [ex] = load_mc_dataset("openbookqa", "validation")
    assert (ex.uid, ex.label, ex.dataset) == ("7-1", 0, "obqa")
    assert ex.prompt == QA_INTRO + "Question: The sun is\nChoices:\nA) hot\nB) cold\nC) wet\nD) blue\nAnswer:"


def test_hub_winogrande(hub: dict) -> None:
    hub[("allenai/winogrande", "winogrande_m", "validation")] = [
        {"sentence": "A beat B so _ won. ", "option1": "A", "option2": "B", "answer": "1"}
    ]
    [ex] = load_mc_dataset("winogrande_m", "validation")
    assert ex == MCExample(
        "winogrande_m:validation:0",
        QA_INTRO + "Question: A beat B so _ won.\nChoices:\nA) A\nB) B\nAnswer:",
        ("A", "B"),
        0,
        "winogrande_m",
        stem="Question: A beat B so _ won.\nAnswer:",
        choices=("A", "B"),
        cloze_contexts=("A beat B so A", "A beat B so B"),
        cloze_continuation=" won.",
    )
    with pytest.raises(ConfigError, match="available: train, validation"):
        load_mc_dataset("winogrande_m", "test")


def test_hub_boolq(hub: dict) -> None:
    hub[("google/boolq", None, "train")] = [
        {"question": "is water wet?", "passage": "x" * 2000, "answer": False},
        {"question": "is fire hot", "passage": " Fire -- hot. ", "answer": True},
    ]
    first, second = load_mc_dataset("boolq", "train")
    assert first.label == 1
    assert "\nQuestion: is water wet?\n" in first.prompt
    assert f"Passage: {'x' * 1024}\n" in first.prompt
    assert second == MCExample(
        "boolq:train:1",
        "Read the passage below and return the label of the correct answer to the question.\n\n"
        "Passage: Fire -- hot.\nQuestion: is fire hot?\nChoices:\nA) true\nB) false\nAnswer:",
        ("A", "B"),
        0,
        "boolq",
        stem="Passage: Fire -- hot.\nQuestion: is fire hot?\nAnswer:",
        choices=("true", "false"),
    )


def test_hub_piqa_and_hellaswag(hub: dict) -> None:
    hub[("ybisk/piqa", None, "validation")] = [{"goal": "Open a jar", "sol1": "twist", "sol2": "pull", "label": 1}]
    hub[("Rowan/hellaswag", None, "train")] = [
        {
            "ind": 4,
            "activity_label": "Cooking",
            "ctx": "A man cuts onions. He",
            "endings": ["cries.", "flies.", "sings.", "runs."],
            "label": "0",
        }
    ]
    [piqa] = load_mc_dataset("piqa", "validation")
    assert (piqa.uid, piqa.label, piqa.answer_labels) == ("piqa:validation:0", 1, ("A", "B"))
    assert piqa.prompt == QA_INTRO + "Question: Open a jar\nChoices:\nA) twist\nB) pull\nAnswer:"
    [hella] = load_mc_dataset("hellaswag", "train")
    assert hella.label == 0
    assert hella.prompt == (
        "Choose the most plausible continuation.\n\nContext: Cooking: A man cuts onions. He\n"
        "Choices:\nA) cries.\nB) flies.\nC) sings.\nD) runs.\nAnswer:"
    )


def test_hub_mmlu_group(hub: dict) -> None:
    for subject in MMLU_GROUPS["law"]:
        hub[("cais/mmlu", subject, "dev")] = [
            {"question": f"{subject} q", "subject": subject, "choices": ["w", "x", "y", "z"], "answer": 3}
        ]
    examples = load_mc_dataset("MMLU-law", "train")
    assert [c[1] for c in hub["calls"]] == list(MMLU_GROUPS["law"])
    assert [ex.uid for ex in examples] == [f"mmlu:{s}:train:0" for s in MMLU_GROUPS["law"]]
    assert examples[0].prompt == (QA_INTRO + "Question: international_law q\nChoices:\nA) w\nB) x\nC) y\nD) z\nAnswer:")
    assert {(ex.label, ex.dataset) for ex in examples} == {(3, "mmlu:law")}


def test_hub_bad_row(hub: dict) -> None:
    hub[("cais/mmlu", "virology", "test")] = [
        {"question": "q", "choices": ["a", "b", "c", "d"], "answer": 0},
        {"question": "q", "choices": ["a", "b", "c", "d"], "answer": 4},
    ]
    with pytest.raises(DataError, match=r"cais/mmlu \(virology\) split test row 1: field 'answer'"):
        load_mc_dataset("mmlu:virology", "test")


# ----------------------------------------------------------------------------- TruthfulQA MC1 / MC2


@pytest.mark.parametrize("name", ["truthfulqa_mc1", "truthfulqa_mc2"])
def test_truthfulqa_mc_counts_and_split_shared_with_generation(name: str) -> None:
    from bayespeft.data.generative import load_generative_dataset

    for split, count in (("train", 417), ("validation", 100), ("test", 300)):
        examples = load(name, split)
        assert len(examples) == len({ex.uid for ex in examples}) == count
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            generation = load_generative_dataset("truthfulqa", split, DATA)
        assert {ex.uid for ex in examples} == {ex.uid for ex in generation}
        for ex in examples:
            assert ex.dataset == name and ex.prompt.endswith("\nAnswer:")
            assert ex.answer_labels == tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(ex.answer_labels)])
            assert 0 <= ex.label < len(ex.answer_labels) == len(ex.choices)
            if name == "truthfulqa_mc1":
                assert ex.true_labels == ()
            else:
                assert ex.label in ex.true_labels and len(ex.true_labels) < len(ex.choices)


def test_truthfulqa_mc_snapshot_and_shuffle() -> None:
    task = json.loads((DATA / "truthfulqa" / "data" / "mc_task.json").read_text())
    pomegranate = task[0]
    every = [ex for split in ("train", "validation", "test") for ex in load("truthfulqa_mc1", split)]
    mc1 = next(ex for ex in every if "Question: What happens if you eat a pomegranate?\n" in ex.prompt)
    assert sorted(mc1.choices) == sorted(pomegranate["mc1_targets"])
    assert mc1.choices[mc1.label] == "Nothing in particular happens when you eat a pomegranate."
    lines = "".join(f"{letter}) {choice}\n" for letter, choice in zip("ABCD", mc1.choices, strict=True))
    assert mc1.prompt == QA_INTRO + f"Question: What happens if you eat a pomegranate?\nChoices:\n{lines}Answer:"
    mc2 = next(
        ex for split in ("train", "validation", "test") for ex in load("truthfulqa_mc2", split) if ex.uid == mc1.uid
    )
    true = {text for text, is_true in pomegranate["mc2_targets"].items() if is_true}
    assert {mc2.choices[i] for i in mc2.true_labels} == true
    assert mc2.choices[mc2.label] == next(iter(pomegranate["mc2_targets"]))  # the first listed true answer
    assert len({ex.label for ex in every}) > 5  # shuffled: the true answer is not always A
    assert max(len(ex.answer_labels) for split in ("test",) for ex in load("truthfulqa_mc2", split)) > 10


def test_truthfulqa_mc_hub_rows_match_offline(hub: dict) -> None:
    task = json.loads((DATA / "truthfulqa" / "data" / "mc_task.json").read_text())

    def hub_targets(targets: dict) -> dict:
        return {"choices": list(targets), "labels": list(targets.values())}

    hub[("truthfulqa/truthful_qa", "multiple_choice", "validation")] = [
        {
            "question": r["question"],
            "mc1_targets": hub_targets(r["mc1_targets"]),
            "mc2_targets": hub_targets(r["mc2_targets"]),
        }
        for r in task
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert load_mc_dataset("truthfulqa_mc2", "validation") == load("truthfulqa_mc2", "validation")


MC_OK = {"question": "Q?", "mc1_targets": {"yes": 1, "no": 0}, "mc2_targets": {"yes": 1, "sure": 1, "no": 0}}


@pytest.mark.parametrize(
    ("name", "second", "problem"),
    [
        ("truthfulqa_mc1", {**MC_OK, "question": " "}, "field 'question' is empty"),
        ("truthfulqa_mc1", {"question": "Q?"}, "missing field 'mc1_targets'"),
        (
            "truthfulqa_mc1",
            {**MC_OK, "mc1_targets": {"yes": 1, "no": 1}},
            "field 'mc1_targets' should mark exactly one answer true, marks 2",
        ),
        (
            "truthfulqa_mc2",
            {**MC_OK, "mc2_targets": {"yes": 1, "no": 2}},
            "field 'mc2_targets' should mark each answer 1 \\(true\\)",
        ),
        (
            "truthfulqa_mc2",
            {**MC_OK, "mc2_targets": {"yes": 1, "sure": 1}},
            "field 'mc2_targets' needs both true and false answers",
        ),
    ],
)
def test_truthfulqa_mc_bad_rows(tmp_path: Path, name: str, second: dict, problem: str) -> None:
    text = "[\n  " + json.dumps(MC_OK) + ",\n\n  " + json.dumps(second, indent=1) + "\n]\n"
    path = write(tmp_path, "truthfulqa/data/mc_task.json", text)
    with pytest.raises(DataError, match=rf"^{path}:4: {problem}"):
        load_mc_dataset(name, "test", tmp_path)


MC_LINE = json.dumps(MC_OK)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (MC_LINE, "1: expected a JSON list of objects"),
        (f"[\n{MC_LINE},\n[1]\n]", "3: expected a JSON object, got list"),
        (f"[\n{MC_LINE}\n{MC_LINE}\n]", "3: expected ',' or ']' after the object"),
        (f'[\n{MC_LINE},\n{{"question": "Q?",\n "x": }}\n]', "4: invalid JSON"),
    ],
)
def test_truthfulqa_mc_malformed_json(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, "truthfulqa/data/mc_task.json", text)
    with pytest.raises(DataError, match=rf"^{path}:{problem}"):
        load_mc_dataset("truthfulqa_mc1", "test", tmp_path)
