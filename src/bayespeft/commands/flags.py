"""Config flags shared by the commands: each sets one dotted config key (reference and HF spellings too).

Flags map onto dotted config keys; the BLoB reference repository's flag names (``--modelwrapper``,
``--bayes-beta``, ``--bayes-eval-n-samples``, ...) and Hugging Face's (``--learning_rate``,
``--per_device_train_batch_size``, ...) are accepted too. Any key can be set with a positional
``section.key=value`` override. Commands that evaluate a finished run offer no training flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from ..choices import BUILTIN_METHODS
from ..config import RunConfig
from ..errors import ConfigError

__all__ = [
    "OUTPUT_DIR_FLAGS",
    "SWITCH_FLAGS",
    "VALUE_FLAGS",
    "add_config_flags",
    "cli_overrides",
    "has_config_key",
    "is_training_key",
    "reject_config",
    "spec_file_and_overrides",
]

#: The spellings of a command's output folder flag (ours, short, Hugging Face's).
OUTPUT_DIR_FLAGS = ("--output-dir", "-o", "--output_dir")


#: (flags, dotted key, type, help); a flag value is written into the config at that key.
VALUE_FLAGS: list[tuple[tuple[str, ...], str, type, str]] = [
    (
        ("--model", "--model-name", "--model_name_or_path"),
        "model.name",
        str,
        "short name (smollm2-135m, minilm-l6), hub id or folder",
    ),
    (("--precision",), "model.precision", str, "fp32, bf16 or bf16-autocast"),
    (("--lora-r",), "model.lora.r", int, "LoRA rank"),
    (("--lora-alpha",), "model.lora.alpha", float, "LoRA alpha (scaling alpha / r)"),
    (("--lora-dropout",), "model.lora.dropout", float, "LoRA dropout"),
    (("--lora-targets",), "model.lora.target_modules", str, "comma-separated module names"),
    (("--method", "--modelwrapper"), "method.name", str, "one of: {methods}"),
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
    (("--lr", "--learning_rate"), "train.lr", float, "AdamW learning rate"),
    (("--batch-size", "--per_device_train_batch_size"), "train.batch_size", int, "per-process training batch size"),
    (("--max-steps", "--max-train-steps"), "train.max_steps", int, "optimisation steps"),
    (("--epochs", "--num_train_epochs"), "train.epochs", int, "passes over the training data"),
    (
        ("--gradient-accumulation-steps", "--gradient_accumulation_steps"),
        "train.gradient_accumulation_steps",
        int,
        "micro-batches summed into one optimisation step",
    ),
    (("--warmup-ratio",), "train.warmup_ratio", float, "linear warm-up fraction"),
    (("--adam-epsilon",), "train.adam_eps", float, "AdamW epsilon"),
    (("--opt-wd", "--weight-decay"), "train.weight_decay", float, "AdamW weight decay"),
    (("--seed",), "train.seed", int, "random seed"),
    (("--checkpoint-every",), "train.checkpoint_every", int, "steps between resumable checkpoints"),
    (
        ("--eval-every", "--eval_steps"),
        "train.eval_every",
        int,
        "evaluate on held-out data every k steps (0 = only at the end)",
    ),
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
#: Reference on/off switches: flag -> (dotted key, value when given).
SWITCH_FLAGS: dict[str, tuple[str, Any]] = {
    "--bayes-inference-notsample": ("eval.n_samples", 0),
    "--bayes-klreweighting": ("method.kl_schedule", "cyclic"),
    "--bayes-datasetrescaling": ("method.kl_period", "dataset_rescaled"),
}
#: Data keys that only change training (its split and size); see is_training_key for the rest.
_TRAINING_DATA_KEYS = ("data.train_split", "data.max_train_examples")


def has_config_key(key: str) -> bool:
    """Whether the dotted ``key`` is a field of :class:`RunConfig` (method keys depend on the method: always)."""
    node: Any = RunConfig
    for part in key.split("."):
        if not dataclasses.is_dataclass(node):
            return False
        hints = typing.get_type_hints(node)
        if part not in hints:
            return False
        node = hints[part]
        if part == "method":
            return True
    return True


def is_training_key(key: str) -> bool:
    """Whether setting ``key`` only changes training: optimisation, LoRA shape, training data, method knobs.

    ``train.seed`` is not one: it also seeds what evaluation rebuilds (a randomly initialised head).
    """
    if key == "train.seed":
        return False
    return (
        key.startswith(("train.", "model.lora."))
        or key in _TRAINING_DATA_KEYS
        or (key.startswith("method.") and key != "method.name")
    )


def add_config_flags(parser: argparse.ArgumentParser, *, training: bool = True) -> None:
    """Add ``--config``, the positional overrides and the config flags (without training's when not ``training``)."""
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.add_argument("--config", "-c", type=Path, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. method.beta=0.1")
    group = parser.add_argument_group("config shortcuts")
    for flags, key, kind, text in VALUE_FLAGS:
        if has_config_key(key) and (training or not is_training_key(key)):
            text = text.format(methods=", ".join(BUILTIN_METHODS))
            group.add_argument(*flags, dest=key, type=kind, default=None, help=f"{text} [{key}]")
    for flag, (key, value) in SWITCH_FLAGS.items():
        if training or not is_training_key(key):
            group.add_argument(flag, dest=f"switch:{flag}", action="store_true", help=f"sets {key}={value}")


def cli_overrides(args: argparse.Namespace) -> list[str]:
    """Positional overrides first, then flags (flags win), as dotted key=value strings."""
    items = list(args.overrides)
    for _flags, key, _kind, _ in VALUE_FLAGS:
        value = getattr(args, key, None)  # absent: a flag this command does not offer
        if value is not None:
            items.append(f"{key}={_yaml_value(key, value)}")
    for flag, (key, value) in SWITCH_FLAGS.items():
        if getattr(args, f"switch:{flag}", False):
            items.append(f"{key}={value}")
    return items


def reject_config(args: argparse.Namespace) -> None:
    """Commands on a finished run use its config.yaml: ``--config`` is an error naming the command."""
    if args.config is not None:
        raise ConfigError(f"--config: {args.command} uses the run's own config.yaml; change it with overrides")


def spec_file_and_overrides(args: argparse.Namespace, command: str) -> tuple[str | None, list[str]]:
    """The positionals of a spec-driven command: at most one spec file (no ``=``) and the ``key=value`` overrides."""
    items = [item for item in (args.spec, *args.overrides) if item]
    files = [item for item in items if "=" not in item]
    if len(files) > 1:
        raise ConfigError(f"{command}: one spec file expected, got {', '.join(files)}")
    return (files[0] if files else None), [item for item in items if "=" in item]


def _yaml_value(key: str, value: Any) -> str:
    if key == "model.lora.target_modules":
        return "[" + ",".join(v.strip() for v in str(value).split(",")) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)
