"""Training: one loop for every method, under accelerate, resumable from checkpoints.

The data order is a pure function of (seed, epoch), and checkpoints hold the trainable
tensors, optimiser and scheduler states, the KL-schedule counter, the RNG states and the
step, so a killed run resumed with ``--resume`` ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import is_tensorboard_available, is_wandb_available, set_seed
from tqdm.auto import tqdm

from . import __version__
from .backbones import PEFT_TASK_TYPES, load_backbone, lora_targets, resolve_model
from .checkpoint import (
    TrainingCheckpoint,
    list_checkpoints,
    load_tensors,
    load_training_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_tensors_atomic,
    save_training_checkpoint,
    write_json_atomic,
    write_text_atomic,
)
from .config import TRACKERS, RunConfig, flatten_dict, load_config, save_config
from .data.classification import (
    classification_task_info,
    list_classification_datasets,
    load_classification_dataset,
)
from .data.generative import is_generative_dataset, load_generative_dataset
from .data.multiple_choice import is_mc_dataset, load_mc_dataset
from .enums import MCScoring, ModelKind, Precision
from .errors import ConfigError, DataError, NumericalError, RunDirError
from .evaluation import evaluate
from .methods import Method, Optimization, TrainingContext, build_method
from .model_card import write_model_card
from .plots import plot_training_log
from .rundir import RunDir
from .tasks.base import Example, Task
from .tasks.generative import GenerativeTask
from .tasks.multiple_choice import ClozeMultipleChoiceTask, MultipleChoiceTask
from .tasks.sequence_classification import SequenceClassificationTask

logger = logging.getLogger("bayespeft")

#: Config keys a resumed run may change (e.g. a lower learning rate after a diverged run).
RESUME_CHANGES = ("train.lr",)
#: Held-out scores logged by the evaluations during training, as ``eval_<name>`` in train_log.jsonl.
HELDOUT_SCORES = ("acc", "ece", "nll", "brier")
#: The best held-out weights while early stopping watches the held-out NLL (under checkpoints/).
BEST_WEIGHTS = "best_eval.safetensors"


@dataclass
class Session:
    """A backbone with a method injected, its task and the accelerator: what train and evaluate share."""

    config: RunConfig
    accelerator: Accelerator
    method: Method
    model: torch.nn.Module
    task: Task | GenerativeTask


#: Whether the package of each tracker in TRACKERS is installed.
_TRACKER_AVAILABLE = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}


def make_accelerator(config: RunConfig, project_dir: Path | None = None) -> Accelerator:
    """The accelerator of a session; a training run (``project_dir``: its run directory) gets its trackers.

    A tracker whose package is missing is a ConfigError here: accelerate would silently drop it.
    """
    mixed = "bf16" if config.model.precision == Precision.BF16_AUTOCAST else "no"
    trackers = config.train.report_to if project_dir is not None else []
    for name in trackers:
        if not _TRACKER_AVAILABLE[name]():
            raise ConfigError(
                f"train.report_to: tracker {name} needs the {TRACKERS[name]} package (pip install {TRACKERS[name]})"
            )
    return Accelerator(
        mixed_precision=mixed,
        cpu=not torch.cuda.is_available(),
        log_with=trackers or None,
        project_dir=str(project_dir) if trackers else None,
    )


def _scalars(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric entries of a log record or metrics dict, for the trackers."""
    return {
        prefix + key: value
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and key != "step"
    }


