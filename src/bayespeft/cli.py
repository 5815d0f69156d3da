"""The ``bayespeft`` command line: train and evaluate, from a YAML config plus flags.

Flags map onto dotted config keys; the BLoB reference repository's flag names are accepted
too (``--modelwrapper``, ``--bayes-beta``, ``--bayes-eval-n-samples``, ...). Any key can be
set with a positional ``section.key=value`` override.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

from .compare import add_compare_parser, run_compare
from .data.records import SPLITS
from .errors import BayesPeftError, ConfigError
from .report import add_report_parser, run_report
from .rundir import check_writable, path_flag
from .sample_command import add_sample_parser, run_sample, run_sample_store
from .score_command import add_score_parser, run_score
from .sweep import add_sweep_parser, run_sweep
from .tune import add_tune_parser, run_tune

# (flags, dotted key, type, help); a flag value is written into the config at that key.
VALUE_FLAGS: list[tuple[tuple[str, ...], str, type, str]] = [
    (
        ("--model", "--model-name"),
        "model.name",
        str,
        "short name (smollm2-135m, minilm-l6), hub id or folder",
    ),
    (("--precision",), "model.precision", str, "fp32, bf16 or bf16-autocast"),
    (("--lora-r",), "model.lora.r", int, "LoRA rank"),
    (("--lora-alpha",), "model.lora.alpha", float, "LoRA alpha (scaling alpha / r)"),
    (("--lora-dropout",), "model.lora.dropout", float, "LoRA dropout"),
    (("--lora-targets",), "model.lora.target_modules", str, "comma-separated module names"),
    (("--method", "--modelwrapper"), "method.name", str, "mle, map, blob, blob_laplace"),
    (("--bayes-beta", "--beta"), "method.beta", float, "prior std (blob)"),
    (("--bayes-eps", "--eps"), "method.eps", float, "rho initialisation scale (blob)"),
    (("--bayes-gamma", "--gamma"), "method.gamma", float, "KL period exponent (blob)"),
    (("--bayes-kllr", "--kl-lr"), "method.kl_lr", float, "SGD lr of the KL step (blob)"),
    (("--kl-schedule",), "method.kl_schedule", str, "cyclic or uniform (blob)"),
    (("--kl-period",), "method.kl_period", str, "dataset_rescaled or epoch (blob)"),
    (("--blob-optimization",), "method.optimization", str, "split or elbo (blob)"),
    (("--dataset",), "data.dataset", str, "dataset name, e.g. arc_easy, obqa, mmlu:chem"),
    (("--data-dir",), "data.data_dir", str, "folder in the layout of shared/data (default: the hub)"),
    (("--train-split",), "data.train_split", str, "train, validation or test"),
    (("--eval-split",), "data.eval_split", str, "train, validation or test"),
    (("--max-train-examples",), "data.max_train_examples", int, "use the first N training examples"),
    (("--max-eval-examples",), "data.max_eval_examples", int, "use the first N evaluation examples"),
    (("--max-seq-len", "--max-length"), "data.max_length", int, "token limit per prompt"),
    (("--lr",), "train.lr", float, "AdamW learning rate"),
    (("--batch-size",), "train.batch_size", int, "per-process training batch size"),
    (("--max-steps", "--max-train-steps"), "train.max_steps", int, "optimisation steps"),
    (("--warmup-ratio",), "train.warmup_ratio", float, "linear warm-up fraction"),
    (("--adam-epsilon",), "train.adam_eps", float, "AdamW epsilon"),
    (("--opt-wd", "--weight-decay"), "train.weight_decay", float, "AdamW weight decay"),
    (("--seed",), "train.seed", int, "random seed"),
    (("--checkpoint-every",), "train.checkpoint_every", int, "steps between resumable checkpoints"),
    (("--report-to",), "train.report_to", str, "experiment trackers, comma-separated: tensorboard, wandb"),
    (
        ("--n-samples", "--bayes-eval-n-samples", "--bayes-eval-n-samples-final"),
        "eval.n_samples",
        int,
        "posterior samples at evaluation (0 = posterior mean)",
    ),
    (("--eval-batch-size",), "eval.batch_size", int, "evaluation batch size"),
    (("--samples-per-pass",), "eval.samples_per_pass", int, "posterior draws stacked in one forward pass"),
    (("--n-bins",), "eval.n_bins", int, "calibration bins for ECE"),
]
# Reference on/off switches: flag -> (dotted key, value when given).
SWITCH_FLAGS: dict[str, tuple[str, Any]] = {
    "--bayes-inference-notsample": ("eval.n_samples", 0),
    "--bayes-klreweighting": ("method.kl_schedule", "cyclic"),
    "--bayes-datasetrescaling": ("method.kl_period", "dataset_rescaled"),
}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.add_argument("--config", "-c", type=Path, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. method.beta=0.1")
    group = parser.add_argument_group("config shortcuts")
    for flags, key, kind, text in VALUE_FLAGS:
        group.add_argument(*flags, dest=key, type=kind, default=None, help=f"{text} [{key}]")
    for flag, (key, value) in SWITCH_FLAGS.items():
        group.add_argument(flag, dest=f"switch:{flag}", action="store_true", help=f"sets {key}={value}")


def cli_overrides(args: argparse.Namespace) -> list[str]:
    """Positional overrides first, then flags (flags win), as dotted key=value strings."""
    items = list(args.overrides)
    for _flags, key, _kind, _ in VALUE_FLAGS:
        value = getattr(args, key)
        if value is not None:
            items.append(f"{key}={_yaml_value(key, value)}")
    for flag, (key, value) in SWITCH_FLAGS.items():
        if getattr(args, f"switch:{flag}"):
            items.append(f"{key}={value}")
    return items


def _yaml_value(key: str, value: Any) -> str:
    if key == "model.lora.target_modules":
        return "[" + ",".join(v.strip() for v in str(value).split(",")) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="bayespeft", description="Bayesian parameter-efficient fine-tuning.")
    parser.add_argument("--version", action="version", version=f"bayespeft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune, then evaluate and write a calibration report")
    train.add_argument("--output-dir", "-o", type=path_flag("--output-dir"), required=True, help="run directory")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing run directory (only a bayespeft run; swapped in once the new run finished)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output-dir from its checkpoint (with its config; --lr may change)",
    )
    train.add_argument(
        "--stop-after-steps", type=int, help="checkpoint and exit after this many steps (continue later with --resume)"
    )
    add_config_flags(train)

    evaluate = sub.add_parser("evaluate", help="evaluate a trained run (or adapter) on any dataset")
    evaluate.add_argument("--run-dir", type=path_flag("--run-dir"), required=True, help="a finished training run")
    evaluate.add_argument(
        "--name", help="results folder under <run-dir>/eval, a plain name (default: dataset_split_nN)"
    )
    evaluate.add_argument("--overwrite", action="store_true", help="replace earlier results of the same name")
    evaluate.add_argument(
        "--checkpoint", type=int, metavar="STEP", help="evaluate the weights of checkpoints/checkpoint-STEP"
    )
    add_config_flags(evaluate)

    calibrate = sub.add_parser("calibrate", help="fit a post-hoc temperature on held-out data (any method)")
    calibrate.add_argument("--run-dir", type=path_flag("--run-dir"), required=True, help="a finished training run")
    calibrate.add_argument(
        "--fit-split", default="validation", help="held-out split to fit on (never the test split you report)"
    )
    calibrate.add_argument("--max-fit-examples", type=int, help="use the first N examples of the fit split")
    calibrate.add_argument(
        "--fit-offset", type=int, default=0, help="skip the first K examples of the fit split (e.g. those trained on)"
    )
    add_config_flags(calibrate)

    ood = sub.add_parser("ood", help="evaluate on shifted datasets and score OOD detection (AUROC)")
    ood.add_argument(
        "--run-dir",
        type=path_flag("--run-dir"),
        required=True,
        help="a finished training run (the in-distribution data)",
    )
    ood.add_argument(
        "--datasets",
        required=True,
        help="comma-separated datasets, optionally name@split (default validation; MMLU: test)",
    )
    ood.add_argument("--overwrite", action="store_true", help="replace earlier results of the same names")
    add_config_flags(ood)

    add_report_parser(sub)
    add_sweep_parser(sub)
    add_compare_parser(sub)
    add_tune_parser(sub)
    add_sample_parser(sub)
    add_score_parser(sub)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may come before, between or after flags."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [item for item in extra if item.startswith("-") or "=" not in item]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = [*args.overrides, *extra]  # argparse leaves positionals after a flag in ``extra``
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)  # a path flag's check raises a BayesPeftError here
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        commands = {
            "train": _train,
            "evaluate": _evaluate,
            "calibrate": _calibrate,
            "ood": _ood,
            "report": run_report,
            "sweep": run_sweep,
            "compare": run_compare,
            "tune": run_tune,
            "sample": run_sample,
            "sample-store": run_sample_store,
            "score": run_score,
        }
        return commands[args.command](args)
    except BayesPeftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from .compose import compose_config
    from .config import load_config
    from .rundir import RunDir
    from .training import Trainer

    if args.resume and not args.overwrite:  # the saved config with the flags on top (Trainer allows train.lr)
        if args.config is not None:
            raise ConfigError("--config: --resume continues the run's own config.yaml; change train.lr with --lr")
        run = RunDir(args.output_dir)
        run.check_new(overwrite=False, resume=True)
        config = load_config(run.resume_target().config, cli_overrides(args))
    else:
        config = compose_config(args.config, {}, cli_overrides(args))
    trainer = Trainer(
        config,
        args.output_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        stop_after_steps=args.stop_after_steps,
    )
    payload = trainer.run_training()
    if payload["status"] == "paused":
        print(f"stopped after step {payload['step']}; continue with: bayespeft train -o {trainer.target.root} --resume")
    else:
        _print_scores(payload, trainer.run.root)
    return 0


def run_config_of(args: argparse.Namespace):
    """A finished run and its config with this command's overrides applied."""
    from .config import load_config
    from .rundir import RunDir

    run = RunDir(args.run_dir)
    run.require_trained()
    if args.config is not None:
        raise ConfigError(f"--config: {args.command} uses the run's own config.yaml; change it with overrides")
    return run, load_config(run.config, cli_overrides(args))


