import math

import pytest
import torch

from bayespeft.metrics import (
    GENERATIVE_UNCERTAINTY_SCORES,
    AnswerSamples,
    EmbeddingEquivalence,
    EntailmentEquivalence,
    cluster_answers,
    count_distinct_answers,
    discrete_semantic_entropy,
    generative_uncertainty,
    lexical_similarity,
    log_likelihood_variance,
    normalize_answer,
    semantic_entropy,
    sequence_entropy,
)


class NormalisedMatchJudge:
    """Deterministic judge: two answers mean the same when they are equal after SQuAD normalisation."""

    def __init__(self):
        self.calls = []

    def equivalent(self, pairs, question=None):
        self.calls.append((list(pairs), question))
        return [normalize_answer(a) == normalize_answer(b) for a, b in pairs]


class TableJudge:
    """Equivalent exactly for the listed (unordered) pairs."""

    def __init__(self, same):
        self.same = {frozenset(p) for p in same}

    def equivalent(self, pairs, question=None):
        return [frozenset((a, b)) in self.same for a, b in pairs]


# The running example: "Paris" and "paris" mean the same, "London" does not; p = 0.5, 0.2, 0.1.
ANSWERS = ["Paris", "paris", "London"]
LOG_LIKELIHOODS = [math.log(0.5), math.log(0.2), math.log(0.1)]


def test_cluster_answers_asks_once_about_distinct_strings():
    judge = NormalisedMatchJudge()
    assert cluster_answers(["Paris", "paris", "London", " Paris", "The London"], judge, "Capital?") == [0, 0, 1, 0, 1]
    # One call, on the 6 pairs of the 4 distinct stripped strings ("Paris" repeats after stripping).
    assert len(judge.calls) == 1
    pairs, question = judge.calls[0]
    assert question == "Capital?"
    assert len(pairs) == 6 and ("Paris", "Paris") not in pairs


def test_cluster_answers_compares_with_class_representatives():
    # a ~ b and b ~ c but not a ~ c: c is compared with the representative of class 0 (a) only,
    # so it starts a class of its own (the greedy algorithm of Kuhn et al., not transitive closure).
    judge = TableJudge([("a", "b"), ("b", "c")])
    assert cluster_answers(["a", "b", "c"], judge) == [0, 0, 1]
    assert cluster_answers(["b", "a", "c"], judge) == [0, 0, 0]


def test_cluster_answers_checks_the_judge():
    class Broken:
        def equivalent(self, pairs, question=None):
            return []

    with pytest.raises(ValueError, match="0 verdicts for 1 pairs"):
        cluster_answers(["a", "b"], Broken())
    with pytest.raises(ValueError, match="empty"):
        cluster_answers([], NormalisedMatchJudge())


def test_semantic_entropy_by_hand():
    # Classes {Paris, paris} and {London}: masses 0.5 + 0.2 = 0.7 and 0.1, normalised to 7/8 and 1/8.
    # SE = -(7/8 ln 7/8 + 1/8 ln 1/8) = 0.875 * 0.133531 + 0.125 * 2.079442 = 0.116840 + 0.259930 = 0.376770.
    assert semantic_entropy(LOG_LIKELIHOODS, [0, 0, 1]) == pytest.approx(0.376770, abs=1e-6)
    # Class ids need not be contiguous, and a tensor input works the same.
    assert semantic_entropy(torch.tensor(LOG_LIKELIHOODS), [3, 3, 7]) == pytest.approx(0.376770, abs=1e-6)
    # One class: no semantic uncertainty, whatever the likelihoods.
    assert semantic_entropy(LOG_LIKELIHOODS, [0, 0, 0]) == 0.0
    # Three classes of masses 0.5, 0.2, 0.1 -> p = 5/8, 2/8, 1/8.
    expected = -sum(p * math.log(p) for p in (5 / 8, 2 / 8, 1 / 8))
    assert semantic_entropy(LOG_LIKELIHOODS, [0, 1, 2]) == pytest.approx(expected)


def test_discrete_semantic_entropy_by_hand():
    # Class frequencies 2/3 and 1/3: -(2/3 ln 2/3 + 1/3 ln 1/3) = 0.270310 + 0.366204 = 0.636514.
    assert discrete_semantic_entropy([0, 0, 1]) == pytest.approx(0.636514, abs=1e-6)
    assert discrete_semantic_entropy([4, 4, 4, 4]) == 0.0
    assert discrete_semantic_entropy([0, 1, 2, 3]) == pytest.approx(math.log(4))


