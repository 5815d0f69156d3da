"""Answer correctness and text-quality metrics for generated text.

Short answers (open-domain QA) are compared with every accepted alias of the reference after
SQuAD-style normalisation (:func:`normalize_answer`): lowercase, drop punctuation, drop the
articles "a", "an", "the", collapse whitespace. :func:`exact_match` and :func:`token_f1` take
the best alias, as the official SQuAD and TriviaQA scripts do.

Summaries are scored against several references by ROUGE (Google's ``rouge-score`` package)
and BERTScore (the ``bert-score`` package); each score is reported as its maximum, mean and
minimum over the references of an example, under the keys ``f"{metric}_{max|mean|min}"``.

BERTScore backbone. The ``bert-score`` default for English is ``roberta-large`` and its
authors recommend ``microsoft/deberta-xlarge-mnli``; neither is available offline, so the
default here is the packaged all-MiniLM-L6-v2 (``minilm-l6``, last of its 6 layers). Its
scores are *not* comparable with published BERTScores, and there is no baseline file for it,
so no baseline rescaling: raw MiniLM F1 of unrelated sentences is around 0.1 and of identical
ones 1. Pass ``model="microsoft/deberta-xlarge-mnli"`` (with the hub reachable) to get the
usual numbers.
"""

from __future__ import annotations

import os
import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from ..choices import REFERENCE_AGGREGATES

__all__ = [
    "REFERENCE_AGGREGATES",
    "ROUGE_TYPES",
    "BERTScore",
    "alias_list",
    "cached_rouge_scorer",
    "exact_match",
    "normalize_answer",
    "reference_groups",
    "rouge_scores",
    "token_f1",
]

_DTYPE = torch.float64

#: ROUGE variants scored by default (F1 of unigrams, bigrams and the longest common subsequence).
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, remove punctuation, then articles, then extra whitespace."""
    lowered = text.lower()
    no_punctuation = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", no_punctuation).split())


def alias_list(aliases: str | Sequence[str]) -> list[str]:
    """The reference aliases as a non-empty list (a single string is one alias)."""
    if isinstance(aliases, str):
        return [aliases]
    items = list(aliases)
    if not items:
        raise ValueError("aliases is empty: give at least one reference answer")
    if not all(isinstance(a, str) for a in items):
        raise ValueError("aliases must be strings")
    return items


def exact_match(prediction: str, aliases: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals some normalised alias, else 0.0."""
    normalised = normalize_answer(prediction)
    return float(any(normalised == normalize_answer(alias) for alias in alias_list(aliases)))


def _token_f1(prediction_tokens: list[str], reference_tokens: list[str]) -> float:
    if not prediction_tokens or not reference_tokens:
        # SQuAD v2 rule: two empty answers agree (1), an empty and a non-empty one do not (0).
        return float(prediction_tokens == reference_tokens)
    common = sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(prediction_tokens)
    recall = common / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, aliases: str | Sequence[str]) -> float:
    """Best over aliases of the bag-of-tokens F1 between normalised prediction and alias."""
    prediction_tokens = normalize_answer(prediction).split()
    return max(_token_f1(prediction_tokens, normalize_answer(alias).split()) for alias in alias_list(aliases))


def reference_groups(references: Sequence[str | Sequence[str]], n: int) -> list[list[str]]:
    """One non-empty list of reference strings per prediction."""
    if isinstance(references, str):
        raise ValueError("references must hold one reference (or list of references) per prediction, not one string")
    if n == 0:
        raise ValueError("predictions is empty")
    groups = [alias_list(refs) for refs in references]
    if len(groups) != n:
        raise ValueError(f"got {n} predictions but {len(groups)} reference groups")
    return groups


def _aggregate(values: Tensor, groups: list[list[str]], name: str) -> dict[str, Tensor]:
    """Per-example max / mean / min of flat per-(prediction, reference) scores, grouped by example."""
    sizes = [len(g) for g in groups]
    chunks = torch.split(values.to(_DTYPE), sizes)
    return {f"{name}_{agg}": torch.stack([getattr(c, agg)() for c in chunks]) for agg in REFERENCE_AGGREGATES}


