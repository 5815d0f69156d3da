"""Evaluation: posterior samples per example, the shared predictive rule, metrics and files."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from tqdm.auto import tqdm

from .calibration import apply_temperature
from .checkpoint import write_text_atomic
from .config import EvalConfig
from .data.classification import task_metric
from .errors import ConfigError, NumericalError
from .methods.base import Method
from .metrics import UncertaintyMetrics
from .tasks.base import Example, Task
from .tasks.generative import GenerativeTask, mc2_score
from .tasks.sequence_classification import SequenceClassificationTask


@torch.no_grad()
def predict(
    model: nn.Module,
    method: Method,
    task: Task,
    encoded: Sequence[Any],
    config: EvalConfig,
    accelerator: Accelerator,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample class probabilities [N, S, C] and labels [N], in dataset order.

    The method decides how its draws are made (:meth:`Method.predictive_samples`); N = 0 is the
    posterior mean. Each process takes every P-th batch; results are gathered and re-ordered.
    """
    rows = []
    for items, batch in _sharded_batches(model, method, task, list(encoded), config, accelerator, progress):
        with accelerator.autocast():
            probs = method.predictive_samples(model, task, batch, config.n_samples, config.samples_per_pass)
        rows.extend((it.index, probs[i].cpu(), it.label) for i, it in enumerate(items))
    rows = _gathered_in_order(rows, accelerator)
    return torch.stack([r[1] for r in rows]), torch.tensor([r[2] for r in rows])


def _sharded_batches(
    model: nn.Module,
    method: Method,
    task: Task | GenerativeTask,
    encoded: list[Any],
    config: EvalConfig,
    accelerator: Accelerator,
    progress: bool,
) -> Iterator[tuple[list[Any], dict[str, torch.Tensor]]]:
    """This process's batches (every P-th), each yielded inside its own seeded sampling block.

    The same batches with the same per-batch seed whatever the process count: 1 and P processes
    draw identical posterior samples and so report identical metrics.
    """
    model.eval()
    sampling = config.n_samples > 0 and method.stochastic
    batches = [(i, encoded[i : i + config.batch_size]) for i in range(0, len(encoded), config.batch_size)]
    shard = batches[accelerator.process_index :: accelerator.num_processes]
    bar = tqdm(shard, desc="evaluate", unit="batch", disable=not (progress and accelerator.is_main_process))
    for start, items in bar:
        with method.sampling(enabled=sampling, seed=config.seed * 1_000_003 + start):
            yield items, {k: v.to(accelerator.device) for k, v in task.collate(items).items()}


def _gathered_in_order(rows: list[tuple], accelerator: Accelerator) -> list[tuple]:
    """Every process's rows (dataset index first), in dataset order."""
    if accelerator.num_processes > 1:
        rows = gather_object(rows)
    return sorted(rows, key=lambda r: r[0])


def evaluate(
    model: nn.Module,
    method: Method,
    task: Task | GenerativeTask,
    examples: Sequence[Example],
    config: EvalConfig,
    accelerator: Accelerator,
    output_dir: Path | None = None,
    title: str = "",
    progress: bool = True,
) -> dict[str, float]:
    """Score ``examples``; on the main process write metrics.json, predictions.jsonl and the diagram.

    Open-ended datasets (a :class:`GenerativeTask`) are scored by :func:`evaluate_answers` instead.
    """
    if isinstance(task, GenerativeTask):
        return evaluate_answers(model, method, task, examples, config, accelerator, output_dir, progress)
    encoded = task.encode(examples)
    sample_probs, labels = predict(model, method, task, encoded, config, accelerator, progress)
    check_finite(sample_probs, "predicted probabilities")
    if config.temperature is not None:
        sample_probs = apply_temperature(sample_probs, config.temperature)
    metrics = UncertaintyMetrics(n_bins=config.n_bins)
    metrics.update(sample_probs, labels)
    scores = metrics.compute()
    if config.temperature is not None:
        scores["temperature"] = config.temperature
    if isinstance(task, SequenceClassificationTask) and examples:  # GLUE's own metric (F1, MCC)
        predictions = sample_probs.mean(dim=1).argmax(dim=-1).tolist()
        usual = task_metric(examples[0].dataset, predictions, labels.tolist())
        scores.update({k: v for k, v in usual.items() if k != "accuracy"})
    if examples and getattr(examples[0], "true_labels", ()):  # TruthfulQA MC2 on the lettered prompt
        true_mask = torch.zeros(sample_probs.shape[0], sample_probs.shape[-1], dtype=torch.bool)
        for row, example in enumerate(examples):
            true_mask[row, list(example.true_labels)] = True
        scores["mc2"] = float(mc2_score(sample_probs.mean(dim=1).log(), true_mask).mean())
    if output_dir is not None and accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_predictions(output_dir / "predictions.jsonl", examples, metrics.per_example())
        metrics.plot_reliability(output_dir / "reliability.png", title=title or None)
    return scores


