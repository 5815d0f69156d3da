"""Shared-prefix cloze scoring: each question packed as its stem once, then every choice row's remainder."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bayespeft.config import LoraSettings, load_config
from bayespeft.data.multiple_choice import MCExample
from bayespeft.methods import build_method
from bayespeft.methods.laplace import jacobian_pass, lora_linears
from bayespeft.tasks.multiple_choice import ClozeMultipleChoiceTask, shared_prefix_length
from bayespeft.training import build_session

EXAMPLES = [
    MCExample(
        "q0",
        "unused",
        ("A", "B", "C", "D"),
        1,
        "toy",
        stem="Question: which colour is the sky on a clear day?\nAnswer:",
        choices=("blue", "a green leaf", "a red leaf", "grey"),  # two choices share their first tokens
    ),
    MCExample(
        "q1", "unused", ("A", "B"), 0, "toy", stem="Question: two plus two?\nAnswer:", choices=("four", "five hundred")
    ),
    MCExample(  # WinoGrande: the blank filled in each context, the continuation scored
        "w0",
        "unused",
        ("A", "B"),
        1,
        "toy",
        cloze_contexts=(
            "The trophy does not fit in the suitcase because the trophy",
            "The trophy does not fit in the suitcase because the suitcase",
        ),
        cloze_continuation=" is too small.",
    ),
    MCExample(  # the blank opens the sentence: the rows share no prefix at all
        "w1", "unused", ("A", "B"), 0, "toy", cloze_contexts=("Sarah", "Maria"), cloze_continuation=" was late again."
    ),
]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    return AutoTokenizer.from_pretrained(tiny_llama_dir, padding_side="left")


@pytest.fixture(scope="module")
def batch(tokenizer):
    task = ClozeMultipleChoiceTask(tokenizer, max_length=64)
    return task, task.collate(task.encode(EXAMPLES))


def bayesian_model(tiny_llama_dir, name: str):
    """The tiny Llama with ``name``'s adapters, B factors non-zero so the adapters change the logits."""
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, torch_dtype=torch.float32)
    method = build_method(name)
    model = method.inject(model, LoraSettings(r=4, alpha=8, dropout=0.0), TARGETS, "CAUSAL_LM")
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name and param.requires_grad:
                param.normal_(0, 0.5)
    return model, method


def test_the_shared_prefix_stops_before_each_rows_first_prediction(batch):
    task, _ = batch
    encoded = task.encode(EXAMPLES)
    stem = task.tokenizer(EXAMPLES[1].stem)["input_ids"]
    assert shared_prefix_length(encoded[1].rows, encoded[1].choice_lengths) == len(stem) - 1
    first = encoded[0]  # " a green leaf" and " a red leaf" share " a": still cut before the stem's last token
    assert (
        shared_prefix_length(first.rows, first.choice_lengths) == len(task.tokenizer(EXAMPLES[0].stem)["input_ids"]) - 1
    )
    common = encoded[2].rows[0][: shared_prefix_length(encoded[2].rows, encoded[2].choice_lengths)]
    assert common and all(row[: len(common)] == common for row in encoded[2].rows)
    assert shared_prefix_length(encoded[3].rows, encoded[3].choice_lengths) == 0


@pytest.mark.parametrize("repeats", [1, 3])
def test_shared_prefix_logits_equal_the_per_row_logits_of_the_plain_model(tiny_llama_dir, batch, repeats):
    task, collated = batch
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        per_row = task.per_row_logits(model, collated, repeats)
        shared = task.shared_prefix_logits(model, collated, repeats)
    assert shared.shape == (repeats * len(EXAMPLES), 4)
    assert torch.isinf(shared).equal(torch.isinf(per_row))
    torch.testing.assert_close(shared, per_row, rtol=0, atol=1e-4)


