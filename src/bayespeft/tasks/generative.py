"""Open-ended answers with a causal or encoder-decoder LM: token-level NLL of the answer.

A decoder-only model reads ``prompt + answer + EOS`` as one sequence; the labels are the token
ids on the answer and EOS and -100 on the prompt and the padding, so the loss is the NLL of the
answer tokens only. Rows are padded on the left, as for generation: every answer ends at the last
position, so the vocabulary projection runs only on the answer window (``logits_to_keep``) and
the position ids count real tokens only. An encoder-decoder model reads the prompt in its encoder
(right padding) and the answer tokens are its labels (the model shifts them into decoder inputs).

The answer follows the prompt after one space (prompts end with ``"Answer:"``); with
``chat_template`` the prompt becomes a user turn of the tokenizer's chat template and the answer
the assistant turn. Over-long items keep at most ``max_length // 2`` answer tokens and lose the
beginning of the prompt, so the instruction and ``"Answer:"`` at its end stay.

Training and scoring stack the batch ``repeats`` times along the batch dimension (sample-major),
one posterior draw or ensemble member per copy, as the classification tasks do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..errors import DataError

IGNORE_INDEX = -100
"""Label of positions that are not scored (prompt and padding), as Hugging Face losses expect."""


class PromptAnswer(Protocol):
    """What the task reads from a record (:class:`~bayespeft.data.generative.QAExample`, :class:`AnswerPair`)."""

    @property
    def uid(self) -> str: ...

    @property
    def prompt(self) -> str: ...

    @property
    def answer(self) -> str: ...


@dataclass(frozen=True)
class AnswerPair:
    """A prompt and one candidate answer to score, e.g. each choice of a TruthfulQA MC2 question."""

    uid: str
    prompt: str
    answer: str


@dataclass
class EncodedAnswer:
    """A tokenised item: the model input and the answer tokens that are scored."""

    input_ids: list[int]  # decoder-only: prompt + answer tokens; encoder-decoder: the prompt
    answer_ids: list[int]  # the scored answer tokens, EOS last
    index: int  # position in the dataset, to order gathered results


class GenerativeTask:
    """Tokenises prompt / answer pairs, batches them and scores the answer tokens."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 512,
        *,
        encoder_decoder: bool = False,
        chat_template: bool = False,
    ) -> None:
        if chat_template and encoder_decoder:
            raise ValueError("chat_template applies to decoder-only chat models, not encoder-decoders")
        if chat_template and not tokenizer.chat_template:
            raise ValueError(f"{type(tokenizer).__name__} has no chat template")
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs EOS and padding tokens")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.encoder_decoder = encoder_decoder
        self.chat_template = chat_template

    # ---- tokenising ---------------------------------------------------------------------------
    def prompt_text(self, prompt: str) -> str:
        """The text the model reads before the answer: the prompt, or its chat-template user turn."""
        if not self.chat_template:
            return prompt
        messages = [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def answer_text(self, answer: str) -> str:
        """The answer as it follows the prompt: after one space, or as the assistant turn's content."""
        return answer if self.chat_template or self.encoder_decoder else f" {answer}"

    def encode(self, examples: Sequence[PromptAnswer]) -> list[EncodedAnswer]:
        """Tokenise prompt and answer separately (as generation sees them) and fit them in ``max_length``."""
        encoded = []
        for index, example in enumerate(examples):
            for field in ("prompt", "answer"):
                if not getattr(example, field).strip():
                    raise DataError(f"example {example.uid}: empty {field}")
            prompt_text = self.prompt_text(example.prompt)
            prompt_ids = self.tokenizer(prompt_text, add_special_tokens=not self.chat_template)["input_ids"]
            answer_ids = self.tokenizer(self.answer_text(example.answer), add_special_tokens=False)["input_ids"]
            answer_ids = [*answer_ids[: self.max_length // 2 - 1], self.tokenizer.eos_token_id]
            if self.encoder_decoder:
                encoded.append(EncodedAnswer(prompt_ids[-self.max_length :], answer_ids, index))
            else:
                prompt_ids = prompt_ids[-(self.max_length - len(answer_ids)) :]
                encoded.append(EncodedAnswer(prompt_ids + answer_ids, answer_ids, index))
        return encoded

    def collate(self, items: Sequence[EncodedAnswer]) -> dict[str, torch.Tensor]:
        """A padded batch: ``input_ids``, ``attention_mask``, ``labels`` (-100 where not scored), ``index``.

        Decoder-only: left padding, labels aligned with ``input_ids``. Encoder-decoder: right
        padding, ``labels`` are the answer tokens (right padded with -100).
        """
        pad = self.tokenizer.pad_token_id
        width = max(len(it.input_ids) for it in items)
        input_ids = torch.full((len(items), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        if self.encoder_decoder:
            labels = torch.full((len(items), max(len(it.answer_ids) for it in items)), IGNORE_INDEX, dtype=torch.long)
            for row, it in enumerate(items):
                input_ids[row, : len(it.input_ids)] = torch.tensor(it.input_ids)
                attention_mask[row, : len(it.input_ids)] = 1
                labels[row, : len(it.answer_ids)] = torch.tensor(it.answer_ids)
        else:
            labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
            for row, it in enumerate(items):
                input_ids[row, width - len(it.input_ids) :] = torch.tensor(it.input_ids)
                attention_mask[row, width - len(it.input_ids) :] = 1
                labels[row, width - len(it.answer_ids) :] = torch.tensor(it.answer_ids)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "index": torch.tensor([it.index for it in items]),
        }

    # ---- scoring --------------------------------------------------------------------------------
    def answer_logits(
        self, model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [repeats * B, W, V] at the positions that predict answer tokens, and the targets
        [repeats * B, W] (-100 where not scored), for the batch stacked ``repeats`` times."""
        input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        if repeats > 1:
            input_ids, attention_mask, labels = (t.repeat(repeats, 1) for t in (input_ids, attention_mask, labels))
        if self.encoder_decoder:
            output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            return output.logits, labels
        scored = (labels != IGNORE_INDEX).any(dim=0)
        window = labels.shape[1] - int(scored.int().argmax())  # answers end at the last position
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        output = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=window + 1
        )
        return output.logits[:, :-1, :], labels[:, -window:]

    @staticmethod
    def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """NLL of each target token [N, W] (0 where the target is -100), in float32."""
        flat = nn.functional.cross_entropy(
            logits.flatten(0, 1).float(),
            targets.flatten().to(logits.device),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
        return flat.view(targets.shape)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean NLL over the scored answer tokens of the batch."""
        scored = (targets != IGNORE_INDEX).sum()
        return self.token_nll(logits, targets).sum() / scored.clamp_min(1)

    def training_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 1
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean answer-token NLL of the batch stacked ``repeats`` times, and the answer-token accuracy
        (greedy next token = target) to log."""
        logits, targets = self.answer_logits(model, batch, repeats)
        scored = targets != IGNORE_INDEX
        hits = (logits.argmax(-1) == targets.to(logits.device)) & scored.to(logits.device)
        accuracy = float(hits.sum() / scored.sum().clamp_min(1))
        return self.loss(logits, targets), {"batch_token_acc": accuracy}

    def sequence_log_likelihoods(
        self, model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 1
    ) -> torch.Tensor:
        """Log-probability of each whole answer (sum over its tokens, EOS included) [repeats * B]."""
        logits, targets = self.answer_logits(model, batch, repeats)
        return -self.token_nll(logits, targets).sum(-1)

    @staticmethod
    def answer_lengths(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scored tokens of each answer [B] (EOS included)."""
        return (batch["labels"] != IGNORE_INDEX).sum(-1)


def mc2_score(log_likelihoods: torch.Tensor, true_mask: torch.Tensor) -> torch.Tensor:
    """TruthfulQA MC2 [B]: the probability mass on the true answers, normalised over all answers.

    ``log_likelihoods`` [B, C] are per-choice scores, -inf for absent choices. The usual MC2 (Lin
    et al. 2022) uses each answer text's sequence log-likelihood given the question
    (:meth:`GenerativeTask.sequence_log_likelihoods` on one :class:`AnswerPair` per choice, summed
    over tokens, no length normalisation); fed letter logits or log class probabilities of the
    lettered ``truthfulqa_mc2`` prompt it gives the lettered variant.
    """
    probabilities = torch.softmax(log_likelihoods.double(), dim=-1)
    return (probabilities * true_mask.to(probabilities.device)).sum(-1)