def build_session(config: RunConfig, accelerator: Accelerator | None = None) -> Session:
    """Load the backbone, inject the method's adapters and set up the task the model kind calls for.

    Open-ended datasets train a causal or seq2seq LM on the answer tokens; otherwise causal LMs
    answer multiple choice by letter and encoders classify with their head. A freshly
    initialised classification head is seeded by ``train.seed`` so that every process and every
    later `evaluate` rebuilds the same frozen head.
    """
    accelerator = accelerator or make_accelerator(config)
    method = build_method(config.method)
    kind = model_kind(config)
    if is_generative_dataset(config.data.dataset):
        check_answer_level_method(method, config.data.dataset)
        model, tokenizer, _ = load_backbone(config.model)
        task: Task | GenerativeTask = GenerativeTask(
            tokenizer, config.data.max_length, encoder_decoder=kind == ModelKind.SEQ2SEQ
        )
        task_type = PEFT_TASK_TYPES[kind]
    elif kind == ModelKind.CAUSAL_LM:
        model, tokenizer, _ = load_backbone(config.model)
        if config.data.mc_scoring == MCScoring.CLOZE:
            task = ClozeMultipleChoiceTask(
                tokenizer, max_length=config.data.max_length, prefix_cache=config.data.cloze_prefix_cache
            )
        else:
            task = MultipleChoiceTask(tokenizer, max_length=config.data.max_length)
        task_type = "CAUSAL_LM"
    else:
        info = classification_task_info(config.data.dataset)
        set_seed(config.train.seed)
        model, tokenizer, _ = load_backbone(config.model, num_labels=info.num_labels)
        task = SequenceClassificationTask(tokenizer, info.num_labels, max_length=config.data.max_length)
        task_type = None  # peft's SEQ_CLS type would make the whole head trainable (modules_to_save)
    model = method.inject(model, config.model.lora, lora_targets(model, config.model), task_type=task_type)
    model = model.to(accelerator.device)
    return Session(config, accelerator, method, model, task)


def model_kind(config: RunConfig) -> ModelKind:
    """Causal LM, seq2seq LM or sequence classifier, checked against the dataset's kind."""
    _, kind = resolve_model(config.model)
    name = config.data.dataset
    if is_generative_dataset(name):
        if kind == ModelKind.SEQ_CLS:
            raise ConfigError(
                f"data.dataset: {name} is an open-ended dataset, trained on answer tokens by a causal or seq2seq LM; "
                f"{config.model.name} is a sequence classifier (use e.g. --model smollm2-135m)"
            )
        return kind
    if kind == ModelKind.SEQ_CLS and not is_classification_dataset(name):
        if not is_mc_dataset(name):
            raise ConfigError(
                f"data.dataset: unknown dataset {name!r}; {config.model.name} is a sequence classifier, "
                f"which classifies {', '.join(list_classification_datasets())}"
            )
        raise ConfigError(
            f"data.dataset: {name} is a multiple-choice dataset, scored by a causal LM; "
            f"{config.model.name} is a sequence classifier (use e.g. --model smollm2-135m)"
        )
    if kind == ModelKind.CAUSAL_LM and is_classification_dataset(name) and not is_mc_dataset(name):
        raise ConfigError(
            f"data.dataset: {name} is a sentence-classification dataset for encoders "
            f"(use e.g. --model minilm-l6); {config.model.name} is a causal LM"
        )
    return kind


def check_answer_level_method(method: Method, dataset: str) -> None:
    """Open-ended datasets draw weights per answer sequence; methods that fit or predict through class
    probabilities (Laplace's linearised predictive, TFB's sigma search) cannot run on them."""
    cls = type(method)
    if cls.fit_posthoc is not Method.fit_posthoc or cls.predictive_samples is not Method.predictive_samples:
        raise ConfigError(
            f"method.name: {method.name} works on class probabilities; {dataset} is an open-ended dataset "
            "(use a trained method: mle, map, blob, bbb, ensemble, mcdropout)"
        )


def is_classification_dataset(name: str) -> bool:
    """Whether ``name`` is a sentence-classification dataset (for encoders)."""
    try:
        classification_task_info(name)
    except ConfigError:
        return False
    return True


def load_examples(config: RunConfig, split: str, limit: int | None) -> list:
    """The split's examples in the form the model kind's task reads."""
    data = config.data
    if is_generative_dataset(data.dataset):
        examples = load_generative_dataset(data.dataset, split, data.data_dir, limit=limit, seed=config.train.seed)
    elif model_kind(config) == ModelKind.CAUSAL_LM:
        examples = load_mc_dataset(data.dataset, split, data.data_dir, limit=limit, seed=config.train.seed)
    else:
        examples = load_classification_dataset(data.dataset, split, data.data_dir, limit=limit, seed=config.train.seed)
    if not examples:
        raise DataError(f"data.dataset: {data.dataset} split {split} is empty")
    return examples


