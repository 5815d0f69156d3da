"""Uncertainty of a generative model from several sampled answers to one question.

For each question the model (or each posterior weight sample) generates ``S`` answers, each
with its sequence log-likelihood ``log p(answer | question)`` (the sum of token log-probs).
Every score below is oriented so that **higher means more uncertain** (all in nats where an
entropy):

``predictive_entropy``
    Monte-Carlo estimate of the sequence entropy, ``-1/S sum_s log p(a_s)``.
``length_normalised_entropy``
    the same with each log-likelihood divided by its number of tokens (Malinin & Gales,
    2021), so long answers are not uncertain merely for being long; needs ``num_tokens``.
``semantic_entropy``
    entropy over *meaning classes* (Kuhn et al., 2023; Farquhar et al., 2024). Answers are
    clustered by an :class:`EquivalenceJudge`; a class's log-probability is the logsumexp of
    its members' log-likelihoods, normalised over the classes, and the score is
    ``-sum_c p_c log p_c``. Repeated answers count once per sample (they were sampled twice).
``discrete_semantic_entropy``
    the same entropy with ``p_c`` the fraction of the ``S`` answers in class ``c``; needs no
    likelihoods (works for black-box generators).
``lexical_dissimilarity``
    ``1 - mean pairwise ROUGE-L F1`` of the ``S`` answers (Lin et al., 2023): 0 when all
    answers are the same words, 1 when no two share a word in order.
``log_likelihood_variance``
    population variance (divisor ``S``) of the ``S`` log-likelihoods. When each answer comes
    from its own posterior weight sample, this is the spread of the model's confidence across
    the posterior.
``num_distinct_answers``
    number of different answers after SQuAD normalisation (1 to ``S``).
``num_semantic_sets``
    number of meaning classes (1 to ``S``).

Meaning classes (:func:`cluster_answers`). Answers are visited in order; each joins the class
of the first earlier class representative it is equivalent to, else starts a new class (the
greedy algorithm of Kuhn et al.). Two equivalence judges share one small protocol:

:class:`EntailmentEquivalence`
    bidirectional entailment with an NLI model: equivalent when each answer entails the other
    with probability >= ``threshold``, each prefixed by the question when one is given;
:class:`EmbeddingEquivalence`
    cosine similarity >= ``threshold`` of mean-pooled, L2-normalised sentence embeddings (the
    offline all-MiniLM-L6-v2 by default), for when no NLI model is available. It is a coarser
    proxy: with MiniLM "1969" vs "1970" has cosine about 0.77 while "Neil Armstrong" vs
    "Armstrong" has about 0.81, so the default threshold 0.8 separates those but numbers and
    dates are its weak point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Protocol

import torch
from torch import Tensor

from .judges import EntailmentScorer
from .text import cached_rouge_scorer, normalize_answer

__all__ = [
    "GENERATIVE_UNCERTAINTY_SCORES",
    "AnswerSamples",
    "EmbeddingEquivalence",
    "EntailmentEquivalence",
    "EquivalenceJudge",
    "cluster_answers",
    "count_distinct_answers",
    "discrete_semantic_entropy",
    "generative_uncertainty",
    "lexical_similarity",
    "log_likelihood_variance",
    "semantic_entropy",
    "sequence_entropy",
]

_DTYPE = torch.float64
# A sequence log-likelihood above this is not a log-probability (probabilities were passed?).
_MAX_LOG_LIKELIHOOD = 1e-6

#: Score names of :func:`generative_uncertainty`, in order (``length_normalised_entropy`` only with token counts).
GENERATIVE_UNCERTAINTY_SCORES = (
    "predictive_entropy",
    "length_normalised_entropy",
    "semantic_entropy",
    "discrete_semantic_entropy",
    "lexical_dissimilarity",
    "log_likelihood_variance",
    "num_distinct_answers",
    "num_semantic_sets",
)


class EquivalenceJudge(Protocol):
    """Decides whether pairs of answers to one question mean the same thing."""

    def equivalent(self, pairs: Sequence[tuple[str, str]], question: str | None = None) -> list[bool]:
        """One boolean per pair (symmetric: the order inside a pair must not matter)."""
        ...


class EntailmentEquivalence:
    """Equivalent when each answer entails the other with probability >= ``threshold`` (one batched NLI call)."""

    def __init__(self, scorer: EntailmentScorer, threshold: float = 0.5) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        self.scorer = scorer
        self.threshold = float(threshold)

    def equivalent(self, pairs: Sequence[tuple[str, str]], question: str | None = None) -> list[bool]:
        """Bidirectional entailment of each pair, in the context of ``question`` when given."""
        if not pairs:
            return []
        first = [a if question is None else f"{question} {a}" for a, _ in pairs]
        second = [b if question is None else f"{question} {b}" for _, b in pairs]
        probs = self.scorer.entailment_probs(first + second, second + first)
        n = len(pairs)
        return (torch.minimum(probs[:n], probs[n:]) >= self.threshold).tolist()


class EmbeddingEquivalence:
    """Equivalent when the cosine similarity of mean-pooled sentence embeddings is >= ``threshold``.

    ``model`` is an encoder (``AutoModel``) and ``tokenizer`` its tokenizer; the question is
    ignored (embedding it with both answers would pull every pair together).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        threshold: float = 0.8,
        batch_size: int = 64,
        max_length: int = 256,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.threshold = float(threshold)
        self.batch_size = batch_size
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls, name: str = "minilm-l6", threshold: float = 0.8, device: str | None = None
    ) -> EmbeddingEquivalence:
        """Load an offline short name (default: all-MiniLM-L6-v2), local folder or hub id as the encoder."""
        from transformers import AutoModel, AutoTokenizer

        from ..backbones import resolve_model
        from ..config import ModelConfig

        path, _ = resolve_model(ModelConfig(name=name))
        model = AutoModel.from_pretrained(path)
        if device is not None:
            model.to(device)
        return cls(model, AutoTokenizer.from_pretrained(path), threshold=threshold)

    def embed(self, texts: Sequence[str]) -> Tensor:
        """Mean-pooled (over non-padding tokens), L2-normalised embeddings, float64 ``[N, H]`` on the CPU."""
        device = next(self.model.parameters()).device
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                encoded = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(device)
                hidden = self.model(**encoded).last_hidden_state.to(_DTYPE)
                mask = encoded["attention_mask"].unsqueeze(-1).to(_DTYPE)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(chunks)

    def equivalent(self, pairs: Sequence[tuple[str, str]], question: str | None = None) -> list[bool]:
        """Cosine similarity >= threshold for each pair; each distinct text is embedded once."""
        if not pairs:
            return []
        texts = list(dict.fromkeys(t for pair in pairs for t in pair))
        index = {t: i for i, t in enumerate(texts)}
        embeddings = self.embed(texts)
        first = embeddings[[index[a] for a, _ in pairs]]
        second = embeddings[[index[b] for _, b in pairs]]
        return ((first * second).sum(dim=-1) >= self.threshold).tolist()