def test_sequence_entropy_by_hand():
    # -(ln 0.5 + ln 0.2 + ln 0.1) / 3 = (0.693147 + 1.609438 + 2.302585) / 3 = 1.535057.
    assert sequence_entropy(LOG_LIKELIHOODS) == pytest.approx(1.535057, abs=1e-6)
    # With 1, 1 and 2 tokens: -(ln 0.5 + ln 0.2 + ln 0.1 / 2) / 3 = (0.693147 + 1.609438 + 1.151293) / 3 = 1.151293.
    assert sequence_entropy(LOG_LIKELIHOODS, [1, 1, 2]) == pytest.approx(1.151293, abs=1e-6)
    with pytest.raises(ValueError, match="token count"):
        sequence_entropy(LOG_LIKELIHOODS, [1, 0, 2])


def test_lexical_similarity_by_hand():
    # ROUGE-L F1 (lowercased words): Paris/paris 1, Paris/London 0, paris/London 0 -> mean 1/3.
    assert lexical_similarity(ANSWERS) == pytest.approx(1 / 3)
    # Lin's sentences: (killed, kill) LCS 3 of 4 words -> 3/4; (killed, "the gunman kill police") LCS
    # "the gunman" -> 2/4; (kill, "the gunman kill police") LCS "the gunman" -> 2/4. Mean 7/12.
    sentences = ["police killed the gunman", "police kill the gunman", "the gunman kill police"]
    assert lexical_similarity(sentences) == pytest.approx(7 / 12)
    assert lexical_similarity(["only one"]) == 1.0


def test_log_likelihood_variance_and_distinct_answers_by_hand():
    # Mean -1.535057; deviations 0.841910, -0.074381, -0.767528; squares sum to 1.303444; / 3 = 0.434481.
    assert log_likelihood_variance(LOG_LIKELIHOODS) == pytest.approx(0.434481, abs=1e-6)
    assert log_likelihood_variance([-1.3]) == 0.0
    assert count_distinct_answers(["Paris", "paris", "The Paris!", "London"]) == 2


@pytest.mark.parametrize(
    ("values", "match"),
    [([0.5, -1.0], "<= 0"), ([], "non-empty"), ([float("nan")], "NaN"), ([[-1.0, -2.0]], "1-D")],
)
def test_log_likelihoods_are_validated(values, match):
    with pytest.raises(ValueError, match=match):
        sequence_entropy(values)


def test_generative_uncertainty_by_hand():
    samples = [
        AnswerSamples(ANSWERS, LOG_LIKELIHOODS, num_tokens=[1, 1, 2], question="Capital of France?"),
        AnswerSamples(["Paris"], [math.log(0.9)], num_tokens=[1]),  # one answer: no disagreement at all
    ]
    scores = generative_uncertainty(samples, NormalisedMatchJudge())
    assert tuple(scores) == GENERATIVE_UNCERTAINTY_SCORES
    expected = {
        "predictive_entropy": [1.535057, -math.log(0.9)],
        "length_normalised_entropy": [1.151293, -math.log(0.9)],
        "semantic_entropy": [0.376770, 0.0],
        "discrete_semantic_entropy": [0.636514, 0.0],
        "lexical_dissimilarity": [2 / 3, 0.0],
        "log_likelihood_variance": [0.434481, 0.0],
        "num_distinct_answers": [2.0, 1.0],
        "num_semantic_sets": [2.0, 1.0],
    }
    for name, values in expected.items():
        assert scores[name].dtype == torch.float64
        assert scores[name].tolist() == pytest.approx(values, abs=1e-6), name


