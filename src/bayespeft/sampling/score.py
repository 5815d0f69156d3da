"""``bayespeft score``: correctness, uncertainty and text quality of the generations in sample stores.

Each store (``--store``, repeatable: one per method) is read with its fingerprint, grouped per
example (only examples with all their samples are scored) and joined with the dataset records it
was sampled from (dataset, split and data seed from the fingerprint, the folder from
``--data-dir``), so every sample is judged against all references of its example.

Open-ended QA (TriviaQA, TruthfulQA). An answer is the first line of the generated text. Each
sample is judged by ``--correctness``: ``em`` normalised exact match against any alias (default),
``f1`` token F1 >= ``--f1-threshold``, ``nli`` mutual entailment >= ``--nli-threshold`` with
``--nli-model``, ``llm`` an LLM judge (``--judge-model``, default the offline SmolLM2). A
question's answer is its most likely sample (highest sequence log-likelihood): its correctness
gives the accuracy and the target that the uncertainty scores of
:func:`~bayespeft.metrics.semantic.generative_uncertainty` (higher = more uncertain) are evaluated
against, by AUROC for predicting wrong answers and AURAC, with paired bootstrap CIs over
questions, and drawn as accuracy-rejection curves. Meaning classes for semantic entropy come from
``--cluster``: ``nli`` bidirectional entailment (default when ``--nli-model`` is given) or
``embedding`` cosine similarity of MiniLM sentence embeddings (the offline default).

Summarisation (DialogSum). Every sample is scored by ROUGE-1/2/L F1 and BERTScore F1, each as the
max, mean and min over the dialogue's references; the table gives their means over all samples,
and a kernel-density figure shows the per-sample score distributions, one panel per metric and
one curve per store.

Writes ``scores.json``, ``scores.md``, one ``examples_<label>.jsonl`` per store (every sample's
answer and scores) and the figures (PNG and PDF) into ``--output-dir``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import write_json_atomic, write_text_atomic
from ..choices import CLUSTERINGS, CORRECTNESS_JUDGES, REFERENCE_AGGREGATES
from ..config import check_seed
from ..data.generative import QAExample, load_generative_dataset
from ..errors import ConfigError, DataError
from ..metrics import (
    ROUGE_TYPES,
    AnswerSamples,
    BERTScore,
    EmbeddingEquivalence,
    EntailmentEquivalence,
    EquivalenceJudge,
    LLMJudge,
    NLICorrectnessJudge,
    NLIModel,
    bootstrap_ci,
    exact_match,
    generative_uncertainty,
    plot_accuracy_rejection,
    rouge_scores,
    selective_prediction,
    token_f1,
)
from ..metrics.selective import PALETTE
from ..rundir import check_writable
from ..sample_store import SampleStore

__all__ = [
    "CLUSTERINGS",
    "CORRECTNESS_JUDGES",
    "SUMMARIZATION_DATASETS",
    "CorrectnessJudge",
    "ScoreSettings",
    "ScoredStore",
    "answer_text",
    "load_scored_store",
    "score",
]

#: Datasets whose generations are summaries (scored by ROUGE and BERTScore), not short answers.
SUMMARIZATION_DATASETS = frozenset({"dialogsum"})
#: Uncertainty scores drawn in the accuracy-rejection figure (the answer counts are coarse; all are in the table).
FIGURE_SCORES = (
    "predictive_entropy",
    "length_normalised_entropy",
    "semantic_entropy",
    "discrete_semantic_entropy",
    "lexical_dissimilarity",
    "log_likelihood_variance",
)
#: Summary metrics: the three ROUGE types and BERTScore F1, each aggregated over references.
SUMMARY_METRICS = (*ROUGE_TYPES, "bertscore_f1")


# ---------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ScoreSettings:
    """The settings of one scoring: the stores, the output folder, the judges and the bootstrap."""

    store: list[Path]
    output_dir: Path
    data_dir: str | None
    correctness: str
    f1_threshold: float
    nli_model: str | None
    nli_threshold: float
    judge_model: str
    cluster: str | None
    embedding_model: str
    similarity_threshold: float
    bertscore_model: str
    kde_aggregate: str
    n_boot: int
    confidence: float
    seed: int


@dataclass(frozen=True)
class ScoredExample:
    """One example's complete samples (by sample index) with its dataset record."""

    example: QAExample
    texts: tuple[str, ...]
    log_likelihoods: tuple[float, ...]
    num_tokens: tuple[int, ...]