def test_a_packed_question_holds_its_stem_once_then_each_rows_own_tokens(batch):
    task, collated = batch
    encoded = task.encode(EXAMPLES)
    for q, example in enumerate(encoded):
        cut = shared_prefix_length(example.rows, example.choice_lengths)
        expected = example.rows[0][:cut] + [token for row in example.rows for token in row[cut:]]
        segments = collated["packed_segments"][q]
        assert collated["packed_ids"][q, : len(expected)].tolist() == expected
        assert (segments[len(expected) :] == -1).all()  # the rest is padding
        assert (segments[:cut] == 0).all()
        ends = collated["packed_ends"][q]
        assert ends[: example.num_choices].tolist() == [
            cut + sum(len(row) - cut for row in example.rows[: k + 1]) - 1 for k in range(example.num_choices)
        ]
        assert (ends[example.num_choices :] == -1).all()
        # every row's remainder continues the positions of its own full row
        last = int(ends[0])
        assert collated["packed_positions"][q, last] == len(example.rows[0]) - 1
    assert collated["packed_ids"].numel() < collated["input_ids"].numel()


def test_eager_attention_gets_an_additive_mask_with_the_same_logits(tiny_llama_dir, batch):
    task, collated = batch
    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, torch_dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            task.shared_prefix_logits(model, collated, 2), task.per_row_logits(model, collated, 2), rtol=0, atol=1e-4
        )


def test_a_batch_without_any_shared_prefix_scores_every_row_from_its_start(tiny_llama_dir, tokenizer):
    task = ClozeMultipleChoiceTask(tokenizer, max_length=64)
    collated = task.collate(task.encode(EXAMPLES[3:]))
    assert not (collated["packed_segments"] == 0).any()  # no position belongs to a shared prefix
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            task.shared_prefix_logits(model, collated, 2), task.per_row_logits(model, collated, 2), rtol=0, atol=1e-4
        )


@pytest.mark.parametrize("name", ["blob", "blob_laplace", "bbb", "noise", "inducing", "mcdropout", "ensemble"])
def test_shared_prefix_logits_equal_per_row_logits_for_the_mean_and_held_draws(tiny_llama_dir, batch, name):
    task, collated = batch
    model, method = bayesian_model(tiny_llama_dir, name)
    model.eval()
    with torch.no_grad():
        with method.sampling(enabled=False):
            mean = task.shared_prefix_logits(model, collated), task.per_row_logits(model, collated)
        with method.sampling(enabled=True, seed=5, groups=2, hold=True):
            held = task.shared_prefix_logits(model, collated, 2), task.per_row_logits(model, collated, 2)
    torch.testing.assert_close(*mean, rtol=0, atol=1e-4)
    torch.testing.assert_close(*held, rtol=0, atol=1e-4)
    if method.stochastic and name != "ensemble":
        assert not torch.allclose(held[0][:4], held[0][4:])  # the two stacked draws differ


@pytest.mark.parametrize("sampling", [False, True])
def test_gradients_of_the_packed_pass_equal_the_per_row_gradients(tiny_llama_dir, batch, sampling):
    task, collated = batch
    model, method = bayesian_model(tiny_llama_dir, "blob")
    model.train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = []
    for scorer in (task.shared_prefix_logits, task.per_row_logits):
        model.zero_grad(set_to_none=True)
        with method.sampling(enabled=sampling, seed=3, groups=2, hold=True):
            logits = scorer(model, collated, 2)
        task.loss(logits, collated["labels"].repeat(2)).backward()
        grads.append({n: p.grad.clone() for n, p in trainable.items() if p.grad is not None})
    shared, per_row = grads
    assert shared.keys() == per_row.keys()
    stem_layers = [n for n in trainable if "lora_A." in n and "layers.0." in n]
    assert stem_layers and all(shared[n].abs().sum() > 0 for n in stem_layers)
    assert any("rho" in n for n in shared) == sampling  # the posterior std learns only from sampled passes
    for n in shared:
        torch.testing.assert_close(shared[n], per_row[n], rtol=1e-3, atol=1e-5, msg=n)


