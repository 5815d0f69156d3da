import pytest
import torch

from bayespeft.metrics import BERTScore, exact_match, normalize_answer, rouge_scores, token_f1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Eiffel Tower!", "eiffel tower"),  # lowercase, punctuation, article, whitespace
        ("an apple, a pear and THE plum.", "apple pear and plum"),
        ("Theatre", "theatre"),  # "the" only as a whole word
        ("U.S.A.", "usa"),  # punctuation is removed, not replaced by a space
        ("rock-n-roll", "rocknroll"),
        ("  \tA\n", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_over_aliases():
    assert exact_match("Paris", ["City of Paris", "paris"]) == 1.0
    assert exact_match("the Paris.", "Paris") == 1.0  # one alias given as a plain string
    assert exact_match("Parisian", ["Paris"]) == 0.0
    assert exact_match("", ["the"]) == 1.0  # both normalise to ""
    with pytest.raises(ValueError, match="empty"):
        exact_match("Paris", [])


def test_token_f1_by_hand():
    # "the cat sat on the mat" -> [cat, sat, on, mat]; "a cat sat on a red mat" -> [cat, sat, on, red, mat].
    # 4 common tokens: precision 4/4, recall 4/5, F1 = 2 * 1 * 0.8 / 1.8 = 8/9.
    assert token_f1("the cat sat on the mat", "a cat sat on a red mat") == pytest.approx(8 / 9)
    # The best alias counts: "dog" scores 0 and the other 8/9.
    assert token_f1("the cat sat on the mat", ["dog", "a cat sat on a red mat"]) == pytest.approx(8 / 9)
    # Multiset overlap: [paris, paris] vs [paris] share one token; P = 1/2, R = 1, F1 = 2/3.
    assert token_f1("Paris, Paris", "paris") == pytest.approx(2 / 3)
    # SQuAD v2 rule for empty answers: both empty agree, one empty does not.
    assert token_f1("The.", "a") == 1.0
    assert token_f1("", "Paris") == 0.0
    assert token_f1("London", "Paris") == 0.0


def test_rouge_by_hand_on_two_sentences():
    # Lin (2004): reference "police killed the gunman", candidate "the gunman kill police" (no stemming).
    # ROUGE-1: police, the, gunman match (killed != kill): P = R = 3/4.
    # ROUGE-2: reference bigrams {police killed, killed the, the gunman}, candidate {the gunman,
    # gunman kill, kill police}: one shared, P = R = 1/3.
    # ROUGE-L: longest common subsequence "the gunman", length 2: P = R = F = 2/4.
    scores = rouge_scores(["the gunman kill police"], [["police killed the gunman"]], use_stemmer=False)
    assert scores["rouge1_max"].item() == pytest.approx(3 / 4)
    assert scores["rouge2_max"].item() == pytest.approx(1 / 3)
    assert scores["rougeL_max"].item() == pytest.approx(1 / 2)
    # "police kill the gunman": LCS "police the gunman" = 3 -> 3/4; with stemming killed -> kill, identical.
    assert rouge_scores(["police kill the gunman"], ["police killed the gunman"], use_stemmer=False)[
        "rougeL_max"
    ].item() == pytest.approx(3 / 4)
    assert rouge_scores(["police kill the gunman"], ["police killed the gunman"])["rougeL_max"].item() == 1.0


def test_rouge_max_mean_min_over_references():
    # Candidate "police killed the gunman" against itself (1, 1, 1) and against "the gunman kill police"
    # (ROUGE-1 3/4, ROUGE-2 1/3, ROUGE-L 1/2, from the test above with the roles swapped: F1 is symmetric).
    # A second example with a single reference: every aggregate equals that one score (0, nothing shared).
    scores = rouge_scores(
        ["police killed the gunman", "sunny day"],
        [["police killed the gunman", "the gunman kill police"], ["heavy rain"]],
        use_stemmer=False,
    )
    assert set(scores) == {f"{t}_{a}" for t in ("rouge1", "rouge2", "rougeL") for a in ("max", "mean", "min")}
    expected = {
        "rouge1": (1.0, (1 + 3 / 4) / 2, 3 / 4),
        "rouge2": (1.0, (1 + 1 / 3) / 2, 1 / 3),
        "rougeL": (1.0, (1 + 1 / 2) / 2, 1 / 2),
    }
    for rouge_type, (best, mean, worst) in expected.items():
        for agg, value in zip(("max", "mean", "min"), (best, mean, worst), strict=True):
            tensor = scores[f"{rouge_type}_{agg}"]
            assert tensor.dtype == torch.float64 and tensor.shape == (2,)
            assert tensor[0].item() == pytest.approx(value)
            assert tensor[1].item() == 0.0


def test_rouge_bad_input():
    with pytest.raises(ValueError, match="2 predictions but 1 reference groups"):
        rouge_scores(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="not one string"):
        rouge_scores(["a"], "a")
    with pytest.raises(ValueError, match="empty"):
        rouge_scores([], [])
    with pytest.raises(ValueError, match="empty"):
        rouge_scores(["a"], [[]])


@pytest.fixture(scope="module")
def minilm_bertscore():
    return BERTScore(device="cpu")


def test_bertscore_minilm_identical_paraphrase_unrelated(minilm_bertscore):
    assert minilm_bertscore.num_layers == 6  # MiniLM is unknown to bert-score: its last layer is used
    reference = "The cat sat on the mat."
    scores = minilm_bertscore.score(
        [reference, "A cat was sitting on the mat.", "Stock markets fell sharply today."],
        [reference, reference, reference],
    )["bertscore_f1_max"]
    assert scores.dtype == torch.float64
    assert scores[0].item() == pytest.approx(1.0, abs=1e-5)
    assert scores[1].item() > scores[2].item() + 0.3  # paraphrase ~0.91, unrelated ~0.10 (raw, not rescaled)


def test_bertscore_aggregates_over_references(minilm_bertscore):
    candidate = "The cat sat on the mat."
    single = minilm_bertscore.score([candidate, candidate], [["A cat was sitting on the mat."], ["It rained."]])
    multi = minilm_bertscore.score([candidate], [["A cat was sitting on the mat.", "It rained.", candidate]])
    paraphrase, unrelated = single["bertscore_f1_max"].tolist()
    assert multi["bertscore_f1_max"].item() == pytest.approx(1.0, abs=1e-5)
    assert multi["bertscore_f1_min"].item() == pytest.approx(unrelated, abs=1e-5)
    assert multi["bertscore_f1_mean"].item() == pytest.approx((paraphrase + unrelated + 1.0) / 3, abs=1e-5)


def test_bertscore_refuses_missing_baseline():
    # bert-score ships no baseline for MiniLM: the error comes before the model is loaded.
    with pytest.raises(ValueError, match="no BERTScore baseline"):
        BERTScore(rescale_with_baseline=True)