def cluster_answers(answers: Sequence[str], judge: EquivalenceJudge, question: str | None = None) -> list[int]:
    """Meaning class of each answer, numbered 0, 1, ... in order of first appearance.

    Identical strings (after stripping whitespace) are always in one class without asking the
    judge; the judge is called once, on every pair of distinct strings.
    """
    if len(answers) == 0:
        raise ValueError("answers is empty")
    distinct = list(dict.fromkeys(a.strip() for a in answers))
    pairs = list(combinations(distinct, 2))
    verdicts = judge.equivalent(pairs, question)
    if len(verdicts) != len(pairs):
        raise ValueError(f"the judge returned {len(verdicts)} verdicts for {len(pairs)} pairs")
    same = dict(zip(pairs, verdicts, strict=True))
    representatives: list[str] = []  # first member of each class, in class order
    class_of: dict[str, int] = {}
    for text in distinct:
        for class_id, first in enumerate(representatives):
            if same[(first, text)]:
                class_of[text] = class_id
                break
        else:
            class_of[text] = len(representatives)
            representatives.append(text)
    return [class_of[a.strip()] for a in answers]


def _log_likelihoods(values: Tensor | Sequence[float]) -> Tensor:
    if isinstance(values, Tensor):
        t = values.detach().to(device="cpu", dtype=_DTYPE)
    else:
        t = torch.as_tensor(list(values), dtype=_DTYPE)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"log_likelihoods must be a non-empty 1-D sequence, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("log_likelihoods contains NaN or infinite values")
    if (t > _MAX_LOG_LIKELIHOOD).any():
        raise ValueError("log_likelihoods must be <= 0 (log-probabilities of sequences, not probabilities)")
    return t


def _classes(classes: Sequence[int], n: int) -> Tensor:
    c = torch.as_tensor(list(classes), dtype=torch.long)
    if c.dim() != 1 or c.numel() != n or n == 0:
        raise ValueError(f"classes must give one class id per answer ({n}), got {c.numel()}")
    if (c < 0).any():
        raise ValueError("class ids must be >= 0")
    return c


def _entropy_of_log_probs(log_probs: Tensor) -> float:
    return max(0.0, -(log_probs.exp() * log_probs).sum().item())


def semantic_entropy(log_likelihoods: Tensor | Sequence[float], classes: Sequence[int]) -> float:
    """Likelihood-weighted semantic entropy: classes weighted by the summed probability of their members."""
    ll = _log_likelihoods(log_likelihoods)
    c = _classes(classes, ll.numel())
    class_ll = torch.stack([ll[c == k].logsumexp(dim=0) for k in c.unique()])
    return _entropy_of_log_probs(class_ll - class_ll.logsumexp(dim=0))


