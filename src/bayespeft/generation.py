"""Generation under the posterior: S weight samples per prompt, each held fixed for its whole sequence.

A sequence is decoded under ONE weight draw, kept for every decoding step (``sampling(hold=True)``),
never re-drawn per step. The S draws of a prompt are generated together: the prompt rows are
repeated sample-major ([draw 0: all prompts, draw 1: all prompts, ...]) and decoded by one
``model.generate`` call with ``groups = S``, so stacked copy s holds draw s. Beam search expands
each row into contiguous beams, so the copies stay contiguous blocks. Held draw s depends only on
(seed, s), which makes that call equal to the reference loop of S calls (offset = s, groups = 1).

Decoding is greedy, beam search or sampling. Sampled decoding gives every sequence its own seeded
random stream (Gumbel-max over the warped scores, ``decoding_seed``), so its noise does not depend
on batching and is set apart from the weight seed: weight uncertainty and decoding noise can be
varied one at a time. The posterior mean (``posterior_mean``) and deterministic methods (mle, map)
have one weight setting, so S draws collapse to one sequence per prompt, unless decoding samples:
then S decoding samples under those weights. An ensemble's draws are its K members (as in
evaluation), whatever S is.

Every sequence comes with its log-likelihood under its own weight draw: the log-probabilities of
the generated tokens (untempered, untruncated) from generate's raw logits for greedy and sampled
decoding, recomputed by one forward pass under the same held draw for beam search (whose scores
are length-penalised). Works for causal LMs (left-padded prompts, prompt stripped) and for
encoder-decoder LMs (BART, T5) with adapters in the encoder and the decoder.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from torch import nn
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .config import check_seed, require
from .enums import DecodingStrategy
from .errors import ConfigError, DataError
from .methods import Method
from .methods.laplace import LaplaceLora


@dataclass
class GenerationConfig:
    """Decoding settings of posterior generation; errors name the fields as ``generation.<field>``."""

    strategy: str = DecodingStrategy.GREEDY.value
    max_new_tokens: int = 32
    n_samples: int = 10  # S: weight draws per prompt (decoding samples under fixed weights, see module doc)
    num_beams: int = 4  # beam search only
    temperature: float = 1.0  # sample only
    top_k: int = 0  # sample only; 0: no top-k cut
    top_p: float = 1.0  # sample only; 1: no nucleus cut
    seed: int = 0  # weight draws: draw s depends only on (seed, s)
    decoding_seed: int | None = None  # noise of sampled decoding; None: seed
    posterior_mean: bool = False  # decode under the posterior mean weights instead of S draws
    prompts_per_batch: int = 8  # prompts per generate call, each repeated once per draw: bounds memory

    def validate(self) -> None:
        self.strategy = DecodingStrategy.parse(self.strategy, "generation.strategy").value
        for name in ("max_new_tokens", "n_samples", "num_beams", "prompts_per_batch"):
            value = getattr(self, name)
            require(_is_int(value) and value >= 1, f"generation.{name}", f"must be an integer >= 1 (got {value!r})")
        require(
            self.strategy != DecodingStrategy.BEAM or self.num_beams >= 2,
            "generation.num_beams",
            f"must be >= 2 for beam search (got {self.num_beams})",
        )
        require(
            _is_number(self.temperature) and self.temperature > 0,
            "generation.temperature",
            f"must be > 0 (got {self.temperature!r})",
        )
        require(
            _is_int(self.top_k) and self.top_k >= 0, "generation.top_k", f"must be an integer >= 0 (got {self.top_k!r})"
        )
        require(
            _is_number(self.top_p) and 0 < self.top_p <= 1,
            "generation.top_p",
            f"must be in (0, 1] (got {self.top_p!r})",
        )
        require(_is_int(self.seed), "generation.seed", f"must be an integer (got {self.seed!r})")
        check_seed(self.seed, "generation.seed")
        require(
            self.decoding_seed is None or _is_int(self.decoding_seed),
            "generation.decoding_seed",
            f"must be an integer or null (got {self.decoding_seed!r})",
        )
        if self.decoding_seed is not None:
            check_seed(self.decoding_seed, "generation.decoding_seed")
        require(
            isinstance(self.posterior_mean, bool),
            "generation.posterior_mean",
            f"must be true or false (got {self.posterior_mean!r})",
        )

    @property
    def decoding(self) -> DecodingStrategy:
        return DecodingStrategy(self.strategy)


@dataclass
class GeneratedSequence:
    """Prompt ``prompt_index`` decoded under weight draw ``sample_index`` (a decoding sample under fixed weights)."""

    prompt_index: int
    sample_index: int
    text: str
    token_ids: list[int]  # the generated tokens, up to and including the first EOS
    token_log_probs: list[float]  # log p(token | prefix) under this sequence's weight draw, per token
    log_likelihood: float  # their sum


@dataclass(frozen=True)
class DrawPlan:
    """What one prompt gets: held posterior draws (``sample_weights``) or fixed weights, and how many sequences."""

    sample_weights: bool
    sequences: int


def draw_plan(method: Method, config: GenerationConfig) -> DrawPlan:
    """How many sequences a prompt gets, and under which weights.

    S held draws for a sampling method (its K members for an ensemble); one sequence for fixed
    weights (posterior mean, mle, map) unless decoding samples, then S decoding samples under them.
    """
    if method.stochastic and not config.posterior_mean:
        return DrawPlan(True, method.num_draws(config.n_samples))
    return DrawPlan(False, config.n_samples if config.decoding == DecodingStrategy.SAMPLE else 1)


def check_generative(method: Method) -> None:
    """Refuse methods that have no weight samples to decode under."""
    if isinstance(method, LaplaceLora):
        raise ConfigError(
            "method.name: laplace cannot generate: its predictive is a linearised (GLM) distribution over a "
            "task's class logits, not weight samples; generate with its mle/map source adapter or a sampling method"
        )


def generate_samples(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    method: Method,
    prompts: Sequence[str],
    config: GenerationConfig,
    prompt_keys: Sequence[int] | None = None,
) -> list[list[GeneratedSequence]]:
    """Sequences per prompt ([prompt][sample]), all draws of a prompt chunk decoded in ONE generate call.

    ``prompt_keys`` (default: the positions) are stable ids of the prompts, e.g. dataset indices:
    sampled decoding seeds each sequence's stream by (key, sample), so a prompt decodes alike
    whichever prompts share its call (shards, resumed runs).
    """
    return _generate(model, tokenizer, method, prompts, config, prompt_keys, stacked=True)


def generate_samples_loop(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    method: Method,
    prompts: Sequence[str],
    config: GenerationConfig,
    prompt_keys: Sequence[int] | None = None,
) -> list[list[GeneratedSequence]]:
    """The reference: one generate call per draw s (offset s, one group); same outputs as :func:`generate_samples`."""
    return _generate(model, tokenizer, method, prompts, config, prompt_keys, stacked=False)


class SeededSampling(LogitsProcessor):
    """Makes greedy decoding draw from softmax(scores): Gumbel-max with one seeded stream per sequence.

    Row ``r`` of the batch is the sequence ``rows[r]`` = (prompt key, sample); its noise comes from
    its own generator, so a sequence decodes alike whichever rows share its batch.
    """

    def __init__(self, seed: int, rows: Sequence[tuple[int, int]]) -> None:
        self.generators = [torch.Generator().manual_seed(_stream_seed(seed, *row)) for row in rows]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp_(min=torch.finfo(uniform.dtype).tiny)))
        return scores + gumbel.to(device=scores.device, dtype=scores.dtype)


def _generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    method: Method,
    prompts: Sequence[str],
    config: GenerationConfig,
    prompt_keys: Sequence[int] | None,
    stacked: bool,
) -> list[list[GeneratedSequence]]:
    """Decode every prompt's sequences, the draws stacked in one call per chunk or one call per draw."""
    config.validate()
    prompts = _check_prompts(prompts)
    keys = list(range(len(prompts))) if prompt_keys is None else _check_prompt_keys(prompt_keys, len(prompts))
    check_generative(method)
    plan = draw_plan(method, config)
    decoder = _Decoder(model, tokenizer, config)
    size = config.prompts_per_batch
    chunks = [range(start, min(start + size, len(prompts))) for start in range(0, len(prompts), size)]
    passes = [(0, plan.sequences)] if stacked else [(s, 1) for s in range(plan.sequences)]
    results: list[list[GeneratedSequence]] = [[] for _ in prompts]
    modes = [(module, module.training) for module in model.modules()]  # restored module by module afterwards
    model.eval()  # no training-mode dropout: a draw's only randomness is the held one
    try:
        with torch.no_grad():
            for first, copies in passes:
                with method.sampling(
                    enabled=plan.sample_weights,
                    seed=config.seed,
                    groups=copies if plan.sample_weights else 1,
                    offset=first if plan.sample_weights else 0,
                    hold=True,
                ):
                    for chunk in chunks:
                        rows = [(prompt, first + copy) for copy in range(copies) for prompt in chunk]  # sample-major
                        streams = [(keys[prompt], sample) for prompt, sample in rows]
                        for sequence in decoder.run([prompts[i] for i in chunk], rows, streams, copies):
                            results[sequence.prompt_index].append(sequence)
    finally:
        for module, training in modes:
            module.training = training
    return results


