"""Multiple-choice QA with a causal LM: score the answer-letter tokens at the last position.

Each prompt ends with "Answer:"; the class logits are the LM's next-token logits of the
choice letters (" A", " B", ...), read at the last position only (``logits_to_keep=1``, so the
vocabulary projection runs on one position instead of the whole sequence). Questions may have
different numbers of choices: absent choices get logit -inf, hence probability 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..data.multiple_choice import MCExample
from ..errors import DataError


@dataclass
class EncodedExample:
    """A tokenised prompt and what scoring it needs."""

    input_ids: list[int]
    label: int
    num_choices: int
    index: int  # position in the dataset, to order gathered predictions


class MultipleChoiceTask:
    """Tokenises prompts, batches them (left padding) and turns model outputs into class logits."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int = 300, space_before_answer: bool = True):
        if tokenizer.padding_side != "left":
            raise ValueError("multiple-choice scoring reads the last position: the tokenizer must pad on the left")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.space_before_answer = space_before_answer
        self._answer_token_cache: dict[str, int] = {}

    def answer_token(self, label: str) -> int:
        """The token id whose logit scores answer ``label`` (last token of " A")."""
        if label not in self._answer_token_cache:
            text = f" {label}" if self.space_before_answer else label
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise DataError(f"answer label {label!r} tokenises to nothing")
            self._answer_token_cache[label] = ids[-1]
        return self._answer_token_cache[label]

    def encode(self, examples: Sequence[MCExample]) -> list[EncodedExample]:
        """Tokenise; over-long prompts lose their beginning so the question end and "Answer:" stay."""
        labels = {lab for ex in examples for lab in ex.answer_labels}
        self.answer_labels = sorted(labels, key=lambda s: (len(s), s))
        self.target_ids = torch.tensor([self.answer_token(lab) for lab in self.answer_labels])
        if len(set(self.target_ids.tolist())) != len(self.answer_labels):
            raise DataError("two answer labels share a token: choices would be indistinguishable")
        position = {lab: i for i, lab in enumerate(self.answer_labels)}
        encoded = []
        for index, ex in enumerate(examples):
            if [position[lab] for lab in ex.answer_labels] != list(range(len(ex.answer_labels))):
                raise DataError(f"{ex.dataset}:{ex.uid}: answer labels {ex.answer_labels} are not A, B, C... in order")
            ids = self.tokenizer(ex.prompt, add_special_tokens=True)["input_ids"][-self.max_length :]
            encoded.append(EncodedExample(ids, ex.label, len(ex.answer_labels), index))
        return encoded

    @property
    def num_classes(self) -> int:
        return len(self.answer_labels)

    def collate(self, items: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        """Left-padded batch with labels, per-row choice counts and dataset positions."""
        input_ids, attention_mask = self.left_pad([it.input_ids for it in items])
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.tensor([it.label for it in items]),
            "num_choices": torch.tensor([it.num_choices for it in items]),
            "index": torch.tensor([it.index for it in items]),
        }

    def left_pad(self, rows: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rows padded on the left (the last position is every row's end): input ids and attention mask."""
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            input_ids[r, width - len(row) :] = torch.tensor(row)
            attention_mask[r, width - len(row) :] = 1
        return input_ids, attention_mask

    def class_logits(self, model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 1) -> torch.Tensor:
        """Choice logits [repeats * B, C]; the batch is stacked ``repeats`` times (sample-major)."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        if repeats > 1:
            input_ids, attention_mask = input_ids.repeat(repeats, 1), attention_mask.repeat(repeats, 1)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=1)
        logits = output.logits[:, -1, :].index_select(-1, self.target_ids.to(input_ids.device)).float()
        choices = torch.arange(self.num_classes, device=logits.device)
        absent = choices.unsqueeze(0) >= batch["num_choices"].to(logits.device).repeat(repeats).unsqueeze(1)
        return logits.masked_fill(absent, float("-inf"))

    def loss(self, class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean NLL of the gold choice under the softmax over the question's choices."""
        return nn.functional.cross_entropy(class_logits, labels.to(class_logits.device))


@dataclass
class EncodedClozeExample:
    """One question as one token sequence per choice (stem + choice text)."""

    rows: list[list[int]]
    choice_lengths: list[int]  # tokens of each row's choice text, at the row's end
    label: int
    num_choices: int
    index: int


class ClozeMultipleChoiceTask(MultipleChoiceTask):
    """Scores each choice text appended to the question; class logit = mean log-prob of its tokens.

    Where the choice fills a blank inside the text (``cloze_contexts``, WinoGrande), each filled context
    is scored instead by the mean log-prob of the shared continuation after it. Rows are left padded, so
    every scored span ends at the last position and the vocabulary projection runs only on the last
    (longest span + 1) positions (``logits_to_keep``).

    With ``prefix_cache`` (the default) the tokens a question's rows share (its stem) run once per
    question and stacked draw: each question is one packed sequence, the stem followed by every row's
    remainder, and an attention mask lets each remainder see the stem and itself only (the stem's keys
    and values serve every choice, as a key/value cache would, in one forward call). Gradients reach the
    stem's layers from every choice, and one forward call is one weight draw, so the logits are those
    of the per-row pass (:meth:`per_row_logits`) up to float rounding. The rows' remainders are not
    padded to a common width, so a question costs its stem plus its choices' own tokens.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 300,
        space_before_answer: bool = True,
        prefix_cache: bool = True,
    ):
        super().__init__(tokenizer, max_length, space_before_answer)
        self.prefix_cache = prefix_cache

    def encode(self, examples: Sequence[MCExample]) -> list[EncodedClozeExample]:
        """Tokenise context and scored text separately; over-long contexts lose their beginning, scored texts
        are kept whole (up to half the length limit)."""
        self.answer_labels = sorted({lab for ex in examples for lab in ex.answer_labels}, key=lambda s: (len(s), s))
        encoded = []
        for index, ex in enumerate(examples):
            pairs = self._scored_pairs(ex)
            rows, lengths = [], []
            for context, scored in pairs:
                context_ids = self.tokenizer(context, add_special_tokens=True)["input_ids"]
                tokens = self.tokenizer(scored, add_special_tokens=False)["input_ids"][: self.max_length // 2]
                if not tokens:
                    raise DataError(f"{ex.dataset}:{ex.uid}: scored text {scored!r} tokenises to nothing")
                rows.append(context_ids[-(self.max_length - len(tokens)) :] + tokens)
                lengths.append(len(tokens))
            encoded.append(EncodedClozeExample(rows, lengths, ex.label, len(pairs), index))
        return encoded

    @staticmethod
    def _scored_pairs(ex: MCExample) -> list[tuple[str, str]]:
        """(context, scored text) per choice: the filled blank and the continuation, or the stem and the choice."""
        if ex.cloze_contexts:
            return [(context, ex.cloze_continuation) for context in ex.cloze_contexts]
        if not ex.choices or not ex.stem:
            raise DataError(f"{ex.dataset}:{ex.uid}: no choice texts to score (use data.mc_scoring=letter)")
        return [(ex.stem, f" {choice}") for choice in ex.choices]

    def collate(self, items: Sequence[EncodedClozeExample]) -> dict[str, torch.Tensor]:
        """Left-padded rows of every choice of every question (question-major), with their scoring slots,
        and the same rows split into each question's shared prefix and the rows' remainders."""
        input_ids, attention_mask = self.left_pad([row for it in items for row in it.rows])
        slots = [q * self.num_classes + k for q, it in enumerate(items) for k in range(it.num_choices)]
        cuts = [shared_prefix_length(it.rows, it.choice_lengths) for it in items]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "choice_lengths": torch.tensor([n for it in items for n in it.choice_lengths]),
            "slots": torch.tensor(slots),
            "labels": torch.tensor([it.label for it in items]),
            "num_choices": torch.tensor([it.num_choices for it in items]),
            "index": torch.tensor([it.index for it in items]),
            **self.pack(items, cuts),
        }

    def pack(self, items: Sequence[EncodedClozeExample], cuts: Sequence[int]) -> dict[str, torch.Tensor]:
        """Each question as one sequence: its shared prefix, then every row's remainder (right padded).

        ``packed_segments`` says what each position is (-1 padding, 0 prefix, k + 1 the remainder of
        row k), ``packed_positions`` its position in its own row, ``packed_ends`` the index of each
        row's last token (-1 where the question has fewer choices than the widest in the batch).
        """
        width = max(cut + sum(len(row) - cut for row in it.rows) for it, cut in zip(items, cuts, strict=True))
        most = max(it.num_choices for it in items)
        ids = torch.full((len(items), width), self.tokenizer.pad_token_id, dtype=torch.long)
        segments = torch.full((len(items), width), -1, dtype=torch.long)
        positions = torch.zeros((len(items), width), dtype=torch.long)
        ends = torch.full((len(items), most), -1, dtype=torch.long)
        for q, (it, cut) in enumerate(zip(items, cuts, strict=True)):
            ids[q, :cut] = torch.tensor(it.rows[0][:cut], dtype=torch.long)
            segments[q, :cut] = 0
            positions[q, :cut] = torch.arange(cut)
            start = cut
            for k, row in enumerate(it.rows):
                rest = row[cut:]
                ids[q, start : start + len(rest)] = torch.tensor(rest, dtype=torch.long)
                segments[q, start : start + len(rest)] = k + 1
                positions[q, start : start + len(rest)] = torch.arange(cut, cut + len(rest))
                start += len(rest)
                ends[q, k] = start - 1
        # attention: a remainder sees the prefix and itself; padding sees itself only (no empty softmax row)
        query, key = segments.unsqueeze(2), segments.unsqueeze(1)
        allowed = torch.ones(width, width, dtype=torch.bool).tril() & (key >= 0) & (query >= 0)
        allowed = (allowed & ((key == 0) | (key == query))) | torch.eye(width, dtype=torch.bool)
        # scored positions: row k's last n_k positions but its very last (that one predicts the next row)
        present = ends >= 0
        lengths = torch.zeros(ends.shape, dtype=torch.long)
        lengths[present] = torch.tensor([n for it in items for n in it.choice_lengths])
        row_index = torch.full(ends.shape, -1, dtype=torch.long)
        row_index[present] = torch.arange(int(present.sum()))
        column = torch.arange(width).view(1, 1, width)
        scored = (column >= (ends - lengths).unsqueeze(-1)) & (column < ends.unsqueeze(-1)) & present.unsqueeze(-1)
        keep = scored.any(1)  # blocks are in row order, so (question, row, position) order is (question, position)
        return {
            "packed_ids": ids,
            "packed_segments": segments,
            "packed_positions": positions,
            "packed_ends": ends,
            "packed_mask": allowed,
            "packed_keep": keep,
            "packed_owner": row_index.unsqueeze(-1).expand_as(scored)[scored],
            "packed_targets": torch.cat([ids[:, 1:], ids[:, :1]], dim=1)[keep],
        }

    def class_logits(self, model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 1) -> torch.Tensor:
        """Mean choice-token log-probabilities [repeats * B, C], -inf for absent choices."""
        if self.prefix_cache:
            return self.shared_prefix_logits(model, batch, repeats)
        return self.per_row_logits(model, batch, repeats)

    def per_row_logits(self, model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 1) -> torch.Tensor:
        """Class logits with every row run whole: one forward call, the stem repeated per choice."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        if repeats > 1:
            input_ids, attention_mask = input_ids.repeat(repeats, 1), attention_mask.repeat(repeats, 1)
        span = int(batch["choice_lengths"].max())
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        output = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=span + 1
        )
        return self._choice_logits(output.logits, input_ids, batch, repeats)

    def shared_prefix_logits(self, model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 1) -> torch.Tensor:
        """Class logits with each question as one packed sequence (:meth:`pack`): a row's remainder attends
        to the shared prefix and to itself, so the stem runs once and one forward call serves every choice."""
        device = model.get_input_embeddings().weight.device
        ids, positions = batch["packed_ids"].to(device), batch["packed_positions"].to(device)
        mask, keep = batch["packed_mask"].to(device), batch["packed_keep"].to(device)
        owner, targets = batch["packed_owner"].to(device), batch["packed_targets"].to(device)
        rows = batch["choice_lengths"].numel()
        if repeats > 1:
            ids, positions = ids.repeat(repeats, 1), positions.repeat(repeats, 1)
            mask, keep, targets = mask.repeat(repeats, 1, 1), keep.repeat(repeats, 1), targets.repeat(repeats)
            owner = (owner.unsqueeze(0) + rows * torch.arange(repeats, device=device).unsqueeze(1)).flatten()
        mask = mask.unsqueeze(1)
        if getattr(model.config, "_attn_implementation", "sdpa") == "eager":
            dtype = model.get_input_embeddings().weight.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
        output = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep)
        log_probs = output.logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        totals = torch.zeros(repeats * rows, device=device).index_add(0, owner, log_probs)
        lengths = batch["choice_lengths"].to(device).repeat(repeats)
        return self._place(totals / lengths, batch, repeats)

    def _choice_logits(
        self, logits: torch.Tensor, input_ids: torch.Tensor, batch: dict[str, torch.Tensor], repeats: int
    ) -> torch.Tensor:
        """Mean log-prob of each row's last ``choice_lengths`` tokens from the last (span + 1) position logits."""
        lengths = batch["choice_lengths"].to(input_ids.device).repeat(repeats)
        span = int(lengths.max())
        log_probs = logits[:, :-1, :].float().log_softmax(-1)  # predicts the last `span` tokens
        targets = input_ids[:, -span:]
        token_scores = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        in_choice = torch.arange(span, device=input_ids.device).unsqueeze(0) >= (span - lengths).unsqueeze(1)
        scores = (token_scores * in_choice).sum(-1) / lengths
        return self._place(scores, batch, repeats)

    def _place(self, scores: torch.Tensor, batch: dict[str, torch.Tensor], repeats: int) -> torch.Tensor:
        """Row scores (present choices, question-major, stacked ``repeats`` times) as class logits [repeats * B, C]."""
        device = scores.device
        questions = batch["labels"].shape[0]
        slots = batch["slots"].to(device)
        offsets = torch.arange(repeats, device=device).repeat_interleave(slots.numel()) * (questions * self.num_classes)
        scores_all = torch.full((repeats * questions * self.num_classes,), float("-inf"), device=device)
        scores_all = scores_all.index_put((slots.repeat(repeats) + offsets,), scores)
        return scores_all.view(repeats * questions, self.num_classes)


def shared_prefix_length(rows: Sequence[list[int]], choice_lengths: Sequence[int]) -> int:
    """Tokens a question's rows share that no row needs the logits of: before every scored span and before
    the token that predicts its first scored token (so each row's remainder holds all its predictions)."""
    common = min(len(row) - n - 1 for row, n in zip(rows, choice_lengths, strict=True))
    length = 0
    while length < common and all(row[length] == rows[0][length] for row in rows):
        length += 1
    return length
