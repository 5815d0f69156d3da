import math

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from bayespeft.metrics import (
    JUDGE_PROMPT,
    LLMJudge,
    NLICorrectnessJudge,
    NLIModel,
    format_judge_prompt,
    yes_probability_from_logits,
)


class TableScorer:
    """Fake NLI: P(premise entails hypothesis) from a table (0 for unlisted pairs)."""

    def __init__(self, table):
        self.table = table

    def entailment_probs(self, premises, hypotheses):
        return torch.tensor(
            [self.table.get((p, h), 0.0) for p, h in zip(premises, hypotheses, strict=True)], dtype=torch.float64
        )


def test_nli_correctness_by_hand():
    scorer = TableScorer(
        {
            ("1969", "July 1969"): 0.3,  # "1969" does not say July
            ("July 1969", "1969"): 0.95,
            ("1969", "in 1969"): 0.8,
            ("in 1969", "1969"): 0.7,
            ("1970", "1969"): 0.1,
        }
    )
    judge = NLICorrectnessJudge(scorer, threshold=0.5)
    # Example 1: aliases "July 1969" -> min(0.3, 0.95) = 0.3 and "in 1969" -> min(0.8, 0.7) = 0.7; best 0.7.
    # Example 2: "1970" vs "1969": min(0.1, 0) = 0.
    scores = judge.scores(["1969", "1970"], [["July 1969", "in 1969"], "1969"])
    assert scores.dtype == torch.float64
    assert scores.tolist() == pytest.approx([0.7, 0.0])
    assert judge.correct(["1969", "1970"], [["July 1969", "in 1969"], "1969"]).tolist() == [True, False]
    # The threshold is configurable: 0.75 rejects the best mutual entailment of 0.7.
    assert NLICorrectnessJudge(scorer, threshold=0.75).correct(["1969"], [["July 1969", "in 1969"]]).tolist() == [False]


def test_nli_correctness_puts_the_question_in_front():
    scorer = TableScorer({("When? 1969", "When? in 1969"): 0.9, ("When? in 1969", "When? 1969"): 0.9})
    judge = NLICorrectnessJudge(scorer)
    assert judge.scores(["1969"], ["in 1969"], questions=["When?"]).tolist() == [0.9]
    assert judge.scores(["1969"], ["in 1969"]).tolist() == [0.0]  # without the question, the table has no entry
    with pytest.raises(ValueError, match="1 predictions but 2 questions"):
        judge.scores(["1969"], ["in 1969"], questions=["a", "b"])
    with pytest.raises(ValueError, match="threshold"):
        NLICorrectnessJudge(scorer, threshold=-0.1)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from bayespeft.backbones import resolve_model
    from bayespeft.config import ModelConfig

    return AutoTokenizer.from_pretrained(resolve_model(ModelConfig(name="minilm-l6"))[0])


def tiny_nli(id2label):
    """A 1-layer random BERT pair classifier with the given label names (MiniLM's vocabulary)."""
    config = BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config)


PREMISES = ["A man plays a guitar.", "The capital of France is Paris.", "It rains."]
HYPOTHESES = ["Someone makes music with an instrument on a stage.", "Paris is in France.", "The ground is wet."]


@pytest.mark.parametrize("entailment_at", [0, 2])
def test_nli_model_reads_the_entailment_label_from_config(minilm_tokenizer, entailment_at):
    names = ["CONTRADICTION", "NEUTRAL", "ENTAILMENT"] if entailment_at == 2 else ["entailment", "neutral", "contra"]
    model = tiny_nli(dict(enumerate(names)))
    nli = NLIModel(model, minilm_tokenizer, batch_size=2)
    assert nli.entailment_index == entailment_at
    encoded = minilm_tokenizer(PREMISES, HYPOTHESES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**encoded).logits.double().softmax(dim=-1)
    probs = nli.label_probs(PREMISES, HYPOTHESES)
    assert probs.shape == (3, 3) and probs.dtype == torch.float64
    # Batches of 2 (padded differently) give the same probabilities as one batch of 3.
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.allclose(nli.entailment_probs(PREMISES, HYPOTHESES), expected[:, entailment_at], atol=1e-6)