def unseen_training_examples(config: RunConfig) -> Callable[[int], list] | None:
    """A loader of up to n training-split examples after the first data.max_train_examples: those training
    never used (None when the whole split trains)."""
    offset = config.data.max_train_examples
    if offset is None:
        return None
    return lambda n: load_examples(config, config.data.train_split, offset + n)[offset:]


def epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The example order of one epoch: a permutation seeded by (seed, epoch), or the data order."""
    if not shuffle:
        return list(range(num_examples))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


class Trainer:
    """Runs one training job in a run directory and finishes with the evaluation report."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        stop_after_steps: int | None = None,
        train_examples: list | None = None,
        eval_examples: list | None = None,
    ) -> None:
        """``train_examples`` / ``eval_examples`` replace the config's splits (e.g. a validation part
        carved from the training data by `bayespeft tune`).

        With ``overwrite`` an existing run is replaced only once the new one has finished: until
        then the new run lives in the staging folder (``RunDir.staging``), which ``resume`` continues.
        """
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")
        self.target = RunDir(Path(run_dir))  # where the finished run ends up
        self.target.check_new(overwrite=overwrite, resume=resume)
        self.run = self.target.resume_target() if resume else self.target.build_target(overwrite)  # where it is built
        if resume:
            config = self._resumed_config(config)
        self.config, self.resume, self.overwrite, self.progress = config, resume, overwrite, progress
        self._last_checkpoint = 0
        self._acc = make_accelerator(config, self.run.root)
        if stop_after_steps is not None and stop_after_steps < 1:
            raise ConfigError(f"--stop-after-steps must be >= 1 (got {stop_after_steps})")
        self.stop_after_steps = stop_after_steps
        self.train_examples, self.eval_examples = train_examples, eval_examples

    def _resumed_config(self, config: RunConfig) -> RunConfig:
        """The saved config, with the changes a resumed run may make (RESUME_CHANGES); others are refused."""
        if self.run.metrics.is_file() and not list_checkpoints(self.run.checkpoints):
            raise RunDirError(
                f"{self.run.root}: the run has finished (metrics.json) and keeps no checkpoint to resume from; "
                "train it again with --overwrite"
            )
        saved = load_config(self.run.config)
        theirs, ours = flatten_dict(saved.to_dict()), flatten_dict(config.to_dict())
        changed = sorted(key for key in set(theirs) | set(ours) if theirs.get(key) != ours.get(key))
        for key in changed:
            if key not in RESUME_CHANGES:
                raise ConfigError(
                    f"--resume: {key} is {theirs.get(key)!r} in {self.run.config} but {ours.get(key)!r} here; "
                    f"a resumed run keeps its config except {', '.join(RESUME_CHANGES)}"
                )
            logger.info("resuming with %s=%r (was %r)", key, ours.get(key), theirs.get(key))
        return config

    def run_training(self) -> dict[str, Any]:
        config = self.config
        set_seed(config.train.seed)
        train_examples = self.train_examples
        if train_examples is None:
            train_examples = load_examples(config, config.data.train_split, config.data.max_train_examples)
        eval_examples = self.eval_examples
        if eval_examples is None:  # examples a caller passes are its choice (e.g. measuring the training fit)
            eval_examples = load_examples(config, config.data.eval_split, config.data.max_eval_examples)
            check_disjoint(train_examples, eval_examples)
        heldout = eval_examples[: config.train.eval_max_examples] if config.train.eval_every else []
        session = build_session(config, self._acc)
        acc, method, model, task = session.accelerator, session.method, session.model, session.task
        encoded = task.encode(train_examples)
        accumulation = config.train.gradient_accumulation_steps
        per_step = config.train.batch_size * acc.num_processes * accumulation
        batches_per_epoch = len(encoded) // per_step  # optimiser steps per pass over the data
        if batches_per_epoch == 0:
            raise DataError(
                f"data.dataset: {len(encoded)} training examples cannot fill one batch of {per_step} "
                f"(train.batch_size x processes x train.gradient_accumulation_steps)"
            )
        saved_config = config  # config.yaml keeps train.epochs; the loop runs on the steps it derives
        config = self.config = with_epoch_steps(config, batches_per_epoch)
        context = TrainingContext(
            num_examples=batches_per_epoch * per_step,  # what survives drop_last, as in the reference
            batch_size=config.train.batch_size * accumulation,  # per optimiser step, as the KL period counts it
            batches_per_epoch=batches_per_epoch,
            total_steps=config.train.max_steps,
            num_processes=acc.num_processes,
        )
        optimization = method.build_optimization(model, config.train, context)
        for key, label in (("kl_schedule_warning", "KL SCHEDULE"), ("kl_step_warning", "KL STEP")):
            warning = optimization.info.get(key)
            if warning and acc.is_main_process:
                logger.warning("%s: %s", label, warning)
                warnings.warn(warning, UserWarning, stacklevel=2)
        if acc.is_main_process:  # all input validated: now the run directory may be written
            if self.run != self.target and not self.resume:
                self.target.clear_staging()  # a rerun that failed or was killed before this one
            self.run.create()
            save_config(saved_config, self.run.config)
        if config.train.report_to:  # the resolved config as the tracked run's hyperparameters
            hparams = {
                k: v if isinstance(v, int | float | str) else str(v) for k, v in flatten_dict(config.to_dict()).items()
            }
            acc.init_trackers(config.train.tracking_project, hparams, {"wandb": {"name": self.target.root.name}})
        model = acc.prepare_model(model)
        start_step = self._restore(model, optimization) if self.resume else 0
        end_step = config.train.max_steps
        if self.stop_after_steps is not None:
            end_step = min(end_step, start_step + self.stop_after_steps)
        step_times, stopped_at = self._loop(
            model, method, task, encoded, optimization, context, start_step, end_step, heldout
        )
        if stopped_at is not None:
            optimization.info["early_stopping"] = self._restore_best(model, stopped_at)
            end_step = config.train.max_steps  # finished: the best held-out weights go on to the final evaluation
        acc.wait_for_everyone()
        if end_step >= config.train.max_steps:  # post-hoc methods (curvature, noise scale) fit now
            unseen = unseen_training_examples(config) if self.train_examples is None else None
            optimization.info.update(method.fit_posthoc(model, task, train_examples, config, acc, unseen))
        if end_step < config.train.max_steps:
            logger.info("stopped at step %d of %d; continue with --resume", end_step, config.train.max_steps)
            self._finish_tracking()
            return {"status": "paused", "step": end_step}
        payload = self._finish(session, model, eval_examples, optimization, step_times, start_step)
        if self.run != self.target and acc.is_main_process:
            self.target.replace_with(self.run)  # the finished rerun replaces the old run only now
        self.run = self.target
        return {"status": "finished", **payload}

    # ---- the loop ---------------------------------------------------------------------------------
    def _loop(
        self,
        model,
        method: Method,
        task: Task,
        encoded: list[Any],
        optimization: Optimization,
        context: TrainingContext,
        start_step: int,
        end_step: int,
        heldout: list[Example],
    ) -> tuple[list[float], int | None]:
        """Optimise from ``start_step`` to ``end_step``, evaluating on ``heldout`` every ``train.eval_every``
        steps; returns the step times and the step at which early stopping ended training (None if it did not)."""
        acc, train = self._acc, self.config.train
        model.train()
        watch = (
            _EarlyStopping(train.early_stopping_patience, self._log_records())
            if train.early_stopping_patience
            else None
        )
        step_times: list[float] = []
        log_lines: list[str] = []
        bar = tqdm(
            total=train.max_steps,
            initial=start_step,
            desc=f"train {method.name}",
            unit="step",
            disable=not (self.progress and acc.is_main_process),
        )
        micro = train.batch_size * acc.num_processes  # examples of one micro-batch over all processes
        accumulation = train.gradient_accumulation_steps
        trainable = list(self._trainable(model).values())
        self._last_checkpoint = start_step
        order: list[int] = []
        for step in range(start_step, end_step):
            epoch, position = divmod(step, context.batches_per_epoch)
            if position == 0 or not order:
                order = epoch_order(len(encoded), train.seed, epoch, train.shuffle)
            began = time.perf_counter()
            done: list[torch.Tensor] = []  # NLLs of the micro-batches already backpropagated
            scores: list[dict[str, float]] = []
            for index in range(accumulation):
                start = (position * accumulation + index) * micro + acc.process_index * train.batch_size
                batch = task.collate([encoded[i] for i in order[start : start + train.batch_size]])
                batch = {k: v.to(acc.device) for k, v in batch.items()}
                copies = method.train_groups  # ensemble members each see the batch: mean of their NLLs
                with method.sampling(enabled=True, groups=copies), acc.autocast():
                    nll, batch_scores = batch_loss(task, model, batch, copies)
                scores.append(batch_scores)
                if index + 1 < accumulation:
                    with acc.no_sync(model):  # gradients add up locally; the last micro-batch synchronises
                        acc.backward(nll / accumulation)
                    done.append(nll.detach())
            batch_scores = {name: statistics.fmean(s[name] for s in scores) for name in scores[0]}
            # the mean NLL of the N micro-batches; only the last one is still to backpropagate, so the
            # method's rule (KL weight, clipping, optimiser steps) runs once per optimiser step
            nll = (torch.stack(done).sum() + nll) / accumulation if done else nll
            record = optimization.step(nll, acc.backward)
            bad = _non_finite(record, trainable)
            if bad is not None:
                bar.close()
                raise NumericalError(self._diverged(step + 1, bad))
            step_times.append(time.perf_counter() - began)
            record = {
                "step": step + 1,
                "epoch": epoch,
                **record,
                **batch_scores,
                "step_time_s": step_times[-1],
            }
            stop = False
            evaluated = bool(train.eval_every) and (step + 1) % train.eval_every == 0
            if evaluated:
                scores = self._evaluate_heldout(model, method, task, heldout)
                record.update({f"eval_{name}": scores[name] for name in HELDOUT_SCORES})
                if watch is not None:
                    improved, stop = watch.update(step + 1, scores["nll"])
                    if improved:
                        self._save_best(model)
            log_lines.append(json.dumps(record))
            acc.log(_scalars(record), step=step + 1)
            bar.update(1)
            bar.set_postfix(nll=f"{record['nll']:.3f}", **({"pi": f"{record['pi']:.2g}"} if "pi" in record else {}))
            if (step + 1) % train.checkpoint_every == 0 or step + 1 == end_step or stop:
                self._flush_log(log_lines)
                self._checkpoint(model, optimization, step + 1, epoch)
            elif evaluated:  # held-out curves can be followed live; a resume truncates past its checkpoint
                self._flush_log(log_lines)
            if stop:
                logger.info(
                    "early stopping at step %d: held-out NLL has not improved for %d evaluations (best at step %d)",
                    step + 1,
                    train.early_stopping_patience,
                    watch.best_step,
                )
                bar.close()
                return step_times, step + 1
        bar.close()
        return step_times, None

    # ---- held-out evaluation during training ------------------------------------------------------
    def _evaluate_heldout(self, model, method: Method, task: Task, heldout: list[Example]) -> dict[str, float]:
        """Scores on the held-out examples with ``train.eval_n_samples`` draws; the training RNG is left as it was."""
        config = dataclasses.replace(self.config.eval, n_samples=self.config.train.eval_n_samples)
        with torch.random.fork_rng(devices=[]):
            scores = evaluate(model, method, task, heldout, config, self._acc, progress=False)
        model.train()
        return scores

    def _log_records(self) -> list[dict[str, Any]]:
        """The records of train_log.jsonl so far (a resumed run's, already truncated to its checkpoint)."""
        if not self.run.train_log.is_file():
            return []
        return [json.loads(line) for line in self.run.train_log.read_text().splitlines() if line.strip()]

    def _save_best(self, model) -> None:
        if self._acc.is_main_process:
            self.run.checkpoints.mkdir(parents=True, exist_ok=True)
            save_tensors_atomic(self.run.checkpoints / BEST_WEIGHTS, self._trainable(model))

    def _restore_best(self, model, stopped_at: int) -> dict[str, Any]:
        """Load the weights of the best held-out NLL back into the model (every process reads the same file)."""
        self._acc.wait_for_everyone()
        restore_trainable(
            self._acc.unwrap_model(model), load_tensors(self.run.checkpoints / BEST_WEIGHTS), BEST_WEIGHTS
        )
        best = min(
            (r for r in self._log_records() if "eval_nll" in r and r["step"] <= stopped_at), key=lambda r: r["eval_nll"]
        )
        return {"stopped_at_step": stopped_at, "best_step": best["step"], "best_eval_nll": best["eval_nll"]}

    def _diverged(self, step: int, what: str) -> str:
        """The one-line error of a non-finite step: where training stopped and how to go on."""
        last = self._last_checkpoint
        where = f"the last checkpoint (step {last})" if last else "step 0 (no checkpoint yet)"
        lower = f"{self.config.train.lr / 10:g}"
        return (
            f"step {step}: {what} is not finite; training stopped and nothing of it was saved. Continue from "
            f"{where} with a lower learning rate: bayespeft train -o {self.target.root} --resume --lr {lower}"
        )

    # ---- checkpoints ------------------------------------------------------------------------------
    def _trainable(self, model) -> dict[str, torch.Tensor]:
        unwrapped = self._acc.unwrap_model(model)
        return {n: p.detach() for n, p in unwrapped.named_parameters() if p.requires_grad}

    def _checkpoint(self, model, optimization: Optimization, step: int, epoch: int) -> None:
        if not self._acc.is_main_process:
            return
        save_training_checkpoint(
            self.run.checkpoints / f"checkpoint-{step}",
            trainable=self._trainable(model),
            optimizers=optimization.optimizers,
            schedulers=optimization.schedulers,
            state={
                "step": step,
                "epoch": epoch,
                "optimization": optimization.state(),
                "version": __version__,
            },
        )
        prune_checkpoints(self.run.checkpoints, keep=self.config.train.keep_checkpoints)
        self._last_checkpoint = step

    def _restore(self, model, optimization: Optimization) -> int:
        found = list_checkpoints(self.run.checkpoints)
        checkpoint = _newest_intact(found)
        if checkpoint is None:
            if found:
                raise RunDirError(
                    f"{self.run.checkpoints}: none of the {len(found)} checkpoints is intact; "
                    "train again with --overwrite"
                )
            logger.info("no checkpoint in %s: starting from step 0", self.run.checkpoints)
            self._truncate_log(0)
            return 0
        latest = checkpoint.directory
        fresh = {
            name: [g.get("initial_lr", g["lr"]) for g in o.param_groups] for name, o in optimization.optimizers.items()
        }
        restore_trainable(self._acc.unwrap_model(model), checkpoint.trainable, latest)
        for name, optimizer in optimization.optimizers.items():
            optimizer.load_state_dict(checkpoint.optimizers[name])
        for name, scheduler in optimization.schedulers.items():
            scheduler.load_state_dict(checkpoint.schedulers[name])
        _set_learning_rates(optimization, fresh)
        optimization.load_state(checkpoint.state["optimization"])
        restore_rng_state(checkpoint.rng_tensors, checkpoint.rng_meta)
        step = int(checkpoint.state["step"])
        self._truncate_log(step)
        logger.info("resumed from %s at step %d", latest, step)
        return step

    def _flush_log(self, lines: list[str]) -> None:
        if lines and self._acc.is_main_process:
            with self.run.train_log.open("a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
        lines.clear()

    def _truncate_log(self, step: int) -> None:
        """Drop log lines past the checkpoint a resumed run restarts from, and a last line a kill tore."""
        path = self.run.train_log
        if not self._acc.is_main_process or not path.is_file():
            return
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise RunDirError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        kept = []
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                logged_step = int(record["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if lineno == len(lines):  # the append of the last line was cut short
                    logger.warning("%s:%d: dropping a torn last line", path, lineno)
                    break
                raise RunDirError(f"{path}:{lineno}: malformed log line (expected a JSON object with a step)") from None
            if logged_step <= step:
                kept.append(line)
        write_text_atomic(path, "".join(line + "\n" for line in kept))

    # ---- the end ----------------------------------------------------------------------------------
    def _finish(
        self,
        session: Session,
        model,
        eval_examples: list[Example],
        optimization: Optimization,
        step_times: list[float],
        start_step: int,
    ) -> dict[str, Any]:
        config, acc, method = self.config, self._acc, session.method
        if acc.is_main_process:
            method.save_adapter(acc.unwrap_model(model), self.run.adapter)
        title = f"{method.name} on {config.data.dataset} ({config.data.eval_split}), N={config.eval.n_samples}"
        scores = evaluate(
            model,
            method,
            session.task,
            eval_examples,
            config.eval,
            acc,
            output_dir=self.run.root,
            title=title,
            progress=self.progress,
        )
        payload = run_summary(config, scores, eval_examples, config.data.eval_split)
        payload["train"] = {
            "steps": config.train.max_steps,
            "steps_this_session": len(step_times),
            "resumed_from_step": start_step,  # > 0: this process continued a checkpoint; its timings are its own
            "mean_step_time_s": statistics.fmean(step_times) if step_times else None,
            "median_step_time_s": statistics.median(step_times) if step_times else None,
            "peak_memory_mb": peak_memory_mb(),
            **optimization.info,
        }
        if acc.is_main_process:
            write_json_atomic(self.run.metrics, payload)
            write_model_card(self.run.adapter, config, method, payload)
            if self.run.train_log.is_file():  # post-hoc-only runs (max_steps = 0) have no log
                lines = self.run.train_log.read_text().splitlines()
                plot_training_log(
                    [json.loads(line) for line in lines if line.strip()], self.run.plots / "training.png", title
                )
            if not isinstance(session.task, GenerativeTask):  # answers have no reliability diagram
                (self.run.root / "reliability.png").replace(self.run.plots / "reliability.png")
        acc.log(_scalars(scores, "eval/"), step=config.train.max_steps)
        self._finish_tracking()
        return payload

    def _finish_tracking(self) -> None:
        """Close the trackers' run. Not ``end_training``: that also ends the process group of a multi-process
        sweep, whose later runs still need it."""
        for tracker in self._acc.trackers:
            tracker.finish()


def _non_finite(record: dict[str, Any], trainable: list[torch.Tensor]) -> str | None:
    """What went non-finite in a training step (a logged loss, or the weights a NaN gradient updated), or None."""
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"{key}={value}"
    if trainable and not bool(torch.stack([torch.isfinite(p).all() for p in trainable]).all()):
        return "a gradient (the updated adapter weights)"
    return None


def _newest_intact(directories: list[Path]) -> TrainingCheckpoint | None:
    """The newest checkpoint that loads and holds finite weights (older ones are the fallback), or None."""
    for directory in reversed(directories):
        try:
            checkpoint = load_training_checkpoint(directory)
        except RunDirError as exc:
            logger.warning("%s; falling back to the checkpoint before it", exc)
            continue
        if all(bool(torch.isfinite(t).all()) for t in checkpoint.trainable.values()):
            return checkpoint
        logger.warning("%s: holds non-finite weights; falling back to the checkpoint before it", directory)
    return None


def _set_learning_rates(optimization: Optimization, fresh: dict[str, list[float]]) -> None:
    """After loading saved optimiser states, put back the learning rates the current config gives
    (``fresh``: each group's initial lr before loading), at the same point of the schedule.
    Unchanged rates are left bit for bit; a changed ``train.lr`` on resume rescales its groups."""
    for name, optimizer in optimization.optimizers.items():
        scheduler = optimization.schedulers.get(name)
        for index, (group, lr) in enumerate(zip(optimizer.param_groups, fresh[name], strict=True)):
            saved = group.get("initial_lr", group["lr"])
            if saved == lr:
                continue
            group["lr"] = group["lr"] * lr / saved
            if "initial_lr" in group:
                group["initial_lr"] = lr
            if scheduler is not None:
                scheduler.base_lrs[index] = lr


class _EarlyStopping:
    """Counts evaluations since the lowest held-out NLL; a resumed run rebuilds the count from its log."""

    def __init__(self, patience: int, records: list[dict[str, Any]]) -> None:
        self.patience, self.best_nll, self.best_step, self.since_best = patience, math.inf, 0, 0
        for record in records:
            if "eval_nll" in record:
                self.update(record["step"], record["eval_nll"])

    def update(self, step: int, nll: float) -> tuple[bool, bool]:
        """Record one evaluation: (whether it is the new best, whether training should stop)."""
        improved = nll < self.best_nll
        if improved:
            self.best_nll, self.best_step, self.since_best = nll, step, 0
        else:
            self.since_best += 1
        return improved, self.since_best >= self.patience


def restore_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy saved trainable tensors (a checkpoint's) into ``model``; every trainable one must be there."""
    params = dict(model.named_parameters())
    trainable = {name for name, p in params.items() if p.requires_grad}
    missing = trainable - set(tensors)
    if missing:
        raise RunDirError(f"{source}: checkpoint lacks {sorted(missing)[0]} (different method or model?)")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)


def check_disjoint(train_examples: list[Example], eval_examples: list[Example]) -> None:
    """Refuse held-out examples that are also training examples (same dataset and id)."""
    seen = {(ex.dataset, ex.uid) for ex in train_examples}
    shared = [ex for ex in eval_examples if (ex.dataset, ex.uid) in seen]
    if shared:
        raise DataError(
            f"data.eval_split: {len(shared)} of the {len(eval_examples)} evaluation examples are also training "
            f"examples (e.g. {shared[0].dataset}:{shared[0].uid}); evaluate on held-out data"
        )


def with_epoch_steps(config: RunConfig, steps_per_epoch: int) -> RunConfig:
    """The config with ``train.max_steps`` = ``train.epochs`` x optimiser steps per epoch when epochs are set."""
    if config.train.epochs is None:
        return config
    train = dataclasses.replace(config.train, max_steps=config.train.epochs * steps_per_epoch)
    return dataclasses.replace(config, train=train)


def batch_loss(
    task: Task | GenerativeTask, model: torch.nn.Module, batch: dict[str, torch.Tensor], repeats: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """The mean NLL of a training batch stacked ``repeats`` times, and the batch's score to log:
    the class accuracy (``batch_acc``) or, for open-ended answers, the answer-token accuracy."""
    if isinstance(task, GenerativeTask):
        return task.training_loss(model, batch, repeats)
    labels = batch["labels"].repeat(repeats)
    logits = task.class_logits(model, batch, repeats=repeats)
    return task.loss(logits, labels), {"batch_acc": float((logits.argmax(-1) == labels).float().mean())}


def run_summary(config: RunConfig, scores: dict[str, float], examples: list[Example], split: str) -> dict[str, Any]:
    """What every metrics.json records: method, backbone, dataset, split, seed, N and the scores."""
    return {
        "method": config.method.name,
        "model": config.model.name,
        "dataset": examples[0].dataset if examples else config.data.dataset,
        "split": split,
        "seed": config.train.seed,
        # draws actually averaged: 1 for a deterministic method, K for an ensemble, 0 for the posterior mean
        "n_samples": 0 if config.eval.n_samples == 0 else int(scores["num_samples"]),
        "n_samples_requested": config.eval.n_samples,
        "metrics": scores,
        "bayespeft_version": __version__,
        "command": " ".join(sys.argv),
    }


def peak_memory_mb() -> float:
    """Peak resident memory of this process (and of the GPU when one is used), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak = max(peak, torch.cuda.max_memory_allocated() / 2**20)
    return peak
