"""The generative task: answer-only label masking, exact token NLL, repeats, seq2seq inputs, MC2,
and a training run on TriviaQA that ends with answer-likelihood metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, T5Config, T5ForConditionalGeneration

from bayespeft.config import load_config
from bayespeft.errors import ConfigError, DataError
from bayespeft.tasks.generative import IGNORE_INDEX, AnswerPair, GenerativeTask, mc2_score
from bayespeft.training import Trainer, build_session

PAIRS = [
    AnswerPair("a", "Question: Which planet is red?\nAnswer:", "Mars"),
    AnswerPair("b", "Question: Who wrote Hamlet, the play about a Danish prince?\nAnswer:", "William Shakespeare"),
    AnswerPair("c", "Q: Is the sky blue?\nA:", "Yes, on a clear day it is blue."),
]


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def model(tiny_llama_dir: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_labels_cover_exactly_the_answer_and_eos(tokenizer) -> None:
    task = GenerativeTask(tokenizer, max_length=64)
    encoded = task.encode(PAIRS)
    batch = task.collate(encoded)
    width = batch["input_ids"].shape[1]
    for row, pair in enumerate(PAIRS):
        prompt, answer = ids(tokenizer, pair.prompt), [*ids(tokenizer, f" {pair.answer}"), tokenizer.eos_token_id]
        assert encoded[row].input_ids == prompt + answer
        pad = width - len(prompt) - len(answer)
        assert batch["input_ids"][row].tolist() == [tokenizer.pad_token_id] * pad + prompt + answer
        assert batch["attention_mask"][row].tolist() == [0] * pad + [1] * (len(prompt) + len(answer))
        assert batch["labels"][row].tolist() == [IGNORE_INDEX] * (pad + len(prompt)) + answer
    assert task.answer_lengths(batch).tolist() == [len(ids(tokenizer, f" {p.answer}")) + 1 for p in PAIRS]
    assert batch["index"].tolist() == [0, 1, 2]


def hand_answer_log_likelihoods(model, tokenizer, pairs) -> list[float]:
    """Each sequence alone (no padding): sum of log p(answer token | prefix) over answer + EOS."""
    totals = []
    for pair in pairs:
        prompt, answer = ids(tokenizer, pair.prompt), [*ids(tokenizer, f" {pair.answer}"), tokenizer.eos_token_id]
        sequence = torch.tensor([prompt + answer])
        with torch.no_grad():
            log_probs = model(input_ids=sequence).logits[0].double().log_softmax(-1)
        totals.append(sum(float(log_probs[len(prompt) - 1 + k, token]) for k, token in enumerate(answer)))
    return totals


def test_loss_is_the_answer_token_nll(model, tokenizer) -> None:
    task = GenerativeTask(tokenizer, max_length=64)
    batch = task.collate(task.encode(PAIRS))
    expected = hand_answer_log_likelihoods(model, tokenizer, PAIRS)
    tokens = sum(len(ids(tokenizer, f" {p.answer}")) + 1 for p in PAIRS)
    with torch.no_grad():
        loss, scores = task.training_loss(model, batch)
        sequences = task.sequence_log_likelihoods(model, batch)
    assert float(loss) == pytest.approx(-sum(expected) / tokens, rel=1e-5)
    assert sequences.tolist() == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= scores["batch_token_acc"] <= 1.0


def test_repeats_stack_the_batch_sample_major(model, tokenizer) -> None:
    task = GenerativeTask(tokenizer, max_length=64)
    batch = task.collate(task.encode(PAIRS))
    with torch.no_grad():
        once = task.sequence_log_likelihoods(model, batch)
        thrice = task.sequence_log_likelihoods(model, batch, repeats=3)
        logits, targets = task.answer_logits(model, batch, repeats=3)
        loss_once, _ = task.training_loss(model, batch)
        loss_thrice, _ = task.training_loss(model, batch, repeats=3)
    assert thrice.shape == (9,)
    for copy in thrice.view(3, 3):
        assert torch.allclose(copy, once, atol=1e-5)
    assert logits.shape[:2] == targets.shape and targets.shape[0] == 9
    assert torch.equal(targets[:3], targets[6:])
    assert float(loss_thrice) == pytest.approx(float(loss_once), rel=1e-5)


def test_truncation_keeps_the_prompt_end_and_caps_the_answer(tokenizer) -> None:
    long = AnswerPair("long", "word " * 200 + "\nAnswer:", "yes " * 100)
    task = GenerativeTask(tokenizer, max_length=40)
    [encoded] = task.encode([long])
    assert len(encoded.input_ids) == 40
    assert len(encoded.answer_ids) == 20 and encoded.answer_ids[-1] == tokenizer.eos_token_id
    assert encoded.input_ids[:20] == ids(tokenizer, long.prompt)[-20:]


def test_chat_template_and_empty_fields(tokenizer) -> None:
    task = GenerativeTask(tokenizer, max_length=128, chat_template=True)
    [encoded] = task.encode([PAIRS[0]])
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": PAIRS[0].prompt}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    assert encoded.input_ids == ids(tokenizer, prompt) + ids(tokenizer, "Mars") + [tokenizer.eos_token_id]
    with pytest.raises(DataError, match=r"example q7: empty answer"):
        task.encode([AnswerPair("q7", "Question?", "  ")])
    with pytest.raises(DataError, match=r"example q8: empty prompt"):
        task.encode([AnswerPair("q8", "", "x")])


def tiny_t5(tokenizer) -> T5ForConditionalGeneration:
    """A one-layer random T5 over SmolLM2's vocabulary."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return T5ForConditionalGeneration(config).eval()