@dataclass(frozen=True)
class ScoredStore:
    """A store's complete examples joined with their records, and how many incomplete ones were left out."""

    path: Path
    fingerprint: dict[str, Any]
    examples: list[ScoredExample]
    incomplete: int

    @property
    def method(self) -> str:
        return self.fingerprint["method"]

    @property
    def samples_per_example(self) -> int:
        return self.fingerprint["samples_per_example"]


def load_scored_store(path: Path, data_dir: str | None) -> ScoredStore:
    """Read ``path`` and join its samples with the records of the data it was sampled from."""
    with SampleStore.open_existing(path) as store:
        fingerprint, rows = store.fingerprint, list(store.rows())
    extra = fingerprint.get("extra", {})
    if "data_seed" not in extra or "data_source" not in extra:
        raise ConfigError(f"{path}: not made by `bayespeft sample` (its fingerprint names no data seed and source)")
    if extra["data_source"] == "local" and data_dir is None:
        raise ConfigError(f"--data-dir: {path} was sampled from local data files; name their folder")
    if not rows:
        raise DataError(f"{path}: the store holds no samples")
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(row.example_uid, []).append(row)
    records = load_generative_dataset(
        fingerprint["dataset"],
        fingerprint["split"],
        data_dir,
        limit=max(row.example_index for row in rows) + 1,
        seed=extra["data_seed"],
    )
    examples, incomplete = [], 0
    for uid, samples in groups.items():
        index = samples[0].example_index
        found = records[index].uid if index < len(records) else None
        if found != uid:
            raise DataError(
                f"{path}: example {index} is {uid!r} in the store but {found!r} in the data; "
                "score with the data the store was sampled from"
            )
        if len(samples) != fingerprint["samples_per_example"]:
            incomplete += 1
            continue
        examples.append(
            ScoredExample(
                example=records[index],
                texts=tuple(row.text for row in samples),
                log_likelihoods=tuple(row.log_likelihood for row in samples),
                num_tokens=tuple(len(row.token_ids) for row in samples),
            )
        )
    if not examples:
        raise DataError(f"{path}: no example has all its samples; finish sampling first (rerun bayespeft sample)")
    return ScoredStore(path, fingerprint, examples, incomplete)


def answer_text(text: str, summary: bool) -> str:
    """The answer a generation gives: its first non-empty line for QA, the whole stripped text for a summary."""
    stripped = text.strip()
    return stripped if summary else stripped.split("\n", 1)[0].strip()


def _labels(stores: Sequence[ScoredStore]) -> list[str]:
    """A short unique name per store: its method, with the file stem when methods repeat."""
    methods = [store.method for store in stores]
    labels = [
        m if methods.count(m) == 1 else f"{m}-{store.path.stem}" for m, store in zip(methods, stores, strict=True)
    ]
    return [label if labels.count(label) == 1 else f"{label}-{i}" for i, label in enumerate(labels)]


def _decoding(fingerprint: dict[str, Any]) -> str:
    """How a store's samples were decoded, in words: strategy and weights."""
    decoding = fingerprint["decoding"]
    strategy = decoding["strategy"]
    if strategy == "beam":
        strategy = f"beam x{decoding['num_beams']}"
    elif strategy == "sample":
        cuts = [f"T={decoding['temperature']:g}"]
        cuts += [f"top-k {decoding['top_k']}"] if decoding["top_k"] else []
        cuts += [f"top-p {decoding['top_p']:g}"] if decoding["top_p"] < 1 else []
        strategy = f"sample ({', '.join(cuts)})"
    return f"{strategy}, posterior mean" if decoding["posterior_mean"] else strategy


def _file_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


# ------------------------------------------------------------------------------------------ judges


@dataclass(frozen=True)
class CorrectnessJudge:
    """A graded score per answer (``grade(answers, references, questions)``) and the verdict on it."""

    description: dict[str, Any]
    grade: Callable[[list[str], list[Sequence[str]], list[str]], Tensor]
    verdict: Callable[[Tensor], Tensor]


def _device() -> str | None:
    return "cuda" if torch.cuda.is_available() else None


