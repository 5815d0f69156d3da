"""Cloze multiple-choice scoring: class logit = mean log-prob of the choice tokens after the stem."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bayespeft.config import DataConfig
from bayespeft.data.multiple_choice import MCExample
from bayespeft.errors import ConfigError, DataError
from bayespeft.tasks.multiple_choice import ClozeMultipleChoiceTask

EXAMPLES = [
    MCExample(
        "q0",
        "unused",
        ("A", "B", "C"),
        1,
        "toy",
        stem="Question: sky colour?\nAnswer:",
        choices=("blue", "a green leaf", "red"),
    ),
    MCExample(
        "q1", "unused", ("A", "B"), 0, "toy", stem="Question: two plus two?\nAnswer:", choices=("four", "five hundred")
    ),
]


@pytest.fixture(scope="module")
def model_and_task(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    return model, tokenizer, ClozeMultipleChoiceTask(tokenizer, max_length=64)


def mean_choice_log_prob(model, tokenizer, stem: str, choice: str) -> float:
    """The hand computation: one unpadded forward over stem + choice."""
    stem_ids = tokenizer(stem, add_special_tokens=True)["input_ids"]
    choice_ids = tokenizer(f" {choice}", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([stem_ids + choice_ids])
    with torch.no_grad():
        log_probs = model(input_ids=ids).logits[0].float().log_softmax(-1)
    start = len(stem_ids)
    return sum(float(log_probs[start + i - 1, t]) for i, t in enumerate(choice_ids)) / len(choice_ids)


def test_class_logits_are_mean_choice_log_probs_with_absent_choices_at_minus_infinity(model_and_task):
    model, tokenizer, task = model_and_task
    batch = task.collate(task.encode(EXAMPLES))
    with torch.no_grad():
        logits = task.class_logits(model, batch)
    assert logits.shape == (2, 3)
    for q, ex in enumerate(EXAMPLES):
        for k, choice in enumerate(ex.choices):
            assert logits[q, k].item() == pytest.approx(
                mean_choice_log_prob(model, tokenizer, ex.stem, choice), abs=1e-4
            )
    assert logits[1, 2].item() == float("-inf")
    loss = task.loss(logits, batch["labels"])
    assert torch.isfinite(loss)


def test_stacked_repeats_give_the_same_logits_per_copy(model_and_task):
    model, _, task = model_and_task
    batch = task.collate(task.encode(EXAMPLES))
    with torch.no_grad():
        single = task.class_logits(model, batch)
        stacked = task.class_logits(model, batch, repeats=3)
    for copy in range(3):
        torch.testing.assert_close(stacked[2 * copy : 2 * copy + 2], single, rtol=1e-4, atol=1e-4)


def test_examples_without_choice_texts_and_unknown_scoring_are_refused(model_and_task):
    _, _, task = model_and_task
    with pytest.raises(DataError, match="q9: no choice texts"):
        task.encode([MCExample("q9", "p", ("A", "B"), 0, "toy")])
    with pytest.raises(ConfigError, match=r"data\.mc_scoring"):
        DataConfig(mc_scoring="logits").validate()


def test_winogrande_cloze_scores_the_continuation_after_each_filled_blank(model_and_task, shared_data):
    """The standard partial scoring: context = sentence up to the blank filled with the option; the logit
    is the mean log-prob of the rest of the sentence after it (the same tokens for both options)."""
    from bayespeft.data.multiple_choice import load_mc_dataset

    model, tokenizer, task = model_and_task
    (example,) = load_mc_dataset("winogrande_s", "validation", shared_data, limit=1)
    assert example.cloze_contexts == (
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    )
    assert example.cloze_continuation == " always got the easier cases."
    encoded = task.encode([example])
    batch = task.collate(encoded)
    with torch.no_grad():
        logits = task.class_logits(model, batch)
    continuation = tokenizer(example.cloze_continuation, add_special_tokens=False)["input_ids"]
    assert encoded[0].choice_lengths == [len(continuation)] * 2
    for k, context in enumerate(example.cloze_contexts):
        expected = mean_choice_log_prob(model, tokenizer, context, example.cloze_continuation[1:])
        assert logits[0, k].item() == pytest.approx(expected, abs=1e-4)
