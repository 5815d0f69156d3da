"""Generation under the posterior: held draws over decoding steps, seeds, stacked vs looped draws, seq2seq."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer

from bayespeft.backbones import PEFT_TASK_TYPES, load_backbone, load_tokenizer, lora_targets, resolve_model
from bayespeft.config import LoraSettings, ModelConfig
from bayespeft.enums import ModelKind
from bayespeft.errors import ConfigError, DataError
from bayespeft.generation import GenerationConfig, draw_plan, generate_samples, generate_samples_loop
from bayespeft.methods import build_method

SAMPLING_METHODS = ["blob", "blob_laplace", "bbb", "mcdropout", "ensemble", "tfb", "noise"]
SEEDED_METHODS = [name for name in SAMPLING_METHODS if name != "ensemble"]  # an ensemble's draws are its members
OVERRIDES = {"noise": {"sigma": 0.1}, "mcdropout": {"dropout": 0.3}}  # draws that visibly move the outputs
LORA = LoraSettings(r=4, alpha=8)
PROMPTS = ["Question: What is the capital of France?\nAnswer:", "Name a colour.", "The quick brown fox"]


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def source_adapter(tiny_llama_dir, tmp_path_factory) -> str:
    """An mle adapter of the tiny Llama: tfb's and laplace's starting point."""
    method = build_method("mle")
    model, _ = adapted(method, tiny_llama_dir)
    return str(method.save_adapter(model, tmp_path_factory.mktemp("source") / "adapter"))


def adapted(method, model_dir: Path):
    """(peft model, tokenizer): the backbone in ``model_dir`` with the method's default-target adapters."""
    config = ModelConfig(name=str(model_dir), lora=LORA)
    model, tokenizer, kind = load_backbone(config)
    return method.inject(model, LORA, lora_targets(model, config), PEFT_TASK_TYPES[kind]), tokenizer


def randomized(name: str, model_dir: Path, source_adapter: str | None = None, seed: int = 1):
    """(method, model, tokenizer) with random nonzero LoRA means, so that weight draws change the outputs."""
    overrides = dict(OVERRIDES.get(name, {}))
    if name in ("tfb", "laplace"):
        overrides["source_adapter"] = source_adapter
    method = build_method(name, **overrides)
    model, tokenizer = adapted(method, model_dir)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if "lora_B" in key or "lora_A." in key:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return method, model, tokenizer


def flat(results) -> list:
    return [sequence for per_prompt in results for sequence in per_prompt]


def assert_same_sequences(results, reference) -> None:
    """Equal tokens and texts, log-likelihoods equal up to float noise."""
    assert [len(p) for p in results] == [len(p) for p in reference]
    for got, want in zip(flat(results), flat(reference), strict=True):
        assert (got.prompt_index, got.sample_index, got.token_ids, got.text) == (
            want.prompt_index,
            want.sample_index,
            want.token_ids,
            want.text,
        )
        torch.testing.assert_close(
            torch.tensor(got.token_log_probs), torch.tensor(want.token_log_probs), atol=1e-4, rtol=0
        )


def one_pass_log_probs(model, tokenizer, prompt: str, token_ids: list[int], encoder_decoder: bool) -> torch.Tensor:
    """log p of ``token_ids`` after ``prompt`` from ONE forward pass over the whole sequence (no cache)."""
    prompt_ids = tokenizer([prompt], return_tensors="pt")["input_ids"]
    new = torch.tensor([token_ids])
    with torch.no_grad():
        if encoder_decoder:
            start = torch.tensor([[model.config.decoder_start_token_id]])
            logits = model(input_ids=prompt_ids, decoder_input_ids=torch.cat([start, new[:, :-1]], dim=1)).logits
        else:
            logits = model(input_ids=torch.cat([prompt_ids, new], dim=1)).logits[:, prompt_ids.shape[1] - 1 : -1]
    return logits.log_softmax(-1).gather(-1, new[..., None])[0, :, 0]