def build_judges(settings: ScoreSettings) -> tuple[CorrectnessJudge, dict[str, Any], EquivalenceJudge]:
    """The correctness judge, and the meaning-class judge with its description; an NLI model is loaded once."""
    cluster = settings.cluster or ("nli" if settings.nli_model else "embedding")
    for what, choice in (("--correctness", settings.correctness), ("--cluster", cluster)):
        if choice == "nli" and not settings.nli_model:
            raise ConfigError(f"{what} nli: name the NLI model with --nli-model (hub id or folder)")
    if not 0 <= settings.nli_threshold <= 1:
        raise ConfigError(f"--nli-threshold: must be in [0, 1] (got {settings.nli_threshold})")
    if not 0 <= settings.f1_threshold <= 1:
        raise ConfigError(f"--f1-threshold: must be in [0, 1] (got {settings.f1_threshold})")
    if not -1 <= settings.similarity_threshold <= 1:
        raise ConfigError(f"--similarity-threshold: must be in [-1, 1] (got {settings.similarity_threshold})")
    nli = NLIModel.from_pretrained(settings.nli_model, device=_device()) if settings.nli_model else None

    if settings.correctness == "em":
        judge = CorrectnessJudge(
            {"judge": "em", "rule": "normalised exact match against any alias"},
            lambda answers, refs, questions: _per_pair(exact_match, answers, refs),
            lambda grades: grades == 1,
        )
    elif settings.correctness == "f1":
        threshold = settings.f1_threshold
        judge = CorrectnessJudge(
            {"judge": "f1", "rule": f"best token F1 over aliases >= {threshold:g}", "threshold": threshold},
            lambda answers, refs, questions: _per_pair(token_f1, answers, refs),
            lambda grades: grades >= threshold,
        )
    elif settings.correctness == "nli":
        entailment = NLICorrectnessJudge(nli, threshold=settings.nli_threshold)
        judge = CorrectnessJudge(
            {
                "judge": "nli",
                "rule": f"mutual entailment with some alias >= {settings.nli_threshold:g}",
                "model": settings.nli_model,
                "threshold": settings.nli_threshold,
            },
            entailment.scores,
            lambda grades: grades >= entailment.threshold,
        )
    else:
        llm = LLMJudge.from_pretrained(settings.judge_model, device=_device())
        judge = CorrectnessJudge(
            {"judge": "llm", "rule": "P(yes) > 0.5 from the judge's next-token logits", "model": settings.judge_model},
            llm.probability_correct,
            lambda grades: grades > 0.5,
        )
    if cluster == "nli":
        clustering = {"judge": "nli", "model": settings.nli_model, "threshold": settings.nli_threshold}
        equivalence: EquivalenceJudge = EntailmentEquivalence(nli, threshold=settings.nli_threshold)
    else:
        clustering = {
            "judge": "embedding",
            "model": settings.embedding_model,
            "threshold": settings.similarity_threshold,
        }
        equivalence = EmbeddingEquivalence.from_pretrained(
            settings.embedding_model, threshold=settings.similarity_threshold, device=_device()
        )
    return judge, clustering, equivalence


def _per_pair(metric: Callable[[str, Sequence[str]], float], answers: list[str], refs: list[Sequence[str]]) -> Tensor:
    return torch.tensor([metric(a, r) for a, r in zip(answers, refs, strict=True)], dtype=torch.float64)


# --------------------------------------------------------------------------------------------- QA


