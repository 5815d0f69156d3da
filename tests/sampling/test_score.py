"""`bayespeft score`: QA correctness and uncertainty equal to direct metric calls, the judges named in the output,
summaries by ROUGE and BERTScore with density figures, and bad input."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from bayespeft.cli import main
from bayespeft.data.generative import load_generative_dataset
from bayespeft.metrics import (
    AnswerSamples,
    BERTScore,
    EmbeddingEquivalence,
    exact_match,
    generative_uncertainty,
    rouge_scores,
    selective_prediction,
)
from bayespeft.sample_store import SampleRow, SampleStore
from bayespeft.sampling.score import answer_text

QA_EXAMPLES, QA_SAMPLES = 8, 4


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def sample_zero_shot(model: Path, data: Path, store: Path, dataset: str, method: str, examples: int, *gen: str) -> None:
    argv = ["sample", "-q", "--model", str(model), "--method", method, "--dataset", dataset, "--data-dir", str(data)]
    assert main([*argv, "--store", str(store), "--max-examples", str(examples), *gen]) == 0


def set_text(store: Path, uid: str, sample_index: int, text: str) -> None:
    connection = sqlite3.connect(store)
    with connection:
        connection.execute(
            "UPDATE samples SET text = ? WHERE example_uid = ? AND sample_index = ?", (text, uid, sample_index)
        )
    connection.close()


def rows_by_example(store: Path) -> list[list[SampleRow]]:
    with SampleStore.open_existing(store) as opened:
        groups: dict[str, list[SampleRow]] = {}
        for row in opened.rows():
            groups.setdefault(row.example_uid, []).append(row)
    return list(groups.values())


@pytest.fixture(scope="module")
def qa_store(tmp_path_factory, tiny_llama_dir, shared_data) -> Path:
    """Zero-shot BLoB samples of the tiny Llama on TriviaQA, some answers set right so that correctness varies."""
    store = tmp_path_factory.mktemp("qa") / "blob.sqlite"
    gen = ["generation.n_samples=4", "generation.max_new_tokens=3", "generation.strategy=sample"]
    sample_zero_shot(tiny_llama_dir, shared_data, store, "triviaqa", "blob", QA_EXAMPLES, *gen)
    examples = load_generative_dataset("triviaqa", "test", shared_data, limit=QA_EXAMPLES, seed=1)
    for example in examples[:3]:
        for s in range(QA_SAMPLES):
            set_text(store, example.uid, s, f" {example.answer}\nQuestion: next")
    set_text(store, examples[3].uid, 0, f" {examples[3].references[-1]}")
    set_text(store, examples[3].uid, 1, " something else")
    return store


def score(store: Path | list[Path], out: Path, data: Path | None, *extra: str) -> dict:
    stores = [store] if isinstance(store, Path) else store
    argv = ["score", *(a for s in stores for a in ("--store", str(s))), "-o", str(out), "--n-boot", "50", *extra]
    assert main([*argv, *(["--data-dir", str(data)] if data else [])]) == 0
    return json.loads((out / "scores.json").read_text())


def one_error_line(capsys, argv: list[str], *needles: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"


def test_qa_scores_equal_direct_calls_of_the_metrics(qa_store, shared_data, tmp_path):
    out = tmp_path / "scores"
    payload = score(qa_store, out, shared_data)
    assert (payload["task"], payload["dataset"], payload["split"]) == ("qa", "triviaqa", "test")
    assert payload["correctness"]["judge"] == "em"
    assert payload["clustering"] == {"judge": "embedding", "model": "minilm-l6", "threshold": 0.8}
    (scored,) = payload["stores"]
    assert (scored["label"], scored["method"], scored["decoding"]) == ("blob", "blob", "sample (T=1)")
    assert (scored["examples"], scored["samples_per_example"], scored["incomplete_examples_skipped"]) == (8, 4, 0)
    for figure in scored["figures"]:
        assert Path(figure).stat().st_size > 1000
    assert sorted(Path(f).name for f in scored["figures"]) == ["arc_blob.pdf", "arc_blob.png"]
    markdown = (out / "scores.md").read_text()
    assert "Correctness: em (" in markdown and "Meaning classes: embedding (minilm-l6" in markdown

    examples = load_generative_dataset("triviaqa", "test", shared_data, limit=QA_EXAMPLES, seed=1)
    groups = rows_by_example(qa_store)
    answers = [[answer_text(r.text, summary=False) for r in rows] for rows in groups]
    best = [max(range(QA_SAMPLES), key=lambda s, rows=rows: rows[s].log_likelihood) for rows in groups]
    correct = torch.tensor(
        [exact_match(answers[i][best[i]], example.references) == 1 for i, example in enumerate(examples)]
    )
    assert 0 < correct.sum() < len(correct)
    uncertainty = generative_uncertainty(
        [
            AnswerSamples(per, [r.log_likelihood for r in rows], [len(r.token_ids) for r in rows], example.question)
            for per, rows, example in zip(answers, groups, examples, strict=True)
        ],
        EmbeddingEquivalence.from_pretrained("minilm-l6"),
    )
    expected = selective_prediction(uncertainty, correct, n_boot=50, seed=0)
    assert list(scored["selective"]) == list(expected)
    for name, intervals in expected.items():
        for metric, ci in intervals.items():
            got = scored["selective"][name][metric]
            assert [got["estimate"], got["low"], got["high"]] == pytest.approx([ci.estimate, ci.low, ci.high])
    assert scored["accuracy"]["estimate"] == pytest.approx(correct.double().mean().item())
    records = [json.loads(line) for line in Path(scored["examples_file"]).read_text().splitlines()]
    assert [r["answers"] for r in records] == answers and [r["most_likely"] for r in records] == best
    assert records[0]["answers"] == [examples[0].answer] * QA_SAMPLES and records[0]["semantic_entropy"] == 0


@pytest.fixture(scope="module")
def tiny_nli_dir(tmp_path_factory) -> Path:
    """A 1-layer random BERT NLI classifier with MiniLM's tokenizer and MNLI-style labels."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from bayespeft.backbones import resolve_model
    from bayespeft.config import ModelConfig

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(ModelConfig(name="minilm-l6"))[0])
    labels = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    torch.manual_seed(0)
    target = tmp_path_factory.mktemp("nli")
    BertForSequenceClassification(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def test_the_nli_and_llm_judges_are_named_in_the_output(qa_store, shared_data, tmp_path, tiny_nli_dir, tiny_llama_dir):
    nli = score(qa_store, tmp_path / "nli", shared_data, "--correctness", "nli", "--nli-model", str(tiny_nli_dir))
    assert nli["correctness"] | {"rule": None} == {
        "judge": "nli",
        "rule": None,
        "model": str(tiny_nli_dir),
        "threshold": 0.5,
    }
    assert nli["clustering"] == {"judge": "nli", "model": str(tiny_nli_dir), "threshold": 0.5}
    assert "Correctness: nli (mutual entailment" in (tmp_path / "nli" / "scores.md").read_text()

    argv = ["--correctness", "llm", "--judge-model", str(tiny_llama_dir), "--cluster", "embedding"]
    llm = score(qa_store, tmp_path / "llm", shared_data, *argv)
    assert (llm["correctness"]["judge"], llm["correctness"]["model"]) == ("llm", str(tiny_llama_dir))
    assert llm["clustering"]["judge"] == "embedding"
    records = [json.loads(line) for line in Path(llm["stores"][0]["examples_file"]).read_text().splitlines()]
    grades = [g for r in records for g in r["grades"]]
    assert len(grades) == QA_EXAMPLES * QA_SAMPLES and all(0 < g < 1 for g in grades)
    assert all(r["correct"] == [g > 0.5 for g in r["grades"]] for r in records)


@pytest.fixture(scope="module")
def summary_stores(tmp_path_factory, tiny_llama_dir, shared_data) -> list[Path]:
    """Zero-shot DialogSum stores: BLoB with 2 draws (one sample set to a reference) and LoRA (mle) beam search."""
    folder = tmp_path_factory.mktemp("dialogsum")
    blob, mle = folder / "blob.sqlite", folder / "mle.sqlite"
    sample_zero_shot(tiny_llama_dir, shared_data, blob, "dialogsum", "blob", 3, "generation.n_samples=2")
    gen = ["generation.strategy=beam", "generation.num_beams=2", "generation.posterior_mean=true"]
    sample_zero_shot(tiny_llama_dir, shared_data, mle, "dialogsum", "mle", 3, *gen)
    first = load_generative_dataset("dialogsum", "test", shared_data, limit=1)[0]
    set_text(blob, first.uid, 0, first.references[1])
    return [blob, mle]


def test_summaries_get_rouge_and_bertscore_per_sample_and_density_figures(summary_stores, shared_data, tmp_path):
    out = tmp_path / "scores"
    payload = score(summary_stores, out, shared_data)
    assert (payload["task"], payload["dataset"]) == ("summarization", "dialogsum")
    assert payload["bertscore"] == {"model": "minilm-l6", "num_layers": 6}
    assert [(s["label"], s["samples_per_example"], s["examples"]) for s in payload["stores"]] == [
        ("blob", 2, 3),
        ("mle", 1, 3),
    ]
    assert payload["stores"][1]["decoding"] == "beam x2, posterior mean"
    examples = load_generative_dataset("dialogsum", "test", shared_data, limit=3)
    bertscore = BERTScore()
    for path, scored in zip(summary_stores, payload["stores"], strict=True):
        groups = rows_by_example(path)
        summaries = [answer_text(r.text, summary=True) for rows in groups for r in rows]
        references = [example.references for example, rows in zip(examples, groups, strict=True) for _ in rows]
        expected = {**rouge_scores(summaries, references), **bertscore.score(summaries, references)}
        assert list(scored["means"]) == list(expected)
        for name, values in expected.items():
            assert scored["per_sample"][name] == pytest.approx(values.tolist())
            assert scored["means"][name] == pytest.approx(values.mean().item())
    blob_scores = payload["stores"][0]["per_sample"]
    assert blob_scores["rouge1_max"][0] == 1.0 and blob_scores["rouge1_min"][0] < 1.0
    assert blob_scores["bertscore_f1_max"][0] == pytest.approx(1.0)
    assert sorted(Path(f).name for f in payload["figures"]) == ["score_density.pdf", "score_density.png"]
    assert all(Path(f).stat().st_size > 1000 for f in payload["figures"])
    markdown = (out / "scores.md").read_text()
    assert (
        "| blob | blob | greedy | 3 | 2 |" in markdown and "| mle | mle | beam x2, posterior mean | 3 | 1 |" in markdown
    )


# ------------------------------------------------------------------------------------- bad input


def test_bad_input_gives_one_error_line(qa_store, summary_stores, shared_data, tmp_path, capsys):
    out = str(tmp_path / "out")
    base = ["score", "-o", out, "--store", str(qa_store)]
    data = ["--data-dir", str(shared_data)]
    one_error_line(capsys, [*base, *data, "--correctness", "nli"], "--correctness nli", "--nli-model")
    one_error_line(capsys, [*base, *data, "--cluster", "nli"], "--cluster nli", "--nli-model")
    one_error_line(capsys, base, "--data-dir", str(qa_store), "local data files")
    one_error_line(capsys, [*base, *data, "--store", str(summary_stores[0])], "--store", "one dataset and split")
    one_error_line(capsys, [*base, *data, "--n-boot", "0"], "--n-boot")
    one_error_line(capsys, [*base, *data, "--store", str(qa_store)], "--store", "named twice")
    missing = tmp_path / "missing.sqlite"
    one_error_line(capsys, ["score", "-o", out, "--store", str(missing), *data], str(missing), "not found")
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"not a database" * 500)
    one_error_line(capsys, ["score", "-o", out, "--store", str(corrupt), *data], "corrupt sample store")

    lines = (shared_data / "dialogsum" / "dialogsum.test.jsonl").read_text().splitlines()[:3]
    broken = tmp_path / "broken" / "dialogsum"
    broken.mkdir(parents=True)
    summary = ["score", "-o", out, "--store", str(summary_stores[0]), "--data-dir", str(broken.parent)]
    (broken / "dialogsum.test.jsonl").write_text("".join(line + "\n" for line in reversed(lines)))
    one_error_line(capsys, summary, "example 0 is", "the data the store was sampled from")
    rows = [json.loads(line) for line in lines]
    del rows[1]["summary2"]
    (broken / "dialogsum.test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    one_error_line(capsys, summary, "dialogsum.test.jsonl:2", "summary2")
    assert not Path(out).exists()