def _trained_session(run, config):
    """A session holding the run's trained adapter."""
    from .training import build_session

    session = build_session(config)
    session.method.load_adapter(session.model, run.adapter)
    return session


def _evaluate(args: argparse.Namespace) -> int:
    run, config = run_config_of(args)
    if args.name is not None:
        out = _fresh_result_dir(run, args.name, args.overwrite, "--name")
    else:
        name = _result_name(config.data.dataset, config.data.eval_split, config.eval.n_samples)
        out = _fresh_result_dir(run, name, args.overwrite, "data.dataset")
    from .training import load_examples

    examples = load_examples(config, config.data.eval_split, config.data.max_eval_examples)
    session = _trained_session(run, config)
    extra = None
    if args.checkpoint is not None:
        _load_checkpoint_weights(session, run, args.checkpoint)
        extra = {"checkpoint_step": args.checkpoint}
    payload = _evaluate_into(session, config, examples, out, not args.quiet, extra)
    _print_scores(payload, out)
    return 0


def _load_checkpoint_weights(session, run, step: int) -> None:
    """Replace the adapter's trained weights by those of a training checkpoint (trained methods only)."""
    from .checkpoint import load_training_checkpoint
    from .methods import Method
    from .training import restore_trainable

    if type(session.method).fit_posthoc is not Method.fit_posthoc:
        raise ConfigError(f"--checkpoint: {session.method.name} is fitted after training; evaluate its final adapter")
    directory = run.checkpoints / f"checkpoint-{step}"
    if not directory.is_dir():
        raise ConfigError(
            f"--checkpoint: {directory} does not exist (checkpoints are kept every train.checkpoint_every)"
        )
    restore_trainable(session.model, load_training_checkpoint(directory).trainable, directory)