@lru_cache(maxsize=8)
def cached_rouge_scorer(rouge_types: tuple[str, ...], use_stemmer: bool) -> Any:
    """One ``rouge_score.RougeScorer`` per setting, built on first use (imported lazily: rouge-score pulls in NLTK)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)


def rouge_scores(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    rouge_types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = True,
) -> dict[str, Tensor]:
    """ROUGE F1 of each prediction against each of its references, summarised per example.

    Returns float64 tensors ``[N]`` under ``f"{type}_{max|mean|min}"`` for each ROUGE type.
    Tokenisation is ``rouge-score``'s: lowercase, non-alphanumeric characters split words (so
    non-Latin scripts score 0), Porter stemming when ``use_stemmer`` (the usual setting for
    summarization papers). ``rougeL`` treats each text as one sequence; add ``"rougeLsum"``
    to ``rouge_types`` for the newline-split summary-level variant.
    """
    groups = reference_groups(references, len(predictions))
    types = tuple(rouge_types)
    scorer = cached_rouge_scorer(types, bool(use_stemmer))
    flat = {t: [] for t in types}
    for prediction, refs in zip(predictions, groups, strict=True):
        for ref in refs:
            scores = scorer.score(ref, prediction)  # rouge-score's argument order is (target, prediction)
            for t in types:
                flat[t].append(scores[t].fmeasure)
    out: dict[str, Tensor] = {}
    for t in types:
        out.update(_aggregate(torch.tensor(flat[t], dtype=_DTYPE), groups, t))
    return out


class BERTScore:
    """BERTScore F1 against several references, with the embedding model loaded once.

    ``model`` is an offline short name (``minilm-l6``, the default), a local folder or a hub
    id; ``num_layers`` is the layer whose token embeddings are matched (default: the layer
    ``bert-score`` tuned for a model it knows, else the model's last layer). Baseline rescaling
    needs a baseline file that ``bert-score`` ships for its known English models only; asking
    for it with any other model raises ValueError here rather than at the first ``score``.
    No idf weighting (every token counts the same; [CLS] and [SEP] count 0).

    Example::

        scorer = BERTScore()  # offline MiniLM
        scores = scorer.score(["The cat sat."], [["A cat was sitting.", "The cat sat down."]])
        scores["bertscore_f1_max"]  # tensor([...], dtype=torch.float64)
    """

    def __init__(
        self,
        model: str = "minilm-l6",
        num_layers: int | None = None,
        batch_size: int = 64,
        device: str | None = None,
        rescale_with_baseline: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        import bert_score
        from bert_score.utils import model2layers
        from transformers import AutoConfig

        from ..backbones import OFFLINE_MODELS, resolve_model
        from ..config import ModelConfig

        model_path = resolve_model(ModelConfig(name=model))[0] if model.lower() in OFFLINE_MODELS else model
        if num_layers is None:
            known = model2layers.get(model_path)
            num_layers = known if known is not None else AutoConfig.from_pretrained(model_path).num_hidden_layers
        self.model = model
        self.num_layers = int(num_layers)
        self.batch_size = batch_size
        if rescale_with_baseline:
            # Where bert-score looks for the baseline of an English model; checked before loading it.
            baseline = os.path.join(os.path.dirname(bert_score.__file__), "rescale_baseline", "en", f"{model_path}.tsv")
            if not os.path.isfile(baseline):
                raise ValueError(
                    f"no BERTScore baseline for {model!r} (looked for {baseline}); "
                    "use rescale_with_baseline=False or a model that bert-score ships a baseline for"
                )
        self._scorer = bert_score.BERTScorer(
            model_type=model_path,
            num_layers=self.num_layers,
            batch_size=batch_size,
            device=device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"),
            lang="en" if rescale_with_baseline else None,
            rescale_with_baseline=rescale_with_baseline,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, num_layers={self.num_layers})"

    def score(self, predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, Tensor]:
        """BERTScore F1 per example: ``bertscore_f1_{max|mean|min}`` float64 tensors ``[N]`` over references."""
        groups = reference_groups(references, len(predictions))
        candidates = [p for p, refs in zip(predictions, groups, strict=True) for _ in refs]
        flat_refs = [r for refs in groups for r in refs]
        _, _, f1 = self._scorer.score(candidates, flat_refs, batch_size=self.batch_size)
        return _aggregate(f1, groups, "bertscore_f1")