def score_qa(
    store: ScoredStore,
    label: str,
    judge: CorrectnessJudge,
    equivalence: EquivalenceJudge,
    settings: ScoreSettings,
) -> dict[str, Any]:
    """Correctness, accuracy, uncertainty scores and their AUROC/AURAC of one QA store; writes its files."""
    items = store.examples
    answers = [[answer_text(t, summary=False) for t in item.texts] for item in items]
    grades = judge.grade(
        [a for per in answers for a in per],
        [item.example.references for item in items for _ in item.texts],
        [item.example.question for item in items for _ in item.texts],
    ).reshape(len(items), -1)
    correct = judge.verdict(grades)
    best = [max(range(len(item.texts)), key=item.log_likelihoods.__getitem__) for item in items]
    best_correct = torch.stack([correct[i, b] for i, b in enumerate(best)])
    uncertainty = generative_uncertainty(
        [
            AnswerSamples(
                answers=per,
                log_likelihoods=item.log_likelihoods,
                num_tokens=item.num_tokens if min(item.num_tokens) >= 1 else None,
                question=item.example.question,
            )
            for per, item in zip(answers, items, strict=True)
        ],
        equivalence,
    )
    selective = selective_prediction(uncertainty, best_correct, settings.n_boot, settings.confidence, settings.seed)
    accuracy = bootstrap_ci(
        lambda u, c: c.double().mean().item(),
        torch.zeros(len(items)),
        best_correct,
        settings.n_boot,
        settings.confidence,
        settings.seed,
    )
    figures = []
    title = f"{label} on {store.fingerprint['dataset']} ({store.fingerprint['split']})"
    curves = {name: values for name, values in uncertainty.items() if name in FIGURE_SCORES}
    for suffix in ("png", "pdf"):
        path = settings.output_dir / f"arc_{_file_label(label)}.{suffix}"
        figures.append(plot_accuracy_rejection(curves, best_correct, path, title))
    records = [
        {
            "uid": item.example.uid,
            "question": item.example.question,
            "references": list(item.example.references),
            "answers": per,
            "log_likelihoods": list(item.log_likelihoods),
            "grades": grades[i].tolist(),
            "correct": correct[i].tolist(),
            "most_likely": best[i],
            **{name: values[i].item() for name, values in uncertainty.items()},
        }
        for i, (item, per) in enumerate(zip(items, answers, strict=True))
    ]
    return {
        **_store_facts(store, label),
        "accuracy": accuracy.as_dict(),
        "sample_accuracy": correct.double().mean().item(),
        "selective": {name: {metric: ci.as_dict() for metric, ci in cis.items()} for name, cis in selective.items()},
        "figures": figures,
        "examples_file": _write_records(settings.output_dir, label, records),
    }


# -------------------------------------------------------------------------------------- summaries


def score_summaries(store: ScoredStore, label: str, bertscore: BERTScore, settings: ScoreSettings) -> dict[str, Any]:
    """ROUGE and BERTScore F1 of every sample of one summarisation store; writes its examples file."""
    items = store.examples
    summaries = [answer_text(t, summary=True) for item in items for t in item.texts]
    references = [item.example.references for item in items for _ in item.texts]
    per_sample = {**rouge_scores(summaries, references), **bertscore.score(summaries, references)}
    samples = len(items[0].texts)
    records = [
        {
            "uid": item.example.uid,
            "references": list(item.example.references),
            "summaries": summaries[i * samples : (i + 1) * samples],
            "log_likelihoods": list(item.log_likelihoods),
            **{name: values[i * samples : (i + 1) * samples].tolist() for name, values in per_sample.items()},
        }
        for i, item in enumerate(items)
    ]
    return {
        **_store_facts(store, label),
        "means": {name: values.mean().item() for name, values in per_sample.items()},
        "per_sample": {name: values.tolist() for name, values in per_sample.items()},
        "examples_file": _write_records(settings.output_dir, label, records),
    }