@torch.no_grad()
def evaluate_answers(
    model: nn.Module,
    method: Method,
    task: GenerativeTask,
    examples: Sequence[Any],
    config: EvalConfig,
    accelerator: Accelerator,
    output_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Teacher-forced likelihood of the reference answers under the posterior predictive.

    Each draw scores a whole answer under one weight sample (draws as in :func:`predict`: the
    method's, stacked ``samples_per_pass`` at a time, per-batch seeds); the predictive probability
    of an answer is the mean over draws, log p(y|x) = logsumexp_s log p_s(y|x) - log S. Scores:
    ``token_nll`` = -sum_i log p(y_i|x_i) / sum_i |y_i| (answer tokens, EOS included),
    ``perplexity`` = exp(token_nll), ``sequence_nll`` = mean_i -log p(y_i|x_i). On the main process
    writes predictions.jsonl (per answer: tokens, predictive and per-draw log-likelihoods).
    """
    if config.temperature is not None:
        raise ConfigError("eval.temperature: a temperature rescales class probabilities; answers have none")
    sampling = config.n_samples > 0 and method.stochastic
    num_draws = method.num_draws(config.n_samples)
    rows = []
    for items, batch in _sharded_batches(model, method, task, task.encode(examples), config, accelerator, progress):
        draws, done = [], 0
        while done < num_draws:
            stack = min(num_draws - done, config.samples_per_pass)
            with method.sampling(enabled=sampling, groups=stack, offset=done), accelerator.autocast():
                draws.append(task.sequence_log_likelihoods(model, batch, repeats=stack).view(stack, len(items)))
            done += stack
        log_likelihoods = torch.cat(draws).T.double().cpu()
        lengths = task.answer_lengths(batch).tolist()
        rows.extend((it.index, log_likelihoods[i], lengths[i]) for i, it in enumerate(items))
    rows = _gathered_in_order(rows, accelerator)
    draw_log_likelihoods = torch.stack([r[1] for r in rows])  # [N, S]
    check_finite(draw_log_likelihoods.nan_to_num(neginf=0.0), "answer log-likelihoods")
    predictive = torch.logsumexp(draw_log_likelihoods, dim=1) - math.log(num_draws)
    tokens = sum(r[2] for r in rows)
    token_nll = float(-predictive.sum() / tokens)
    scores = {
        "token_nll": token_nll,
        "perplexity": math.exp(token_nll),
        "sequence_nll": float(-predictive.mean()),
        "num_examples": len(rows),
        "num_answer_tokens": tokens,
        "num_samples": num_draws,
    }
    if output_dir is not None and accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        records = [
            {"answer_tokens": r[2], "log_likelihood": float(p), "draw_log_likelihoods": r[1].tolist()}
            for r, p in zip(rows, predictive, strict=True)
        ]
        write_predictions(output_dir / "predictions.jsonl", examples, records)
    return scores


def check_finite(values: torch.Tensor, what: str) -> None:
    """Refuse NaN or infinite model outputs, per example (dim 0): they come from broken weights, not data."""
    bad = ~torch.isfinite(values.reshape(len(values), -1)).all(dim=1)
    if bool(bad.any()):
        raise NumericalError(
            f"evaluation: the {what} of {int(bad.sum())} of {len(bad)} examples are NaN or infinite "
            "(non-finite adapter weights or an overflow); check the run's train.lr and model.precision"
        )


def write_predictions(path: Path, examples: Sequence[Example], records: Sequence[dict[str, Any]]) -> None:
    """One JSON line per example: id, gold label, prediction, probabilities and uncertainty."""
    lines = [
        json.dumps({"id": example.uid, "dataset": example.dataset, **record})
        for example, record in zip(examples, records, strict=True)
    ]
    write_text_atomic(path, "\n".join(lines) + "\n")