class _Decoder:
    """One generate call on a chunk of prompts repeated ``copies`` times, and the log-likelihoods."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: GenerationConfig) -> None:
        if tokenizer.pad_token_id is None:
            raise ConfigError(
                "tokenizer: it has no pad token to batch prompts with (bayespeft.backbones.load_tokenizer sets one)"
            )
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.device = next(model.parameters()).device
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        self.keeps_logits = "logits_to_keep" in inspect.signature(base.forward).parameters

    def run(
        self, prompts: list[str], rows: list[tuple[int, int]], streams: list[tuple[int, int]], copies: int
    ) -> list[GeneratedSequence]:
        """Decode ``rows`` (prompt position, sample); ``streams`` are their (prompt key, sample) noise streams."""
        config, beam = self.config, self.config.decoding == DecodingStrategy.BEAM
        side = "right" if self.encoder_decoder else "left"
        encoded = self.tokenizer(prompts, padding=True, return_tensors="pt", padding_side=side)
        input_ids = encoded["input_ids"].repeat(copies, 1).to(self.device)
        attention_mask = encoded["attention_mask"].repeat(copies, 1).to(self.device)
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=config.max_new_tokens,
            do_sample=False,
            num_beams=config.num_beams if beam else 1,
            logits_processor=self.processors(streams),
            pad_token_id=self.tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_logits=not beam,
        )
        sequences = output.sequences
        new_tokens = sequences[:, 1 if self.encoder_decoder else input_ids.shape[1] :]
        if beam:
            log_probs = self.recompute(input_ids, attention_mask, sequences, new_tokens)
        else:
            log_probs = torch.stack(
                [
                    step.float().log_softmax(-1).gather(1, new_tokens[:, t, None])[:, 0]
                    for t, step in enumerate(output.logits)
                ],
                dim=1,
            )
        lengths = _generated_lengths(new_tokens, self.eos_ids)
        out = []
        for row, (prompt, sample) in enumerate(rows):
            ids = new_tokens[row, : lengths[row]].tolist()
            token_log_probs = log_probs[row, : lengths[row]].tolist()
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            out.append(GeneratedSequence(prompt, sample, text, ids, token_log_probs, float(sum(token_log_probs))))
        return out

    def processors(self, streams: list[tuple[int, int]]) -> LogitsProcessorList:
        """Temperature, top-k, top-p and the seeded draw (one stream per row) for sampled decoding; none otherwise."""
        config = self.config
        if config.decoding != DecodingStrategy.SAMPLE:
            return LogitsProcessorList()
        processors: list[LogitsProcessor] = []
        if config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k > 0:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
        seed = config.seed if config.decoding_seed is None else config.decoding_seed
        processors.append(SeededSampling(seed, streams))
        return LogitsProcessorList(processors)

    def recompute(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        sequences: torch.Tensor,
        new_tokens: torch.Tensor,
    ) -> torch.Tensor:
        """log p of each new token from one forward pass over the whole sequence, under the held draw."""
        n_new = new_tokens.shape[1]
        if self.encoder_decoder:
            logits = self.model(
                input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=sequences[:, :-1]
            ).logits
        else:
            mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], n_new)], dim=1)
            positions = (mask.cumsum(-1) - 1).clamp_min(0)  # as generate numbers left-padded rows
            keep = {"logits_to_keep": n_new + 1} if self.keeps_logits else {}
            logits = self.model(input_ids=sequences, attention_mask=mask, position_ids=positions, **keep).logits
            logits = logits[:, -n_new - 1 : -1]
        return logits.float().log_softmax(-1).gather(-1, new_tokens[..., None])[..., 0]


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise DataError("prompts: expected a list of prompts, got a single string (wrap it in a list)")
    prompts = list(prompts)
    if not prompts:
        raise DataError("prompts: no prompts to generate from (empty list)")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"prompts[{index}]: must be a non-empty string (got {prompt!r})")
    return prompts


def _check_prompt_keys(prompt_keys: Sequence[int], count: int) -> list[int]:
    keys = list(prompt_keys)
    if len(keys) != count:
        raise DataError(f"prompt_keys: expected one key per prompt ({count}), got {len(keys)}")
    if not all(_is_int(key) for key in keys):
        raise DataError(f"prompt_keys: must be integers (got {keys!r})")
    if len(set(keys)) != count:
        raise DataError("prompt_keys: must be distinct (a key names one prompt's noise streams)")
    return keys


def eos_token_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token ids that end a sequence: the model's generation config, else the tokenizer's EOS."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def _generated_lengths(tokens: torch.Tensor, eos_ids: list[int]) -> list[int]:
    """Tokens up to and including the first EOS of each row (all of them when none ends)."""
    if not eos_ids:
        return [tokens.shape[1]] * tokens.shape[0]
    is_eos = torch.isin(tokens, torch.tensor(eos_ids, device=tokens.device))
    first = is_eos.int().argmax(dim=1) + 1
    return torch.where(is_eos.any(dim=1), first, tokens.shape[1]).tolist()


def _stream_seed(seed: int, prompt: int, sample: int) -> int:
    return zlib.crc32(f"{seed}/{prompt}/{sample}".encode())


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


__all__ = [
    "DrawPlan",
    "GeneratedSequence",
    "GenerationConfig",
    "SeededSampling",
    "check_generative",
    "draw_plan",
    "generate_samples",
    "generate_samples_loop",
]