def plot_score_densities(
    per_store: dict[str, dict[str, list[float]]], metrics: Sequence[str], path: Path, title: str
) -> Path:
    """Kernel-density estimates of per-sample scores: one panel per metric, one curve per store.

    A store whose scores of a metric take a single value gets a vertical line there (no density).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy.stats import gaussian_kde

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.1 * len(metrics), 2.8), squeeze=False)
    try:
        for ax, metric in zip(axes[0], metrics, strict=True):
            values = {label: np.asarray(scores[metric], dtype=float) for label, scores in per_store.items()}
            low = min(0.0, *(v.min() for v in values.values()))
            high = max(1.0, *(v.max() for v in values.values()))
            grid = np.linspace(low, high, 400)
            for colour, (label, v) in zip(itertools.cycle(PALETTE), values.items()):
                legend = f"{label} (mean {v.mean():.3f})"
                if np.unique(v).size >= 2:
                    ax.plot(grid, gaussian_kde(v)(grid), color=colour, lw=1.4, label=legend)
                else:
                    ax.axvline(v[0], color=colour, lw=1.4, ls="--", label=legend)
            ax.set_title(metric.replace("_", " "), fontsize=9)
            ax.set_xlabel("score per sample", fontsize=8)
            ax.set_xlim(low, high)
            ax.grid(alpha=0.25, lw=0.5)
            ax.legend(fontsize=6.5, frameon=False, loc="upper left")
        axes[0][0].set_ylabel("density", fontsize=8)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=200, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ output


def _store_facts(store: ScoredStore, label: str) -> dict[str, Any]:
    return {
        "store": str(store.path),
        "label": label,
        "method": store.method,
        "decoding": _decoding(store.fingerprint),
        "samples_per_example": store.samples_per_example,
        "examples": len(store.examples),
        "incomplete_examples_skipped": store.incomplete,
        "fingerprint": store.fingerprint,
    }


def _write_records(out: Path, label: str, records: list[dict[str, Any]]) -> str:
    path = out / f"examples_{_file_label(label)}.jsonl"
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return str(path)


def _ci(value: dict[str, Any]) -> str:
    if math.isnan(value["estimate"]):
        return "n/a"
    if math.isnan(value["low"]):
        return f"{value['estimate']:.3f}"
    return f"{value['estimate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"{c:.4f}" if isinstance(c, float) else str(c) for c in row) + " |")
    return lines


def qa_markdown(payload: dict[str, Any]) -> str:
    """The QA tables: accuracy per store, then AUROC/AURAC with CIs per store and uncertainty score."""
    correctness, clustering = payload["correctness"], payload["clustering"]
    level = f"{100 * payload['confidence']:g}%"
    lines = [
        f"# Generation scores: {payload['dataset']} ({payload['split']})",
        "",
        f"Correctness: {correctness['judge']} ({correctness['rule']}), of the most likely sample per question. "
        f"Meaning classes: {clustering['judge']} ({clustering['model']}, threshold {clustering['threshold']:g}). "
        f"Uncertainty scores: higher = more uncertain; AUROC for predicting wrong answers, AURAC = area under the "
        f"accuracy-rejection curve; {level} bootstrap CIs over questions ({payload['n_boot']} resamples).",
        "",
        *_table(
            ["store", "method", "decoding", "questions", "S", "accuracy", "sample accuracy"],
            [
                [
                    s["label"],
                    s["method"],
                    s["decoding"],
                    s["examples"],
                    s["samples_per_example"],
                    _ci(s["accuracy"]),
                    s["sample_accuracy"],
                ]
                for s in payload["stores"]
            ],
        ),
        "",
        *_table(
            ["store", "uncertainty score", "AUROC", "AURAC"],
            [
                [s["label"], name, _ci(cis["auroc"]), _ci(cis["aurac"])]
                for s in payload["stores"]
                for name, cis in s["selective"].items()
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def summary_markdown(payload: dict[str, Any]) -> str:
    """The summarisation table: mean ROUGE / BERTScore F1 (max, mean, min over references) per store."""
    names = [f"{metric}_{agg}" for metric in SUMMARY_METRICS for agg in REFERENCE_AGGREGATES]
    bertscore = payload["bertscore"]
    lines = [
        f"# Generation scores: {payload['dataset']} ({payload['split']})",
        "",
        "Means over all samples (dialogues x S) of ROUGE-1/2/L F1 and BERTScore F1, each the max, mean or min over "
        f"a dialogue's references. BERTScore encoder: {bertscore['model']} (layer {bertscore['num_layers']}), "
        "not comparable with published BERTScores of other encoders.",
        "",
        *_table(
            ["store", "method", "decoding", "dialogues", "S", *names],
            [
                [s["label"], s["method"], s["decoding"], s["examples"], s["samples_per_example"]]
                + [s["means"][name] for name in names]
                for s in payload["stores"]
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- run


def score(
    stores: Sequence[str | Path],
    output_dir: str | Path,
    *,
    data_dir: str | None = None,
    correctness: str = "em",
    f1_threshold: float = 0.5,
    nli_model: str | None = None,
    nli_threshold: float = 0.5,
    judge_model: str = "smollm2-135m",
    cluster: str | None = None,
    embedding_model: str = "minilm-l6",
    similarity_threshold: float = 0.8,
    bertscore_model: str = "minilm-l6",
    kde_aggregate: str = "max",
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Score sample stores against the references, as ``bayespeft score`` does; returns the scores.json payload.

    QA stores get correctness (``correctness`` judge) and uncertainty scores with bootstrap CIs,
    summary stores ROUGE and BERTScore; scores.json, scores.md (the payload's ``markdown``) and the
    figures go to ``output_dir``. One dataset and split at a time; one store per method.
    """
    settings = ScoreSettings(
        store=[Path(p) for p in stores],
        output_dir=Path(output_dir),
        data_dir=data_dir,
        correctness=correctness,
        f1_threshold=f1_threshold,
        nli_model=nli_model,
        nli_threshold=nli_threshold,
        judge_model=judge_model,
        cluster=cluster,
        embedding_model=embedding_model,
        similarity_threshold=similarity_threshold,
        bertscore_model=bertscore_model,
        kde_aggregate=kde_aggregate,
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
    )
    choices = (
        ("--correctness", correctness, CORRECTNESS_JUDGES),
        ("--cluster", cluster, (None, *CLUSTERINGS)),
        ("--kde-aggregate", kde_aggregate, REFERENCE_AGGREGATES),
    )
    for flag, value, allowed in choices:
        if value not in allowed:
            known = ", ".join(str(choice) for choice in allowed if choice is not None)
            raise ConfigError(f"{flag}: unknown choice {value!r} (choose one of {known})")
    if settings.n_boot < 1:
        raise ConfigError(f"--n-boot: must be >= 1 (got {settings.n_boot})")
    if not 0 < settings.confidence < 1:
        raise ConfigError(f"--confidence: must be in (0, 1) (got {settings.confidence})")
    check_seed(settings.seed, "--seed")
    if settings.output_dir.exists() and not settings.output_dir.is_dir():
        raise ConfigError(f"--output-dir {settings.output_dir}: exists and is not a directory")
    check_writable(settings.output_dir, "--output-dir")
    if len(set(settings.store)) != len(settings.store):
        raise ConfigError("--store: a store is named twice")
    stores = [load_scored_store(path, settings.data_dir) for path in settings.store]
    first = stores[0].fingerprint
    for store in stores[1:]:
        if (store.fingerprint["dataset"], store.fingerprint["split"]) != (first["dataset"], first["split"]):
            raise ConfigError(
                f"--store: {store.path} holds {store.fingerprint['dataset']} {store.fingerprint['split']} but "
                f"{stores[0].path} holds {first['dataset']} {first['split']}; score one dataset and split at a time"
            )
    labels = _labels(stores)
    payload: dict[str, Any] = {
        "dataset": first["dataset"],
        "split": first["split"],
        "n_boot": settings.n_boot,
        "confidence": settings.confidence,
        "seed": settings.seed,
    }
    summarization = first["dataset"] in SUMMARIZATION_DATASETS
    if summarization:  # models load (and settings are checked) before anything is written
        bertscore = BERTScore(model=settings.bertscore_model)
    else:
        judge, clustering, equivalence = build_judges(settings)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    if summarization:
        payload["task"] = "summarization"
        payload["bertscore"] = {"model": bertscore.model, "num_layers": bertscore.num_layers}
        payload["stores"] = [
            score_summaries(s, label, bertscore, settings) for s, label in zip(stores, labels, strict=True)
        ]
        metrics = [f"{metric}_{settings.kde_aggregate}" for metric in SUMMARY_METRICS]
        per_store = {s["label"]: s["per_sample"] for s in payload["stores"]}
        title = f"Per-sample scores on {first['dataset']} ({first['split']}), {settings.kde_aggregate} over references"
        payload["figures"] = [
            str(plot_score_densities(per_store, metrics, settings.output_dir / f"score_density.{suffix}", title))
            for suffix in ("png", "pdf")
        ]
        markdown = summary_markdown(payload)
    else:
        payload["task"] = "qa"
        payload["correctness"] = judge.description
        payload["clustering"] = clustering
        payload["stores"] = [
            score_qa(s, label, judge, equivalence, settings) for s, label in zip(stores, labels, strict=True)
        ]
        markdown = qa_markdown(payload)
    write_text_atomic(settings.output_dir / "scores.md", markdown)
    write_json_atomic(settings.output_dir / "scores.json", payload)
    return {**payload, "markdown": markdown}