def test_encoder_decoder_inputs_and_loss(tokenizer) -> None:
    t5 = tiny_t5(tokenizer)
    task = GenerativeTask(tokenizer, max_length=64, encoder_decoder=True)
    batch = task.collate(task.encode(PAIRS))
    for row, pair in enumerate(PAIRS):
        prompt, answer = ids(tokenizer, pair.prompt), [*ids(tokenizer, pair.answer), tokenizer.eos_token_id]
        assert batch["input_ids"][row, : len(prompt)].tolist() == prompt  # right padded
        assert batch["attention_mask"][row].sum() == len(prompt)
        assert batch["labels"][row].tolist() == answer + [IGNORE_INDEX] * (batch["labels"].shape[1] - len(answer))
    with torch.no_grad():
        loss, _ = task.training_loss(t5, batch)
        reference = t5(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss
        twice = task.sequence_log_likelihoods(t5, batch, repeats=2)
    assert float(loss) == pytest.approx(float(reference), rel=1e-5)
    assert torch.allclose(twice[:3], twice[3:], atol=1e-5)
    with pytest.raises(ValueError, match="chat_template applies to decoder-only"):
        GenerativeTask(tokenizer, encoder_decoder=True, chat_template=True)


def test_mc2_score_is_the_normalised_mass_on_true_answers() -> None:
    log_likelihoods = torch.tensor([[0.5, 0.3, 0.2, 0.0], [1.0, 1.0, 0.0, 0.0]]).log()
    log_likelihoods[1, 2:] = float("-inf")  # a question with two choices
    true_mask = torch.tensor([[True, False, True, False], [False, True, False, False]])
    assert mc2_score(log_likelihoods, true_mask).tolist() == pytest.approx([0.7, 0.5])
    scaled = mc2_score(log_likelihoods + 7.0, true_mask)  # unnormalised sequence likelihoods give the same
    assert scaled.tolist() == pytest.approx([0.7, 0.5])


@pytest.mark.filterwarnings("ignore:truthfulqa_mc2 data is one released set")
def test_mc2_from_sequence_likelihoods_of_truthfulqa_choices(model, tokenizer, shared_data) -> None:
    from bayespeft.data.multiple_choice import load_mc_dataset

    task = GenerativeTask(tokenizer, max_length=128)
    examples = load_mc_dataset("truthfulqa_mc2", "test", shared_data, limit=2)
    scores = []
    for example in examples:
        pairs = [AnswerPair(f"{example.uid}:{k}", example.stem, choice) for k, choice in enumerate(example.choices)]
        with torch.no_grad():
            log_likelihoods = task.sequence_log_likelihoods(model, task.collate(task.encode(pairs)))
        true_mask = torch.zeros(len(pairs), dtype=torch.bool)
        true_mask[list(example.true_labels)] = True
        scores.append(float(mc2_score(log_likelihoods.unsqueeze(0), true_mask.unsqueeze(0))))
        expected = torch.tensor(hand_answer_log_likelihoods(model, tokenizer, pairs)).softmax(0)
        assert scores[-1] == pytest.approx(float(expected[true_mask].sum()), rel=1e-4)
    assert all(0.0 < s < 1.0 for s in scores)


# ---------------------------------------------------------------------------------- training


def generative_config(model_dir: Path, data_dir: Path, method: str, steps: int = 4, **extra: str):
    overrides = [
        f"model.name={model_dir}",
        f"method.name={method}",
        "data.dataset=triviaqa",
        f"data.data_dir={data_dir}",
        "data.max_train_examples=16",
        "data.max_eval_examples=6",
        "data.max_length=64",
        f"train.max_steps={steps}",
        "train.batch_size=4",
        "train.lr=0.01",
        "train.checkpoint_every=2",
        "eval.n_samples=3",
        "eval.batch_size=4",
        "eval.samples_per_pass=2",
        *(f"{k}={v}" for k, v in extra.items()),
    ]
    if method == "blob":
        overrides.append("method.kl_period=epoch")
    return load_config(None, overrides)


@pytest.mark.filterwarnings("ignore:triviaqa offline is one released set")
def test_blob_training_on_triviaqa_logs_and_scores_answer_likelihoods(tmp_path, tiny_llama_dir, shared_data) -> None:
    run = tmp_path / "run"
    payload = Trainer(generative_config(tiny_llama_dir, shared_data, "blob"), run, progress=False).run_training()
    assert payload["status"] == "finished"
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"nll", "kl", "weighted_kl", "pi", "lr", "batch_token_acc"} <= records[0].keys()
    assert "batch_acc" not in records[0]
    assert all(math.isfinite(r["nll"]) and r["nll"] > 0 for r in records)
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["method"], metrics["dataset"], metrics["split"], metrics["n_samples"]) == (
        "blob",
        "triviaqa",
        "validation",
        3,
    )
    scores = metrics["metrics"]
    assert scores["num_examples"] == 6 and scores["num_samples"] == 3
    assert scores["perplexity"] == pytest.approx(math.exp(scores["token_nll"]))
    assert scores["sequence_nll"] > scores["token_nll"] > 0
    assert payload["metrics"] == scores
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions][:1] and len(predictions) == 6
    assert all(len(p["draw_log_likelihoods"]) == 3 and p["answer_tokens"] >= 2 for p in predictions)
    tokens = sum(p["answer_tokens"] for p in predictions)
    assert scores["num_answer_tokens"] == tokens
    assert -sum(p["log_likelihood"] for p in predictions) / tokens == pytest.approx(scores["token_nll"])
    assert (run / "plots" / "training.png").is_file() and not (run / "plots" / "reliability.png").exists()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.filterwarnings("ignore:triviaqa offline is one released set")