def discrete_semantic_entropy(classes: Sequence[int]) -> float:
    """Entropy of the class frequencies of the sampled answers (no likelihoods needed)."""
    c = _classes(classes, len(classes))
    counts = torch.bincount(c).to(_DTYPE)
    counts = counts[counts > 0]
    return _entropy_of_log_probs(counts.log() - math.log(c.numel()))


def _per_token(log_likelihoods: Tensor, num_tokens: Sequence[int]) -> Tensor:
    """Log-likelihoods divided by their answers' token counts."""
    lengths = torch.as_tensor(list(num_tokens), dtype=_DTYPE)
    if lengths.shape != log_likelihoods.shape or (lengths < 1).any():
        raise ValueError("num_tokens must give a token count >= 1 for every log-likelihood")
    return log_likelihoods / lengths


def sequence_entropy(log_likelihoods: Tensor | Sequence[float], num_tokens: Sequence[int] | None = None) -> float:
    """Monte-Carlo entropy ``-mean log p``; with ``num_tokens``, of the per-token log-likelihoods."""
    ll = _log_likelihoods(log_likelihoods)
    if num_tokens is not None:
        ll = _per_token(ll, num_tokens)
    return max(0.0, -ll.mean().item())


def lexical_similarity(answers: Sequence[str], use_stemmer: bool = False) -> float:
    """Mean ROUGE-L F1 over the unordered pairs of answers (1.0 for a single answer: nothing disagrees)."""
    if len(answers) == 0:
        raise ValueError("answers is empty")
    pairs = list(combinations(answers, 2))
    if not pairs:
        return 1.0
    scorer = cached_rouge_scorer(("rougeL",), use_stemmer)
    return sum(scorer.score(a, b)["rougeL"].fmeasure for a, b in pairs) / len(pairs)


def log_likelihood_variance(log_likelihoods: Tensor | Sequence[float]) -> float:
    """Population variance (divisor S) of the sequence log-likelihoods; 0 for one sample."""
    return _log_likelihoods(log_likelihoods).var(correction=0).item()


def count_distinct_answers(answers: Sequence[str]) -> int:
    """Number of different answers after SQuAD normalisation."""
    if len(answers) == 0:
        raise ValueError("answers is empty")
    return len({normalize_answer(a) for a in answers})


@dataclass(frozen=True)
class AnswerSamples:
    """The ``S`` sampled answers to one question with their sequence log-likelihoods.

    ``num_tokens`` (optional) are the answers' lengths in tokens, for length normalisation.
    """

    answers: Sequence[str]
    log_likelihoods: Sequence[float]
    num_tokens: Sequence[int] | None = None
    question: str | None = None

    def __post_init__(self) -> None:
        if len(self.answers) == 0:
            raise ValueError("AnswerSamples needs at least one answer")
        if len(self.log_likelihoods) != len(self.answers):
            raise ValueError(f"{len(self.answers)} answers but {len(self.log_likelihoods)} log-likelihoods")
        if self.num_tokens is not None and len(self.num_tokens) != len(self.answers):
            raise ValueError(f"{len(self.answers)} answers but {len(self.num_tokens)} token counts")


def generative_uncertainty(
    samples: Sequence[AnswerSamples], judge: EquivalenceJudge, length_normalise: bool = False
) -> dict[str, Tensor]:
    """Every score of the module doc per question: float64 tensors ``[Q]``, higher = more uncertain.

    ``length_normalised_entropy`` is included only when every question has ``num_tokens``.
    With ``length_normalise`` the semantic entropy weights classes by per-token log-likelihoods
    (as Farquhar et al., 2024 do), which needs ``num_tokens`` everywhere.
    """
    if len(samples) == 0:
        raise ValueError("samples is empty")
    with_lengths = all(s.num_tokens is not None for s in samples)
    if length_normalise and not with_lengths:
        raise ValueError("length_normalise=True needs num_tokens for every question")
    rows: dict[str, list[float]] = {name: [] for name in GENERATIVE_UNCERTAINTY_SCORES}
    if not with_lengths:
        del rows["length_normalised_entropy"]
    for s in samples:
        classes = cluster_answers(s.answers, judge, s.question)
        weights = _log_likelihoods(s.log_likelihoods)
        if length_normalise:
            weights = _per_token(weights, s.num_tokens)
        rows["predictive_entropy"].append(sequence_entropy(s.log_likelihoods))
        if with_lengths:
            rows["length_normalised_entropy"].append(sequence_entropy(s.log_likelihoods, s.num_tokens))
        rows["semantic_entropy"].append(semantic_entropy(weights, classes))
        rows["discrete_semantic_entropy"].append(discrete_semantic_entropy(classes))
        rows["lexical_dissimilarity"].append(1.0 - lexical_similarity(s.answers))
        rows["log_likelihood_variance"].append(log_likelihood_variance(s.log_likelihoods))
        rows["num_distinct_answers"].append(float(count_distinct_answers(s.answers)))
        rows["num_semantic_sets"].append(float(max(classes) + 1))
    return {name: torch.tensor(values, dtype=_DTYPE) for name, values in rows.items()}
