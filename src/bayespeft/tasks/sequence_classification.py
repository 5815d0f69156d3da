"""Sentence(-pair) classification with an encoder's sequence-classification head (GLUE-style)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase


class TextPairExample(Protocol):
    """What the task reads from a dataset record."""

    uid: str
    text: str
    text_pair: str | None
    label: int


@dataclass
class EncodedPair:
    features: dict[str, list[int]]  # input_ids, attention_mask and (for BERT) token_type_ids
    label: int
    index: int


class SequenceClassificationTask:
    """Tokenises text pairs, pads on the right, and reads the classifier head's logits."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, num_labels: int, max_length: int = 256) -> None:
        self.tokenizer = tokenizer
        self.num_labels = num_labels
        self.max_length = max_length

    @property
    def num_classes(self) -> int:
        return self.num_labels

    def encode(self, examples: Sequence[TextPairExample]) -> list[EncodedPair]:
        encoded = []
        for index, example in enumerate(examples):
            features = self.tokenizer(example.text, example.text_pair, truncation=True, max_length=self.max_length)
            encoded.append(EncodedPair(dict(features), example.label, index))
        return encoded

    def collate(self, items: Sequence[EncodedPair]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad([it.features for it in items], padding=True, return_tensors="pt")
        batch = dict(batch)
        batch["labels"] = torch.tensor([it.label for it in items])
        batch["index"] = torch.tensor([it.index for it in items])
        return batch

    def class_logits(self, model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 1) -> torch.Tensor:
        """Classifier logits [repeats * B, C]; the inputs are stacked ``repeats`` times (sample-major)."""
        inputs = {k: v.repeat(repeats, 1) for k, v in batch.items() if k not in ("labels", "index")}
        return model(**inputs).logits.float()

    def loss(self, class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(class_logits, labels.to(class_logits.device))