def _result_name(dataset: str, split: str, n_samples: int) -> str:
    """A results folder name: the dataset (``:`` and path characters as ``-``), split and N."""
    return re.sub(r"[^A-Za-z0-9_.+=@-]", "-", f"{dataset}_{split}_n{n_samples}").lstrip(".")


def _fresh_result_dir(run, name: str, overwrite: bool, flag: str) -> Path:
    """``<run>/eval/<name>``, refused when it holds results and ``overwrite`` is off (``flag``: what named it)."""
    out = run.eval_dir(name, flag)
    check_writable(out, "--run-dir")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: results exist; pass --overwrite or choose another --name")
    return out


def _evaluate_into(session, config, examples: list, out: Path, progress: bool, extra: dict | None = None) -> dict:
    """Evaluate ``examples`` and write metrics.json, predictions.jsonl and the diagram into ``out``."""
    from .checkpoint import write_json_atomic
    from .evaluation import evaluate
    from .training import run_summary

    title = f"{config.method.name} on {config.data.dataset} ({config.data.eval_split}), N={config.eval.n_samples}"
    scores = evaluate(
        session.model,
        session.method,
        session.task,
        examples,
        config.eval,
        session.accelerator,
        output_dir=out,
        title=title,
        progress=progress,
    )
    payload = {**run_summary(config, scores, examples, config.data.eval_split), **(extra or {})}
    if session.accelerator.is_main_process:
        write_json_atomic(out / "metrics.json", payload)
    return payload