def test_ensemble_trains_every_member_on_the_stacked_batch(tmp_path, tiny_llama_dir, shared_data) -> None:
    config = generative_config(tiny_llama_dir, shared_data, "ensemble", steps=2, **{"method.size": "2"})
    payload = Trainer(config, tmp_path / "run", progress=False).run_training()
    assert payload["metrics"]["num_samples"] == 2
    assert math.isfinite(payload["metrics"]["token_nll"])


@pytest.mark.filterwarnings("ignore:triviaqa offline is one released set")
def test_seq2seq_backbone_trains_on_triviaqa(tmp_path, tokenizer, shared_data) -> None:
    model_dir = tmp_path / "tiny-t5"
    tiny_t5(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    config = generative_config(model_dir, shared_data, "blob", steps=4)
    session = build_session(config)
    assert session.task.encoder_decoder
    payload = Trainer(config, tmp_path / "run", progress=False).run_training()
    assert payload["metrics"]["num_examples"] == 6
    assert math.isfinite(payload["metrics"]["token_nll"])


@pytest.mark.filterwarnings("ignore:truthfulqa_mc2 data is one released set")
def test_lettered_truthfulqa_mc2_reports_the_mass_on_true_letters(tmp_path, tiny_llama_dir, shared_data) -> None:
    config = generative_config(
        tiny_llama_dir,
        shared_data,
        "mle",
        steps=1,
        **{"data.dataset": "truthfulqa_mc2", "data.max_length": "512", "data.max_train_examples": "4"},
    )
    run = tmp_path / "run"
    payload = Trainer(config, run, progress=False).run_training()
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    from bayespeft.data.multiple_choice import load_mc_dataset

    examples = load_mc_dataset("truthfulqa_mc2", "validation", shared_data, limit=6, seed=config.train.seed)
    masses = [sum(p["probs"][i] for i in ex.true_labels) for p, ex in zip(predictions, examples, strict=True)]
    assert payload["metrics"]["mc2"] == pytest.approx(sum(masses) / len(masses), rel=1e-5)


def test_methods_on_class_probabilities_are_refused(tiny_llama_dir, shared_data) -> None:
    with pytest.raises(ConfigError, match=r"method.name: laplace works on class probabilities; triviaqa is an open"):
        build_session(
            generative_config(tiny_llama_dir, shared_data, "laplace", steps=0, **{"method.source_adapter": "unused"})
        )