def test_one_sampling_block_is_one_flipout_draw_for_stem_and_choices(tiny_llama_dir, batch):
    """Without hold, the stem and its continuations share the block's noise E (Flipout signs stay per token)."""
    task, collated = batch
    model, method = bayesian_model(tiny_llama_dir, "blob")
    layer = next(m for m in model.modules() if hasattr(m, "lora_A_rho"))
    seen = []
    variant = layer.lora_variant["default"]
    original = variant.noise

    def record(shape, like):
        seen.append(original(shape, like))
        return seen[-1]

    variant.noise = record
    try:
        with torch.no_grad(), method.sampling(enabled=True, groups=2):
            task.shared_prefix_logits(model, collated, 2)
            draws_in_block = len(seen)
        assert method.sampling_state.draws is None  # the block's draws are dropped with it
        with torch.no_grad():
            model(input_ids=collated["input_ids"][:2])
            model(input_ids=collated["input_ids"][:2])
    finally:
        del variant.noise
    layers = sum(1 for m in model.modules() if hasattr(m, "lora_A_rho"))
    assert draws_in_block == layers  # one draw per layer for stem and choices
    assert len(seen) == 3 * layers  # outside a block every pass draws anew


def test_laplace_jacobians_are_those_of_the_per_row_pass(tiny_llama_dir, tokenizer):
    """The GLM's per-example Jacobians come from the per-row pass whichever cloze pass the task uses."""
    model, _ = bayesian_model(tiny_llama_dir, "mle")
    results = []
    for prefix_cache in (True, False):
        task = ClozeMultipleChoiceTask(tokenizer, max_length=64, prefix_cache=prefix_cache)
        collated = task.collate(task.encode(EXAMPLES))
        results.append(jacobian_pass(model, task, collated, lora_linears(model)))
    (logits, jac), (expected_logits, expected_jac) = results
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
    assert jac.keys() == expected_jac.keys() and jac
    for name, layer in jac.items():
        torch.testing.assert_close(layer.weight_jac, expected_jac[name].weight_jac, rtol=0, atol=0)


def test_laplace_jacobians_from_one_backward_pass_are_each_logits_gradient(tiny_llama_dir, tokenizer):
    """Cloze rows feed one class each, so one backward pass serves every class: each example's Jacobian of
    each class logit must still be that logit's own gradient, and a choice the question lacks has none."""
    model, _ = bayesian_model(tiny_llama_dir, "mle")
    task = ClozeMultipleChoiceTask(tokenizer, max_length=64, prefix_cache=False)
    collated = task.collate(task.encode(EXAMPLES))
    modules = lora_linears(model)
    _, jac = jacobian_pass(model, task, collated, modules)
    logits = task.per_row_logits(model, collated)
    weights = [module.weight for module in modules.values()]
    for example, present in enumerate(collated["num_choices"].tolist()):
        for choice in range(task.num_classes):
            if choice >= present:
                assert all(not layer.weight_jac[example, choice].any() for layer in jac.values())
                continue
            grads = torch.autograd.grad(logits[example, choice], weights, retain_graph=True, allow_unused=True)
            for (name, module), grad in zip(modules.items(), grads, strict=True):
                expected = torch.zeros_like(module.weight) if grad is None else grad
                torch.testing.assert_close(
                    jac[name].weight_jac[example, choice].float(), expected, atol=1e-5, rtol=1e-4
                )


@pytest.mark.parametrize("cached", [True, False])
def test_the_run_config_chooses_the_cloze_pass(tiny_llama_dir, cached):
    overrides = [f"model.name={tiny_llama_dir}", "method.name=blob", "data.mc_scoring=cloze"]
    config = load_config(None, [*overrides, f"data.cloze_prefix_cache={str(cached).lower()}"])
    task = build_session(config).task
    assert isinstance(task, ClozeMultipleChoiceTask) and task.prefix_cache is cached
    assert load_config(None, overrides).data.cloze_prefix_cache  # on by default