def _ood(args: argparse.Namespace) -> int:
    """Evaluate a trained run on other datasets and score OOD detection against its own eval split."""
    import dataclasses

    from .checkpoint import read_json, write_json_atomic, write_text_atomic
    from .config import load_config
    from .metrics.ood import ood_detection
    from .report import load_predictions
    from .training import load_examples

    run, config = run_config_of(args)
    targets = _parse_dataset_list(args.datasets)
    outs = [
        _fresh_result_dir(run, "ood_" + _result_name(d, s, config.eval.n_samples), args.overwrite, "--datasets")
        for d, s in targets
    ]
    summary_dir = _fresh_result_dir(run, f"ood_summary_n{config.eval.n_samples}", args.overwrite, "--datasets")
    jobs = []
    for (dataset, split), out in zip(targets, outs, strict=True):
        data = dataclasses.replace(config.data, dataset=dataset, eval_split=split)
        target = dataclasses.replace(config, data=data)
        try:
            examples = load_examples(target, split, data.max_eval_examples)
        except ConfigError as exc:
            raise ConfigError(f"--datasets: {exc}") from None
        jobs.append((target, examples, out))
    session = _trained_session(run, config)
    saved = read_json(run.metrics)
    trained = load_config(run.config)
    if saved["n_samples"] == config.eval.n_samples and (trained.eval, trained.data) == (config.eval, config.data):
        in_payload, in_records = saved, load_predictions(run.root / "predictions.jsonl")  # the run's own
    else:
        name = "ood_in_" + _result_name(config.data.dataset, config.data.eval_split, config.eval.n_samples)
        in_dir = _fresh_result_dir(run, name, True, "data.dataset")
        in_examples = load_examples(config, config.data.eval_split, config.data.max_eval_examples)
        in_payload = _evaluate_into(session, config, in_examples, in_dir, not args.quiet)
        in_records = load_predictions(in_dir / "predictions.jsonl")
    rows = [
        {
            "dataset": config.data.dataset,
            "split": config.data.eval_split,
            "role": "in-distribution",
            **in_payload["metrics"],
        }
    ]
    for target, examples, out in jobs:
        payload = _evaluate_into(session, target, examples, out, not args.quiet)
        detection = ood_detection(in_records, load_predictions(out / "predictions.jsonl"))
        payload["ood_detection"] = detection
        if session.accelerator.is_main_process:
            write_json_atomic(out / "metrics.json", payload)
        rows.append(
            {
                "dataset": target.data.dataset,
                "split": target.data.eval_split,
                "role": "OOD",
                **payload["metrics"],
                **detection,
            }
        )
    columns = [
        "dataset",
        "split",
        "role",
        "acc",
        "ece",
        "nll",
        "brier",
        "entropy",
        "mutual_information",
        "auroc_entropy",
        "auroc_max_prob",
        "auroc_mutual_information",
    ]
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row.get(c, "") for c in columns]
        table.append("| " + " | ".join(f"{c:.4f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    if session.accelerator.is_main_process:
        summary_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(summary_dir / "summary.json", {"method": config.method.name, "rows": rows})
        write_text_atomic(summary_dir / "summary.md", "\n".join(table) + "\n")
    print("\n".join(table))
    return 0


def _parse_dataset_list(value: str) -> list[tuple[str, str]]:
    """``a,b@test`` -> [(a, validation), (b, test)]; MMLU defaults to its test split."""
    targets = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        name, _, split = item.partition("@")
        targets.append((name, split or ("test" if name.lower().startswith("mmlu") else "validation")))
    if not targets:
        raise ConfigError("--datasets: name at least one dataset, e.g. arc_challenge,mmlu:college_physics@test")
    return targets


def fit_examples(config, split: str, offset: int, limit: int | None) -> list:
    """The examples of ``split`` after its first ``offset`` (e.g. those trained on), at most ``limit`` of them."""
    from .training import load_examples

    if offset < 0:
        raise ConfigError(f"--fit-offset: must be >= 0 (got {offset})")
    if limit is not None and limit < 1:
        raise ConfigError(f"--max-fit-examples: must be >= 1 (got {limit})")
    examples = load_examples(config, split, None if limit is None else offset + limit)[offset:]
    if not examples:
        raise ConfigError(f"--fit-offset: {offset} skips every example of split {split}")
    return examples


def calibrate_temperature(session, config, examples: list, split: str, offset: int, progress: bool) -> dict[str, Any]:
    """Fit a temperature on held-out ``examples`` with the session's trained adapter: the temperature.json payload."""
    from .calibration import apply_temperature, fit_temperature
    from .evaluation import check_finite, predict
    from .metrics import negative_log_likelihood
    from .predictive import posterior_predictive_from_probs

    encoded = session.task.encode(examples)
    sample_probs, labels = predict(
        session.model, session.method, session.task, encoded, config.eval, session.accelerator, progress
    )
    check_finite(sample_probs, "predicted probabilities")
    temperature = fit_temperature(sample_probs, labels)
    before = negative_log_likelihood(posterior_predictive_from_probs(sample_probs), labels)
    after = negative_log_likelihood(
        posterior_predictive_from_probs(apply_temperature(sample_probs, temperature)), labels
    )
    return {
        "temperature": temperature,
        "fit_dataset": config.data.dataset,
        "fit_split": split,
        "fit_offset": offset,
        "num_examples": len(examples),
        "n_samples": config.eval.n_samples,
        "nll_before": before,
        "nll_after": after,
    }


def _calibrate(args: argparse.Namespace) -> int:
    from .checkpoint import write_json_atomic

    run, config = run_config_of(args)
    check_writable(run.root, "--run-dir")
    if args.fit_split not in SPLITS:
        raise ConfigError(f"--fit-split: unknown split {args.fit_split!r} (choose one of {', '.join(SPLITS)})")
    examples = fit_examples(config, args.fit_split, args.fit_offset, args.max_fit_examples)
    session = _trained_session(run, config)
    payload = calibrate_temperature(session, config, examples, args.fit_split, args.fit_offset, not args.quiet)
    temperature, before, after = payload["temperature"], payload["nll_before"], payload["nll_after"]
    if session.accelerator.is_main_process:
        write_json_atomic(run.root / "temperature.json", payload)
    print(
        f"temperature {temperature:.4f} fitted on {config.data.dataset} {args.fit_split} ({len(examples)} examples): "
        f"NLL {before:.4f} -> {after:.4f}; use it with: bayespeft evaluate --run-dir {run.root} "
        f"eval.temperature={temperature:.6g}"
    )
    return 0


def _print_scores(payload: dict[str, Any], where: Path) -> None:
    m = payload["metrics"]
    head = f"{payload['method']} on {payload['dataset']} ({payload['split']}, N={payload['n_samples']}): "
    if "token_nll" in m:  # generative data: answer likelihoods (generation metrics come from `bayespeft sample`)
        print(f"{head}answer-token NLL {m['token_nll']:.4f}  perplexity {m['perplexity']:.2f}  -> {where}")
        return
    print(
        f"{head}ACC {m['acc']:.4f}  ECE {m['ece']:.4f}  NLL {m['nll']:.4f}  Brier {m['brier']:.4f}  "
        f"entropy {m['entropy']:.4f}  MI {m['mutual_information']:.4f}  -> {where}"
    )


if __name__ == "__main__":
    sys.exit(main())