def test_nli_model_label_errors(minilm_tokenizer):
    unnamed = tiny_nli({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(ValueError, match="entailment label"):
        NLIModel(unnamed, minilm_tokenizer)
    assert NLIModel(unnamed, minilm_tokenizer, entailment_index=1).entailment_index == 1
    with pytest.raises(ValueError, match="not a label"):
        NLIModel(unnamed, minilm_tokenizer, entailment_index=3)
    with pytest.raises(ValueError, match="2 premises but 1 hypotheses"):
        NLIModel(unnamed, minilm_tokenizer, entailment_index=1).label_probs(["a", "b"], ["c"])


def test_nli_model_drives_the_correctness_judge(minilm_tokenizer):
    nli = NLIModel(tiny_nli({0: "contradiction", 1: "neutral", 2: "entailment"}), minilm_tokenizer)
    judge = NLICorrectnessJudge(nli, threshold=0.0)  # a random model: only the plumbing is checked
    scores = judge.scores(["Paris", "London"], [["paris", "Paris, France"], "Paris"])
    forward = nli.entailment_probs(["Paris", "Paris", "London"], ["paris", "Paris, France", "Paris"])
    backward = nli.entailment_probs(["paris", "Paris, France", "Paris"], ["Paris", "Paris", "London"])
    mutual = torch.minimum(forward, backward)
    assert scores.tolist() == pytest.approx([max(mutual[0], mutual[1]).item(), mutual[2].item()])


def test_judge_prompt_template():
    prompt = format_judge_prompt(" Who was first on the Moon? ", "Armstrong ", ["Neil Armstrong", "Neil A. Armstrong"])
    assert prompt == JUDGE_PROMPT.format(
        question="Who was first on the Moon?",
        reference="Neil Armstrong | Neil A. Armstrong",
        prediction="Armstrong",
    )
    assert prompt.endswith(
        "Proposed answer: Armstrong\n\nIs the proposed answer correct? Reply with yes or no.\nAnswer:"
    )
    assert "Reference answer: Neil" in format_judge_prompt("Q", "A", "Neil")


def test_yes_probability_from_logits_by_hand():
    logits = torch.full((3, 6), -5.0)
    logits[0, [1, 4]] = torch.tensor([2.0, 0.0])  # yes id 1: 2, no id 4: 0 -> sigmoid(2) = 0.880797
    logits[1, [1, 2, 4]] = 1.0  # two yes variants and one no, equal logits -> 2 / 3
    logits[2, [1, 2, 4]] = torch.tensor([0.0, 0.0, 3.0])  # lse(0, 0) = ln 2; sigmoid(ln 2 - 3) = 2 / (2 + e^3)
    p = yes_probability_from_logits(logits, yes_ids=[1, 2], no_ids=[4])
    assert p.dtype == torch.float64
    # Row 0: yes mass e^2 + e^-5, no mass e^0; the -5 variant adds ~1e-4 to sigmoid(2).
    assert p[0].item() == pytest.approx((math.exp(2) + math.exp(-5)) / (math.exp(2) + math.exp(-5) + 1))
    assert p[0].item() == pytest.approx(0.880797, abs=2e-4)
    assert p[1].item() == pytest.approx(2 / 3)
    assert p[2].item() == pytest.approx(2 / (2 + math.exp(3)))
    with pytest.raises(ValueError, match="both yes and no"):
        yes_probability_from_logits(logits, [1], [1])
    with pytest.raises(ValueError, match=r"\[B, V\]"):
        yes_probability_from_logits(logits[0], [1], [4])


class PromptReadingLM(torch.nn.Module):
    """Fake causal LM: the next token is "yes" (logit 2 vs 0 for "no") when the prompt proposes Paris.

    It decodes each row's real (unmasked) tokens, so a prompt put in the wrong row, padding read
    as text or a wrong last position would change the answer.
    """

    def __init__(self, tokenizer, yes_ids, no_ids):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device
        self.tokenizer, self.yes_ids, self.no_ids = tokenizer, yes_ids, no_ids
        self.calls = []

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep):
        self.calls.append((input_ids.shape, logits_to_keep))
        assert attention_mask[:, -1].all(), "prompts must be left-padded"
        for row in range(input_ids.shape[0]):  # real tokens are at positions 0, 1, ... whatever the padding
            length = int(attention_mask[row].sum())
            assert position_ids[row, -length:].tolist() == list(range(length))
        logits = torch.full((input_ids.shape[0], 1, len(self.tokenizer)), -20.0)
        for row in range(input_ids.shape[0]):
            text = self.tokenizer.decode(input_ids[row][attention_mask[row].bool()])
            logits[row, 0, self.yes_ids] = 2.0 if "Proposed answer: Paris\n" in text else 0.0
            logits[row, 0, self.no_ids] = 0.0
        return type("Output", (), {"logits": logits})()


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def test_llm_judge_reads_yes_no_logits(smollm2_tokenizer):
    probe = LLMJudge(torch.nn.Linear(1, 1), smollm2_tokenizer)
    # All four surface forms of each answer are single SmolLM2 tokens.
    assert len(probe.yes_ids) == 4 and len(probe.no_ids) == 4
    fake = PromptReadingLM(smollm2_tokenizer, probe.yes_ids, probe.no_ids)
    judge = LLMJudge(fake, smollm2_tokenizer, batch_size=2, use_chat_template=False)
    questions = ["Capital of France?", "Capital of France?", "Largest city of France, in its own words?"]
    predictions = ["Paris", "London, the capital of England", "Paris"]
    p = judge.probability_correct(predictions, ["Paris", "Paris", ["Paris", "Paname"]], questions)
    # Four yes variants at logit 2 against four no variants at 0: P(yes) = sigmoid(2) = 0.880797.
    assert p.tolist() == pytest.approx([1 / (1 + math.exp(-2)), 0.5, 1 / (1 + math.exp(-2))])
    assert judge.correct(predictions, ["Paris", "Paris", "Paris"], questions).tolist() == [True, False, True]
    assert [logits_to_keep for _, logits_to_keep in fake.calls] == [1, 1, 1, 1]  # batches of 2, 1, 2, 1


def test_llm_judge_prompt_formats(smollm2_tokenizer):
    plain = LLMJudge(torch.nn.Linear(1, 1), smollm2_tokenizer, use_chat_template=False)
    chat = LLMJudge(torch.nn.Linear(1, 1), smollm2_tokenizer)  # SmolLM2 has a chat template: used by default
    assert chat.use_chat_template and not plain.use_chat_template
    prompt = format_judge_prompt("Q?", "A", "B")
    assert smollm2_tokenizer.decode(plain.prompt_ids("Q?", "A", "B")) == prompt
    chat_text = smollm2_tokenizer.decode(chat.prompt_ids("Q?", "A", "B"))
    assert prompt in chat_text and chat_text.endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="single token"):
        LLMJudge(torch.nn.Linear(1, 1), smollm2_tokenizer, yes_words=["absolutely certainly"])
    with pytest.raises(ValueError, match="share a token"):
        LLMJudge(torch.nn.Linear(1, 1), smollm2_tokenizer, yes_words=["yes"], no_words=["yes"])


def test_llm_judge_batches_a_real_tiny_llama(tiny_llama_dir):
    judge = LLMJudge.from_pretrained(str(tiny_llama_dir), batch_size=3)
    questions = ["Who wrote Hamlet?", "What is the capital of Italy?", "2 + 2?", "Largest planet?"]
    predictions = ["Shakespeare", "Milan, which is in the north", "4", "Jupiter"]
    references = [["William Shakespeare", "Shakespeare"], "Rome", "four", "Jupiter"]
    batched = judge.probability_correct(predictions, references, questions)
    one_by_one = torch.cat(
        [judge.probability_correct([p], [r], [q]) for p, r, q in zip(predictions, references, questions, strict=True)]
    )
    assert batched.shape == (4,) and ((batched > 0) & (batched < 1)).all()
    # Left padding with position ids from the mask: batching does not change a prompt's verdict.
    assert torch.allclose(batched, one_by_one, atol=1e-5)
    assert judge.correct(predictions, references, questions).tolist() == (batched > 0.5).tolist()