def test_generative_uncertainty_length_normalised_semantic_entropy():
    # Per-token log-likelihoods ln 0.5, ln 0.2, ln 0.1 / 2: class masses 0.7 and sqrt(0.1) = 0.316228,
    # p = 0.688822 and 0.311178; SE = 0.688822 * 0.372792 + 0.311178 * 1.167350 = 0.620040.
    samples = [AnswerSamples(ANSWERS, LOG_LIKELIHOODS, num_tokens=[1, 1, 2])]
    scores = generative_uncertainty(samples, NormalisedMatchJudge(), length_normalise=True)
    assert scores["semantic_entropy"].item() == pytest.approx(0.620040, abs=1e-6)
    # Without token counts there is no length-normalised entropy, and length_normalise is refused.
    plain = generative_uncertainty([AnswerSamples(ANSWERS, LOG_LIKELIHOODS)], NormalisedMatchJudge())
    assert "length_normalised_entropy" not in plain
    with pytest.raises(ValueError, match="num_tokens"):
        generative_uncertainty([AnswerSamples(ANSWERS, LOG_LIKELIHOODS)], NormalisedMatchJudge(), length_normalise=True)


def test_answer_samples_validation():
    with pytest.raises(ValueError, match="at least one answer"):
        AnswerSamples([], [])
    with pytest.raises(ValueError, match="2 answers but 1 log-likelihoods"):
        AnswerSamples(["a", "b"], [-1.0])
    with pytest.raises(ValueError, match="token counts"):
        AnswerSamples(["a"], [-1.0], num_tokens=[1, 2])


class TableScorer:
    """Fake NLI: P(premise entails hypothesis) from a table, 0 for unlisted pairs; records its inputs."""

    def __init__(self, table):
        self.table = table
        self.seen = []

    def entailment_probs(self, premises, hypotheses):
        self.seen.append((list(premises), list(hypotheses)))
        return torch.tensor(
            [self.table.get((p, h), 0.0) for p, h in zip(premises, hypotheses, strict=True)], dtype=torch.float64
        )


def test_entailment_equivalence_needs_both_directions():
    scorer = TableScorer(
        {
            ("Q: Neil Armstrong", "Q: Armstrong"): 0.9,
            ("Q: Armstrong", "Q: Neil Armstrong"): 0.6,
            ("Q: Armstrong", "Q: an astronaut"): 0.95,  # one direction only
        }
    )
    pairs = [("Neil Armstrong", "Armstrong"), ("Armstrong", "an astronaut")]
    assert EntailmentEquivalence(scorer, threshold=0.5).equivalent(pairs, question="Q:") == [True, False]
    assert EntailmentEquivalence(scorer, threshold=0.7).equivalent(pairs, question="Q:") == [False, False]
    # Both directions went in one batched call, answers prefixed by the question.
    premises, hypotheses = scorer.seen[0]
    assert premises == ["Q: Neil Armstrong", "Q: Armstrong", "Q: Armstrong", "Q: an astronaut"]
    assert hypotheses == ["Q: Armstrong", "Q: an astronaut", "Q: Neil Armstrong", "Q: Armstrong"]
    with pytest.raises(ValueError, match="threshold"):
        EntailmentEquivalence(scorer, threshold=1.5)


@pytest.fixture(scope="module")
def minilm_equivalence():
    return EmbeddingEquivalence.from_pretrained("minilm-l6", threshold=0.8)


def test_embedding_equivalence_with_offline_minilm(minilm_equivalence):
    embeddings = minilm_equivalence.embed(["Paris", "paris", "Bananas are yellow."])
    assert embeddings.shape == (3, 384) and embeddings.dtype == torch.float64
    assert embeddings.norm(dim=-1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert (embeddings[0] @ embeddings[1]).item() == pytest.approx(1.0)  # MiniLM is uncased
    answers = [
        "The capital of France is Paris.",
        "A man is playing a guitar.",
        "Paris is the capital of France.",  # paraphrase of the first (cosine ~0.99)
        "Someone plays the guitar.",  # paraphrase of the second (~0.84)
        "The stock market crashed.",  # unrelated to everything (cosine < 0.1 with the others)
    ]
    assert cluster_answers(answers, minilm_equivalence) == [0, 1, 0, 1, 2]


def test_embedding_threshold_is_configurable(minilm_equivalence):
    pairs = [("A man is playing a guitar.", "Someone plays the guitar.")]  # cosine about 0.84
    assert minilm_equivalence.equivalent(pairs) == [True]
    strict = EmbeddingEquivalence(minilm_equivalence.model, minilm_equivalence.tokenizer, threshold=0.95)
    assert strict.equivalent(pairs) == [False]
    assert strict.equivalent([]) == []
