"""Per-question cost of the generative uncertainty scores: clustering, entropies, ROUGE-L, and NLI calls.

For S answers per question (default S in {5, 10, 20}) this times, per question, the parts of
``bayespeft.metrics.semantic.generative_uncertainty``:

* ``cluster_embedding``: ``cluster_answers`` with the offline MiniLM embedding judge (the default offline);
* ``entropies``: given the classes, semantic and discrete semantic entropy, predictive and length-normalised
  entropy, log-likelihood variance and the distinct-answer count;
* ``lexical``: ``lexical_similarity`` (mean pairwise ROUGE-L F1 over the S(S-1)/2 pairs);
* ``total``: ``generative_uncertainty`` end to end with the MiniLM judge (a check that the parts add up).

No NLI model is available offline, so NLI clustering (``EntailmentEquivalence``) is measured in two ways:
the number of ``entailment_probs`` calls and premise-hypothesis pairs per question, counted through a
counting ``EntailmentScorer`` (exact: it does not depend on the model), and the wall time of
``EntailmentEquivalence`` over a STAND-IN scorer: a randomly initialised 6-layer, 384-hidden BERT sequence
classifier with 3 labels (MiniLM-sized, built from a config; its verdicts are meaningless, only its cost
per pair is informative; a real deberta-large-mnli has ~20x its parameters).

Answers: the rows of a real sample store (``--store``, grouped by example uid, the first S samples of each
example with at least S), else answer sets built from TriviaQA: each question's S answers mix its accepted
aliases with other questions' gold answers and aliases (drawn with repeats, as sampling gives), with
synthetic token log-probabilities. Each timing is the median of ``--repeats`` passes over the questions,
divided by the number of questions.

    OMP_NUM_THREADS=1 python benchmarks/semantic_entropy_cost.py --questions 30 \
        --out benchmarks/results/semantic_entropy_cost.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bayespeft.metrics.judges import NLIModel
from bayespeft.metrics.semantic import (
    AnswerSamples,
    EmbeddingEquivalence,
    EntailmentEquivalence,
    cluster_answers,
    count_distinct_answers,
    discrete_semantic_entropy,
    generative_uncertainty,
    lexical_similarity,
    log_likelihood_variance,
    semantic_entropy,
    sequence_entropy,
)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- answers


def question_of(prompt: str) -> str:
    """The last ``Question: ...`` of a prompt, without the trailing ``Answer:``."""
    text = prompt.rsplit("Question:", 1)[-1]
    return text.rsplit("Answer:", 1)[0].strip()


def store_answers(path: Path, samples: int, questions: int) -> list[AnswerSamples]:
    """The first ``samples`` answers of the first ``questions`` examples with at least that many in a store."""
    from bayespeft.sample_store import SampleStore

    groups: dict[str, list[Any]] = defaultdict(list)
    store = SampleStore.open_existing(path)
    try:
        for row in store.rows():
            groups[row.example_uid].append(row)
    finally:
        store.close()
    result = []
    for rows in groups.values():
        rows = sorted(rows, key=lambda r: r.sample_index)[:samples]
        if len(rows) < samples:
            continue
        result.append(
            AnswerSamples(
                answers=[r.text.strip().split("\n", 1)[0].strip() for r in rows],
                log_likelihoods=[min(0.0, r.log_likelihood) for r in rows],
                num_tokens=[max(1, len(r.token_ids)) for r in rows],
                question=question_of(rows[0].prompt),
            )
        )
        if len(result) == questions:
            break
    return result


def load_triviaqa(path: Path) -> list[dict[str, Any]]:
    """TriviaQA records (``context``, ``answer``, ``aliases``)."""
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


def triviaqa_answers(records: list[dict[str, Any]], samples: int, questions: int, seed: int) -> list[AnswerSamples]:
    """S answers per question: aliases of the gold answer mixed with other questions' answers, with repeats.

    Per question: a probability ``p`` of answering correctly (uniform in [0.1, 0.9]); a correct draw is the
    gold answer half the time, else one of up to 4 other aliases; a wrong draw is one of 6 distractor
    answers (other questions' gold answers or one of their aliases). Each answer gets one synthetic
    token log-probability per word (mean about -0.9), so the log-likelihood is their sum.
    """
    rng = random.Random(seed)
    result = []
    for index in range(questions):
        record = records[index]
        aliases = [a for a in dict.fromkeys(record["aliases"]) if a != record["answer"]]
        correct_pool = [record["answer"], *rng.sample(aliases, min(4, len(aliases)))]
        distractors = []
        for other in rng.sample(range(len(records)), 6):
            other_record = records[other if other != index else (other + 1) % len(records)]
            distractors.append(rng.choice([other_record["answer"], *other_record["aliases"][:3]]))
        p_correct = rng.uniform(0.1, 0.9)
        answers = []
        for _ in range(samples):
            if rng.random() < p_correct:
                answers.append(record["answer"] if rng.random() < 0.5 else rng.choice(correct_pool))
            else:
                answers.append(rng.choice(distractors))
        num_tokens = [max(1, len(a.split())) for a in answers]
        log_likelihoods = [sum(-rng.expovariate(1 / 0.9) for _ in range(n)) for n in num_tokens]
        result.append(AnswerSamples(answers, log_likelihoods, num_tokens, question=question_of(record["context"])))
    return result


# ------------------------------------------------------------------------------------------ scorers


class CountingScorer:
    """An ``EntailmentScorer`` that records each call's number of pairs and says "no entailment"."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def entailment_probs(self, premises: Sequence[str], hypotheses: Sequence[str]) -> Tensor:
        """Zeros, one per pair; the pair count is recorded."""
        self.calls.append(len(premises))
        return torch.zeros(len(premises), dtype=torch.float64)


def stand_in_nli(tokenizer: Any, seed: int, batch_size: int) -> NLIModel:
    """STAND-IN NLI model: a random MiniLM-sized BERT classifier (6 layers, 384 hidden, 3 labels)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        num_labels=3,
        id2label={0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"},
        label2id={"CONTRADICTION": 0, "NEUTRAL": 1, "ENTAILMENT": 2},
    )
    return NLIModel(BertForSequenceClassification(config), tokenizer, batch_size=batch_size)


# ------------------------------------------------------------------------------------------- timing


def entropies(sample: AnswerSamples, classes: list[int]) -> None:
    """Every score of ``generative_uncertainty`` that needs only the classes and likelihoods."""
    semantic_entropy(sample.log_likelihoods, classes)
    discrete_semantic_entropy(classes)
    sequence_entropy(sample.log_likelihoods)
    if sample.num_tokens is not None:
        sequence_entropy(sample.log_likelihoods, sample.num_tokens)
    log_likelihood_variance(sample.log_likelihoods)
    count_distinct_answers(sample.answers)


def per_question_ms(task: Callable[[], None], count: int, repeats: int) -> dict[str, Any]:
    """Median (and all) per-question milliseconds of ``repeats`` timed passes, after one warm-up pass."""
    task()
    passes = []
    for _ in range(repeats):
        began = time.perf_counter()
        task()
        passes.append((time.perf_counter() - began) * 1000.0 / count)
    return {"median_ms": statistics.median(passes), "passes_ms": passes}


def measure(
    samples: list[AnswerSamples], embedding: EmbeddingEquivalence, nli: NLIModel, args: argparse.Namespace
) -> dict[str, Any]:
    """Timings and NLI call counts for one S."""
    q = len(samples)
    classes = [cluster_answers(s.answers, embedding, s.question) for s in samples]
    counter = CountingScorer()
    counting = EntailmentEquivalence(counter)
    calls, pairs = [], []
    for s in samples:
        before = len(counter.calls)
        cluster_answers(s.answers, counting, s.question)
        calls.append(len(counter.calls) - before)
        pairs.append(sum(counter.calls[before:]))
    distinct = [len({a.strip() for a in s.answers}) for s in samples]
    nli_samples = samples[: args.nli_questions]
    stand_in = EntailmentEquivalence(nli)
    timings = {
        "cluster_embedding": per_question_ms(
            lambda: [cluster_answers(s.answers, embedding, s.question) for s in samples], q, args.repeats
        ),
        "entropies": per_question_ms(
            lambda: [entropies(s, c) for s, c in zip(samples, classes, strict=True)], q, args.repeats
        ),
        "lexical": per_question_ms(lambda: [lexical_similarity(s.answers) for s in samples], q, args.repeats),
        "total": per_question_ms(lambda: generative_uncertainty(samples, embedding), q, args.repeats),
        "cluster_nli_stand_in": per_question_ms(
            lambda: [cluster_answers(s.answers, stand_in, s.question) for s in nli_samples],
            len(nli_samples),
            args.repeats,
        ),
    }
    nli_pairs = sum(pairs[: len(nli_samples)])
    return {
        "questions": q,
        "nli_questions": len(nli_samples),
        "distinct_answers_mean": statistics.mean(distinct),
        "distinct_answers_max": max(distinct),
        "semantic_sets_mean": statistics.mean(max(c) + 1 for c in classes),
        "nli_calls_per_question_mean": statistics.mean(calls),
        "nli_pairs_per_question_mean": statistics.mean(pairs),
        "nli_pairs_per_question_max": max(pairs),
        "nli_pairs_formula_check": all(p == d * (d - 1) for p, d in zip(pairs, distinct, strict=True)),
        "nli_forward_batches_per_question_mean": statistics.mean(math.ceil(p / nli.batch_size) for p in pairs),
        "stand_in_ms_per_pair": timings["cluster_nli_stand_in"]["median_ms"] * len(nli_samples) / max(1, nli_pairs),
        "timings": timings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="a sample store (.sqlite) with real answers")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "triviaqa" / "triviaqa_sm_sub.jsonl"))
    parser.add_argument("--samples", default="5,10,20", help="comma-separated S values")
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--nli-questions", type=int, default=10, help="questions timed with the stand-in NLI model")
    parser.add_argument("--nli-batch-size", type=int, default=16, help="NLIModel batch size (its default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "semantic_entropy_cost.json"))
    args = parser.parse_args()

    embedding = EmbeddingEquivalence.from_pretrained("minilm-l6")
    nli = stand_in_nli(embedding.tokenizer, args.seed, args.nli_batch_size)
    records = None if args.store else load_triviaqa(Path(args.data))
    results: dict[str, Any] = {}
    for s in (int(v) for v in args.samples.split(",")):
        if args.store:
            samples = store_answers(Path(args.store), s, args.questions)
        else:
            samples = triviaqa_answers(records, s, args.questions, args.seed)
        if not samples:
            print(f"S={s}: no example has {s} samples in the store; skipped", flush=True)
            continue
        results[str(s)] = measure(samples, embedding, nli, args)
        print(f"S={s} done", flush=True)

    header = (
        f"{'S':>3} {'D':>5} {'cluster MiniLM':>15} {'entropies':>10} {'ROUGE-L':>9} {'total':>8} "
        f"{'NLI calls':>10} {'NLI pairs':>10} {'stand-in NLI':>13} {'ms/pair':>8}"
    )
    print("per-question ms, median of", args.repeats, "passes")
    print(header)
    for s, r in results.items():
        t = {name: v["median_ms"] for name, v in r["timings"].items()}
        print(
            f"{s:>3} {r['distinct_answers_mean']:>5.1f} {t['cluster_embedding']:>15.2f} {t['entropies']:>10.3f} "
            f"{t['lexical']:>9.2f} {t['total']:>8.2f} {r['nli_calls_per_question_mean']:>10.2f} "
            f"{r['nli_pairs_per_question_mean']:>10.1f} {t['cluster_nli_stand_in']:>13.1f} "
            f"{r['stand_in_ms_per_pair']:>8.2f}"
        )
    record = {
        "source": args.store or args.data,
        "answers": "sample store" if args.store else "TriviaQA aliases + other questions' answers, synthetic LLs",
        "embedding_judge": "minilm-l6 (all-MiniLM-L6-v2), threshold 0.8",
        "nli_stand_in": "STAND-IN: random BertForSequenceClassification, 6 layers, hidden 384, 12 heads, 3 labels",
        "nli_stand_in_parameters": sum(p.numel() for p in nli.model.parameters()),
        "nli_pairs_formula": "one batched entailment_probs call per question with D(D-1) pairs (D distinct "
        "answers after stripping; 0 calls when D = 1); at most S(S-1)",
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "results": results,
        "args": vars(args),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
