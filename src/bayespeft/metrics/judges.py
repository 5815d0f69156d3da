"""Model-based judges of answer correctness: NLI mutual entailment and an LLM asked yes or no.

Exact match undercounts correct free-form answers ("in 1969" vs "1969", "Armstrong" vs "Neil
Armstrong"). Two model-based alternatives:

NLI mutual entailment (:class:`NLICorrectnessJudge`)
    A prediction is correct when it and some reference alias entail each other: the score is
    ``max over aliases of min(P(pred => ref), P(ref => pred))`` and the answer is correct when
    the score reaches ``threshold``. Entailment probabilities come from any object with an
    ``entailment_probs`` method (:class:`EntailmentScorer`); :class:`NLIModel` wraps a hub NLI
    classifier (e.g. ``microsoft/deberta-large-mnli``), finding the entailment class from the
    model's ``config.id2label``.

LLM-as-judge (:class:`LLMJudge`)
    A causal LM reads :data:`JUDGE_PROMPT` (question, reference answers, proposed answer) and
    answers yes or no. Instead of generating text and parsing it, the verdict is read from the
    next-token logits: ``P(yes) = sum of softmax mass on the "yes" tokens / mass on "yes" and
    "no" tokens`` (:func:`yes_probability_from_logits`), and the answer is correct when
    ``P(yes) > 1/2``. This never fails to parse and gives a graded confidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from .text import alias_list, reference_groups

__all__ = [
    "JUDGE_PROMPT",
    "EntailmentScorer",
    "LLMJudge",
    "NLICorrectnessJudge",
    "NLIModel",
    "format_judge_prompt",
    "yes_probability_from_logits",
]

_DTYPE = torch.float64


class EntailmentScorer(Protocol):
    """Anything that gives ``P(premise entails hypothesis)`` for a batch of text pairs."""

    def entailment_probs(self, premises: Sequence[str], hypotheses: Sequence[str]) -> Tensor:
        """Float64 tensor ``[N]`` of entailment probabilities, one per (premise, hypothesis) pair."""
        ...


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


class NLIModel:
    """A sequence-pair NLI classifier (premise, hypothesis) -> label probabilities, scored in batches.

    The entailment class is the label in ``model.config.id2label`` whose name starts with
    "entail" (case-insensitive; MNLI models use "ENTAILMENT" or "entailment" at different
    indices); pass ``entailment_index`` for a model whose labels are unnamed (``LABEL_0``...).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        batch_size: int = 16,
        max_length: int = 256,
        entailment_index: int | None = None,
    ) -> None:
        id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
        if entailment_index is None:
            matches = [i for i, name in id2label.items() if name.lower().startswith("entail")]
            if len(matches) != 1:
                raise ValueError(
                    f"cannot find one entailment label in config.id2label={id2label}; pass entailment_index"
                )
            entailment_index = matches[0]
        elif entailment_index not in id2label:
            raise ValueError(f"entailment_index {entailment_index} is not a label of the model ({id2label})")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = _check_batch_size(batch_size)
        self.max_length = max_length
        self.entailment_index = entailment_index
        self.id2label = id2label

    @classmethod
    def from_pretrained(
        cls, name_or_path: str = "microsoft/deberta-large-mnli", device: str | None = None, batch_size: int = 16
    ) -> NLIModel:
        """Load a hub id or local folder with ``AutoModelForSequenceClassification``."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(name_or_path)
        if device is not None:
            model.to(device)
        return cls(model, AutoTokenizer.from_pretrained(name_or_path), batch_size=batch_size)

    def label_probs(self, premises: Sequence[str], hypotheses: Sequence[str]) -> Tensor:
        """Softmax over the model's labels for each pair: float64 ``[N, num_labels]`` on the CPU."""
        if len(premises) != len(hypotheses):
            raise ValueError(f"got {len(premises)} premises but {len(hypotheses)} hypotheses")
        device = _model_device(self.model)
        chunks = []
        with torch.no_grad():
            for start in range(0, len(premises), self.batch_size):
                encoded = self.tokenizer(
                    list(premises[start : start + self.batch_size]),
                    list(hypotheses[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(device)
                logits = self.model(**encoded).logits
                chunks.append(logits.to(dtype=_DTYPE, device="cpu").softmax(dim=-1))
        if not chunks:
            return torch.zeros(0, len(self.id2label), dtype=_DTYPE)
        return torch.cat(chunks)

    def entailment_probs(self, premises: Sequence[str], hypotheses: Sequence[str]) -> Tensor:
        """``P(premise entails hypothesis)`` per pair, float64 ``[N]``."""
        return self.label_probs(premises, hypotheses)[:, self.entailment_index]


def _with_question(question: str | None, answer: str) -> str:
    """The answer in the context of its question, so that short answers are judged as claims."""
    return answer if question is None else f"{question} {answer}"


def _check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return float(threshold)


def _qa_inputs(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], questions: Sequence[str] | None
) -> tuple[list[list[str]], list[str | None]]:
    """Reference lists and questions (None when not given), checked to match the predictions."""
    groups = reference_groups(references, len(predictions))
    if questions is None:
        return groups, [None] * len(predictions)
    if len(questions) != len(predictions):
        raise ValueError(f"got {len(predictions)} predictions but {len(questions)} questions")
    return groups, list(questions)


class NLICorrectnessJudge:
    """Correct when the prediction and some alias entail each other with probability >= ``threshold``.

    With ``questions``, both texts are prefixed by the question ("Who...? Armstrong"), which
    turns bare short answers into comparable claims (as in Kuhn et al., 2023).
    """

    def __init__(self, scorer: EntailmentScorer, threshold: float = 0.5) -> None:
        self.scorer = scorer
        self.threshold = _check_threshold(threshold)

    def scores(
        self,
        predictions: Sequence[str],
        references: Sequence[str | Sequence[str]],
        questions: Sequence[str] | None = None,
    ) -> Tensor:
        """Mutual-entailment score per example, float64 ``[N]``: max over aliases of the weaker direction."""
        groups, contexts = _qa_inputs(predictions, references, questions)
        forward_premises, forward_hypotheses, owner = [], [], []
        for i, (prediction, refs, question) in enumerate(zip(predictions, groups, contexts, strict=True)):
            for ref in refs:
                forward_premises.append(_with_question(question, prediction))
                forward_hypotheses.append(_with_question(question, ref))
                owner.append(i)
        # One batched call for both directions: (pred => ref) pairs, then (ref => pred) pairs.
        probs = self.scorer.entailment_probs(
            forward_premises + forward_hypotheses, forward_hypotheses + forward_premises
        ).to(_DTYPE)
        n_pairs = len(owner)
        mutual = torch.minimum(probs[:n_pairs], probs[n_pairs:])
        best = torch.zeros(len(groups), dtype=_DTYPE)
        return best.scatter_reduce(0, torch.tensor(owner), mutual, reduce="amax", include_self=False)

    def correct(
        self,
        predictions: Sequence[str],
        references: Sequence[str | Sequence[str]],
        questions: Sequence[str] | None = None,
    ) -> Tensor:
        """Boolean ``[N]``: mutual-entailment score >= threshold."""
        return self.scores(predictions, references, questions) >= self.threshold


#: The LLM judge's prompt; fields are filled by :func:`format_judge_prompt`.
JUDGE_PROMPT = (
    "You are grading answers to a quiz. Decide whether the proposed answer means the same as the "
    "reference answer (any one of them, if several are listed). Ignore differences in wording, "
    "capitalisation and punctuation.\n\n"
    "Question: {question}\n"
    "Reference answer: {reference}\n"
    "Proposed answer: {prediction}\n\n"
    "Is the proposed answer correct? Reply with yes or no.\n"
    "Answer:"
)


def format_judge_prompt(question: str, prediction: str, references: str | Sequence[str]) -> str:
    """:data:`JUDGE_PROMPT` for one example; several references are joined with " | "."""
    return JUDGE_PROMPT.format(
        question=question.strip(),
        reference=" | ".join(a.strip() for a in alias_list(references)),
        prediction=prediction.strip(),
    )


def yes_probability_from_logits(next_token_logits: Tensor, yes_ids: Sequence[int], no_ids: Sequence[int]) -> Tensor:
    """``P(yes | yes or no)`` from next-token logits ``[B, V]``: float64 ``[B]``.

    The probability mass of each answer is summed over its token variants (" yes", "Yes", ...)
    by a logsumexp of their logits, and the two masses are normalised against each other,
    so the rest of the vocabulary does not matter: ``sigmoid(lse(yes logits) - lse(no logits))``.
    """
    if next_token_logits.dim() != 2:
        raise ValueError(f"next_token_logits must have shape [B, V], got {tuple(next_token_logits.shape)}")
    if not yes_ids or not no_ids:
        raise ValueError("need at least one yes token id and one no token id")
    if set(yes_ids) & set(no_ids):
        raise ValueError("a token id cannot mean both yes and no")
    logits = next_token_logits.detach().to(_DTYPE)
    yes = logits[:, list(yes_ids)].logsumexp(dim=-1)
    no = logits[:, list(no_ids)].logsumexp(dim=-1)
    return torch.sigmoid(yes - no).cpu()


class LLMJudge:
    """A causal LM asked whether a proposed answer matches the reference, read from its next-token logits.

    ``yes_words`` / ``no_words`` are the surface forms whose token mass counts as each answer;
    only those that are a single token of the tokenizer are used (at least one each is
    required). With ``use_chat_template`` (default: when the tokenizer has one, as instruct
    models do) the prompt is sent as the user turn followed by the assistant prefix.
    Prompts are left-padded and batched; position ids follow the attention mask so padding
    does not shift positions.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        batch_size: int = 8,
        use_chat_template: bool | None = None,
        yes_words: Sequence[str] = ("yes", "Yes", " yes", " Yes"),
        no_words: Sequence[str] = ("no", "No", " no", " No"),
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = _check_batch_size(batch_size)
        has_template = getattr(tokenizer, "chat_template", None) is not None
        if use_chat_template and not has_template:
            raise ValueError("use_chat_template=True but the tokenizer has no chat template")
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        self.yes_ids = self._single_token_ids(yes_words, "yes_words")
        self.no_ids = self._single_token_ids(no_words, "no_words")
        if set(self.yes_ids) & set(self.no_ids):
            raise ValueError("yes_words and no_words share a token")

    @classmethod
    def from_pretrained(cls, name: str = "smollm2-135m", device: str | None = None, batch_size: int = 8) -> LLMJudge:
        """Load an offline short name, local folder or hub id as a causal LM judge."""
        from transformers import AutoModelForCausalLM

        from ..backbones import load_tokenizer, resolve_model
        from ..config import ModelConfig
        from ..enums import ModelKind

        path, _ = resolve_model(ModelConfig(name=name))
        model = AutoModelForCausalLM.from_pretrained(path)
        if device is not None:
            model.to(device)
        return cls(model, load_tokenizer(path, ModelKind.CAUSAL_LM), batch_size=batch_size)

    def _single_token_ids(self, words: Sequence[str], name: str) -> list[int]:
        ids: list[int] = []
        for word in words:
            encoded = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1 and encoded[0] not in ids:
                ids.append(encoded[0])
        if not ids:
            raise ValueError(f"none of {name}={list(words)!r} is a single token of this tokenizer")
        return ids

    def prompt_ids(self, question: str, prediction: str, references: str | Sequence[str]) -> list[int]:
        """Token ids of the judge prompt for one example (chat-formatted when ``use_chat_template``)."""
        prompt = format_judge_prompt(question, prediction, references)
        if self.use_chat_template:
            return list(
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
                )
            )
        return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]

    def _pad_id(self) -> int:
        for token_id in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if token_id is not None:
                return int(token_id)
        return 0

    def _next_token_logits(self, prompts: list[list[int]]) -> Tensor:
        """Logits at the last prompt position, ``[B, V]``, of left-padded prompts."""
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id(), dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        device = _model_device(self.model)
        output = self.model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
            logits_to_keep=1,
        )
        return output.logits[:, -1, :]

    def probability_correct(
        self, predictions: Sequence[str], references: Sequence[str | Sequence[str]], questions: Sequence[str]
    ) -> Tensor:
        """``P(yes)`` per example from the judge's next-token logits, float64 ``[N]``."""
        groups, contexts = _qa_inputs(predictions, references, questions)
        prompts = [
            self.prompt_ids(str(question), prediction, refs)
            for question, prediction, refs in zip(contexts, predictions, groups, strict=True)
        ]
        chunks = []
        with torch.no_grad():
            for start in range(0, len(prompts), self.batch_size):
                logits = self._next_token_logits(prompts[start : start + self.batch_size])
                chunks.append(yes_probability_from_logits(logits, self.yes_ids, self.no_ids))
        return torch.cat(chunks)

    def correct(
        self, predictions: Sequence[str], references: Sequence[str | Sequence[str]], questions: Sequence[str]
    ) -> Tensor:
        """Boolean ``[N]``: the judge puts more mass on yes than on no."""
        return self.probability_correct(predictions, references, questions) > 0.5