def assert_held_over_steps(method, model, tokenizer, results, config, encoder_decoder: bool = False) -> None:
    """Each sequence's step-by-step log-probs (generate's logits) equal one full pass under draw s alone."""
    for sequence in flat(results):
        with method.sampling(seed=config.seed, offset=sequence.sample_index, hold=True):
            full = one_pass_log_probs(
                model, tokenizer, PROMPTS[sequence.prompt_index], sequence.token_ids, encoder_decoder
            )
        torch.testing.assert_close(torch.tensor(sequence.token_log_probs), full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", SAMPLING_METHODS)
def test_held_draw_is_one_weight_for_every_decoding_step(name, tiny_llama_dir, source_adapter):
    method, model, tokenizer = randomized(name, tiny_llama_dir, source_adapter)
    config = GenerationConfig(n_samples=3, max_new_tokens=6, seed=4)
    results = generate_samples(model, tokenizer, method, PROMPTS[:2], config)
    assert [len(p) for p in results] == [method.num_draws(3)] * 2
    assert_held_over_steps(method, model, tokenizer, results, config)
    first = [s.log_likelihood for s in results[0]]
    assert len(set(first)) == len(first)  # every draw is a different weight sample


def test_rescoring_under_another_draw_disagrees(tiny_llama_dir):
    """Control for the test above: its tolerance tells draws apart (draw 0's sequence rescored under draw 1)."""
    method, model, tokenizer = randomized("blob", tiny_llama_dir)
    config = GenerationConfig(n_samples=2, max_new_tokens=6, seed=4)
    sequence = generate_samples(model, tokenizer, method, PROMPTS[:1], config)[0][0]
    with method.sampling(seed=config.seed, offset=1, hold=True):
        other = one_pass_log_probs(model, tokenizer, PROMPTS[0], sequence.token_ids, False)
    assert not torch.allclose(torch.tensor(sequence.token_log_probs), other, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", SEEDED_METHODS)
def test_seed_reproduces_the_draws_and_a_new_seed_changes_them(name, tiny_llama_dir, source_adapter):
    method, model, tokenizer = randomized(name, tiny_llama_dir, source_adapter)
    config = GenerationConfig(n_samples=2, max_new_tokens=5, seed=7)
    first = generate_samples(model, tokenizer, method, PROMPTS[:2], config)
    again = generate_samples(model, tokenizer, method, PROMPTS[:2], config)
    other = generate_samples(
        model, tokenizer, method, PROMPTS[:2], GenerationConfig(n_samples=2, max_new_tokens=5, seed=8)
    )
    assert first == again
    assert all(a.log_likelihood != b.log_likelihood for a, b in zip(flat(first), flat(other), strict=True))


def test_ensemble_draws_are_its_members_whatever_s_and_the_seed(tiny_llama_dir):
    method, model, tokenizer = randomized("ensemble", tiny_llama_dir)
    results = generate_samples(model, tokenizer, method, PROMPTS[:1], GenerationConfig(n_samples=10, max_new_tokens=4))
    assert [s.sample_index for s in results[0]] == list(range(method.config.size))
    reseeded = generate_samples(
        model, tokenizer, method, PROMPTS[:1], GenerationConfig(n_samples=1, max_new_tokens=4, seed=9)
    )
    assert reseeded == results


@pytest.mark.parametrize(
    ("name", "strategy"),
    [
        ("blob", "greedy"),
        ("blob", "beam"),
        ("blob", "sample"),
        ("bbb", "beam"),
        ("mcdropout", "greedy"),
        ("mcdropout", "sample"),
        ("noise", "beam"),
        ("ensemble", "beam"),
        ("mle", "sample"),
    ],
)
def test_stacked_draws_equal_the_per_sample_loop(name, strategy, tiny_llama_dir):
    method, model, tokenizer = randomized(name, tiny_llama_dir)
    config = GenerationConfig(
        strategy=strategy, n_samples=3, max_new_tokens=5, num_beams=3, temperature=0.8, top_k=50, prompts_per_batch=2
    )
    stacked = generate_samples(model, tokenizer, method, PROMPTS, config)
    assert_same_sequences(stacked, generate_samples_loop(model, tokenizer, method, PROMPTS, config))


def test_beam_log_likelihood_is_the_unpenalised_sum_under_the_held_draw(tiny_llama_dir):
    method, model, tokenizer = randomized("blob", tiny_llama_dir)
    config = GenerationConfig(strategy="beam", num_beams=3, n_samples=2, max_new_tokens=5, seed=2)
    results = generate_samples(model, tokenizer, method, PROMPTS[:2], config)
    assert_held_over_steps(method, model, tokenizer, results, config)
    for sequence in flat(results):
        assert sequence.log_likelihood == pytest.approx(sum(sequence.token_log_probs))


def test_posterior_mean_collapses_to_one_deterministic_sequence(tiny_llama_dir):
    method, model, tokenizer = randomized("blob", tiny_llama_dir)
    mean = generate_samples(
        model, tokenizer, method, PROMPTS, GenerationConfig(n_samples=5, max_new_tokens=6, posterior_mean=True)
    )
    assert [len(p) for p in mean] == [1, 1, 1]
    reseeded = generate_samples(
        model, tokenizer, method, PROMPTS, GenerationConfig(n_samples=2, max_new_tokens=6, posterior_mean=True, seed=99)
    )
    assert reseeded == mean
    for sequence in flat(mean):
        with method.sampling(enabled=False):
            full = one_pass_log_probs(model, tokenizer, PROMPTS[sequence.prompt_index], sequence.token_ids, False)
        torch.testing.assert_close(torch.tensor(sequence.token_log_probs), full, atol=1e-4, rtol=0)


def test_fixed_weights_with_sampled_decoding_give_s_seeded_decoding_samples(tiny_llama_dir):
    method, model, tokenizer = randomized("mle", tiny_llama_dir)
    greedy = generate_samples(model, tokenizer, method, PROMPTS[:1], GenerationConfig(n_samples=4, max_new_tokens=4))
    assert len(greedy[0]) == 1
    config = GenerationConfig(strategy="sample", n_samples=4, max_new_tokens=6, decoding_seed=3)
    samples = generate_samples(model, tokenizer, method, PROMPTS[:1], config)
    assert len({tuple(s.token_ids) for s in samples[0]}) == 4
    assert generate_samples(model, tokenizer, method, PROMPTS[:1], config) == samples
    config.decoding_seed = 4
    assert generate_samples(model, tokenizer, method, PROMPTS[:1], config) != samples


def test_weight_noise_and_decoding_noise_are_seeded_apart(tiny_llama_dir):
    """Same decoding seed, new weight seed: the draws move; same weight seed, new decoding seed: the tokens move."""
    method, model, tokenizer = randomized("blob", tiny_llama_dir)

    def run(seed: int, decoding_seed: int):
        config = GenerationConfig(
            strategy="sample", n_samples=3, max_new_tokens=6, seed=seed, decoding_seed=decoding_seed
        )
        return flat(generate_samples(model, tokenizer, method, PROMPTS[:1], config))

    base, new_weights, new_decoding = run(1, 5), run(2, 5), run(1, 6)
    assert all(a.token_log_probs != b.token_log_probs for a, b in zip(base, new_weights, strict=True))
    assert all(a.token_ids != b.token_ids for a, b in zip(base, new_decoding, strict=True))


def test_prompt_keys_make_sampled_decoding_independent_of_the_batch(tiny_llama_dir):
    """A prompt decoded alone under its key (its dataset index) equals the same prompt decoded within a batch."""
    method, model, tokenizer = randomized("blob", tiny_llama_dir)
    config = GenerationConfig(strategy="sample", n_samples=3, max_new_tokens=6, prompts_per_batch=3)
    batch = generate_samples(model, tokenizer, method, PROMPTS, config, prompt_keys=[10, 11, 12])
    alone = generate_samples(model, tokenizer, method, PROMPTS[2:], config, prompt_keys=[12])
    assert [(s.token_ids, s.text) for s in alone[0]] == [(s.token_ids, s.text) for s in batch[2]]
    torch.testing.assert_close(
        torch.tensor([s.log_likelihood for s in alone[0]]),
        torch.tensor([s.log_likelihood for s in batch[2]]),
        atol=1e-4,
        rtol=0,
    )
    by_position = generate_samples(model, tokenizer, method, PROMPTS[2:], config)  # key 0: another noise stream
    assert [s.token_ids for s in by_position[0]] != [s.token_ids for s in batch[2]]
    with pytest.raises(DataError, match=r"^prompt_keys: expected one key per prompt"):
        generate_samples(model, tokenizer, method, PROMPTS, config, prompt_keys=[1, 2])
    with pytest.raises(DataError, match=r"^prompt_keys: must be distinct"):
        generate_samples(model, tokenizer, method, PROMPTS, config, prompt_keys=[1, 1, 2])


def test_draw_plan_per_method_and_strategy():
    blob, mle, ensemble = build_method("blob"), build_method("mle"), build_method("ensemble", size=4)
    plans = {
        "blob": draw_plan(blob, GenerationConfig(n_samples=6)),
        "blob mean": draw_plan(blob, GenerationConfig(n_samples=6, posterior_mean=True)),
        "blob mean sample": draw_plan(blob, GenerationConfig(n_samples=6, posterior_mean=True, strategy="sample")),
        "mle beam": draw_plan(mle, GenerationConfig(n_samples=6, strategy="beam")),
        "ensemble": draw_plan(ensemble, GenerationConfig(n_samples=6)),
    }
    assert {k: (p.sample_weights, p.sequences) for k, p in plans.items()} == {
        "blob": (True, 6),
        "blob mean": (False, 1),
        "blob mean sample": (False, 6),
        "mle beam": (False, 1),
        "ensemble": (True, 4),
    }


@pytest.mark.parametrize("arch", ["bart", "t5"])
def test_seq2seq_adapters_in_encoder_and_decoder_and_held_generation(arch, request):
    model_dir = request.getfixturevalue(f"{arch}_dir")
    assert resolve_model(ModelConfig(name=str(model_dir)))[1] == ModelKind.SEQ2SEQ
    method, model, tokenizer = randomized("blob", model_dir)
    assert tokenizer.padding_side == "right"
    lora = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    cross = "encoder_attn" if arch == "bart" else "EncDecAttention"
    assert any(".encoder." in n for n in lora) and any(".decoder." in n and cross not in n for n in lora)
    assert any(cross in n for n in lora)
    for strategy in ("greedy", "beam"):
        config = GenerationConfig(strategy=strategy, n_samples=3, num_beams=2, max_new_tokens=5, prompts_per_batch=2)
        stacked = generate_samples(model, tokenizer, method, PROMPTS, config)
        assert_same_sequences(stacked, generate_samples_loop(model, tokenizer, method, PROMPTS, config))
        assert_held_over_steps(method, model, tokenizer, stacked, config, encoder_decoder=True)
        assert len({s.log_likelihood for s in stacked[0]}) == 3


def test_seq2seq_kind_can_be_set_and_causal_lms_keep_theirs(bart_dir, tiny_llama_dir):
    explicit = ModelConfig(name=str(bart_dir), kind="seq2seq")
    explicit.validate()
    assert resolve_model(explicit)[1] == ModelKind.SEQ2SEQ
    assert resolve_model(ModelConfig(name=str(tiny_llama_dir)))[1] == ModelKind.CAUSAL_LM
    assert load_tokenizer(str(tiny_llama_dir), ModelKind.CAUSAL_LM).padding_side == "left"


@pytest.fixture(scope="module")
def blob_model(tiny_llama_dir):
    return randomized("blob", tiny_llama_dir)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"n_samples": 0}, "generation.n_samples"),
        ({"max_new_tokens": 0}, "generation.max_new_tokens"),
        ({"strategy": "nucleus"}, "generation.strategy"),
        ({"strategy": "beam", "num_beams": 1}, "generation.num_beams"),
        ({"temperature": 0.0}, "generation.temperature"),
        ({"top_p": 0.0}, "generation.top_p"),
        ({"top_k": -1}, "generation.top_k"),
        ({"prompts_per_batch": 0}, "generation.prompts_per_batch"),
        ({"decoding_seed": 1.5}, "generation.decoding_seed"),
    ],
)
def test_bad_settings_name_the_field(overrides, field, blob_model):
    method, model, tokenizer = blob_model
    with pytest.raises(ConfigError, match=f"^{re.escape(field)}:? "):
        generate_samples(model, tokenizer, method, PROMPTS, GenerationConfig(**overrides))


@pytest.mark.parametrize(
    ("prompts", "field"),
    [([], r"prompts: no prompts"), (["ok", ""], r"prompts\[1\]: "), (["  "], r"prompts\[0\]: "), ("a", r"prompts: ")],
)
def test_bad_prompts_name_the_field(prompts, field, blob_model):
    method, model, tokenizer = blob_model
    with pytest.raises(DataError, match=f"^{field}"):
        generate_samples_loop(model, tokenizer, method, prompts, GenerationConfig())


def test_laplace_is_refused(tiny_llama_dir, source_adapter):
    method, model, tokenizer = randomized("laplace", tiny_llama_dir, source_adapter)
    with pytest.raises(ConfigError, match=r"^method\.name: laplace cannot generate"):
        generate_samples(model, tokenizer, method, PROMPTS, GenerationConfig())
