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
from typing import Any, NamedTuple

from ..config import RunConfig
from ..errors import ConfigError
from ..methods import method_names

__all__ = [
    "OUTPUT_DIR_FLAGS",
    "SWITCH_FLAGS",
    "VALUE_FLAGS",
    "ValueFlag",
    "add_config_flags",
    "cli_overrides",
    "has_config_key",
    "reject_config",
    "spec_file_and_overrides",
]

#: The spellings of a command's output folder flag (ours, short, Hugging Face's).
OUTPUT_DIR_FLAGS = ("--output-dir", "-o", "--output_dir")


class ValueFlag(NamedTuple):
    """A flag whose value is written into the config at ``key``; ``training``: only training commands offer it."""

    flags: tuple[str, ...]
    key: str
    kind: type
    help: str
    training: bool = False


VALUE_FLAGS: list[ValueFlag] = [
    ValueFlag(
        ("--model", "--model-name", "--model_name_or_path"),
        "model.name",
        str,
        "short name (smollm2-135m, minilm-l6), hub id or folder",
    ),
    ValueFlag(("--precision",), "model.precision", str, "fp32, bf16 or bf16-autocast"),
    ValueFlag(("--lora-r",), "model.lora.r", int, "LoRA rank", True),
    ValueFlag(("--lora-alpha",), "model.lora.alpha", float, "LoRA alpha (scaling alpha / r)", True),
    ValueFlag(("--lora-dropout",), "model.lora.dropout", float, "LoRA dropout", True),
    ValueFlag(("--lora-targets",), "model.lora.target_modules", str, "comma-separated module names", True),
    ValueFlag(("--method", "--modelwrapper"), "method.name", str, "one of: {methods}"),
    ValueFlag(("--bayes-beta", "--beta"), "method.beta", float, "prior std (blob)", True),
    ValueFlag(("--bayes-eps", "--eps"), "method.eps", float, "rho initialisation scale (blob)", True),
    ValueFlag(("--bayes-gamma", "--gamma"), "method.gamma", float, "KL period exponent (blob)", True),
    ValueFlag(("--bayes-kllr", "--kl-lr"), "method.kl_lr", float, "SGD lr of the KL step (blob)", True),
    ValueFlag(("--kl-schedule",), "method.kl_schedule", str, "cyclic or uniform (blob)", True),
    ValueFlag(("--kl-period",), "method.kl_period", str, "dataset_rescaled or epoch (blob)", True),
    ValueFlag(("--blob-optimization",), "method.optimization", str, "split or elbo (blob)", True),
    ValueFlag(("--dataset",), "data.dataset", str, "dataset name, e.g. arc_easy, obqa, mmlu:chem"),
    ValueFlag(("--data-dir",), "data.data_dir", str, "folder in the layout of shared/data (default: the hub)"),
    ValueFlag(("--train-split",), "data.train_split", str, "train, validation or test", True),
    ValueFlag(("--eval-split",), "data.eval_split", str, "train, validation or test"),
    ValueFlag(("--max-train-examples",), "data.max_train_examples", int, "use the first N training examples", True),
    ValueFlag(("--max-eval-examples",), "data.max_eval_examples", int, "use the first N evaluation examples"),
    ValueFlag(("--max-seq-len", "--max-length"), "data.max_length", int, "token limit per prompt"),
    ValueFlag(("--lr", "--learning_rate"), "train.lr", float, "AdamW learning rate", True),
    ValueFlag(
        ("--batch-size", "--per_device_train_batch_size"),
        "train.batch_size",
        int,
        "per-process training batch size",
        True,
    ),
    ValueFlag(("--max-steps", "--max-train-steps"), "train.max_steps", int, "optimisation steps", True),
    ValueFlag(("--epochs", "--num_train_epochs"), "train.epochs", int, "passes over the training data", True),
    ValueFlag(
        ("--gradient-accumulation-steps", "--gradient_accumulation_steps"),
        "train.gradient_accumulation_steps",
        int,
        "micro-batches summed into one optimisation step",
        True,
    ),
    ValueFlag(("--warmup-ratio",), "train.warmup_ratio", float, "linear warm-up fraction", True),
    ValueFlag(("--adam-epsilon",), "train.adam_eps", float, "AdamW epsilon", True),
    ValueFlag(("--opt-wd", "--weight-decay"), "train.weight_decay", float, "AdamW weight decay", True),
    ValueFlag(("--seed",), "train.seed", int, "random seed"),
    ValueFlag(("--checkpoint-every",), "train.checkpoint_every", int, "steps between resumable checkpoints", True),
    ValueFlag(
        ("--eval-every", "--eval_steps"),
        "train.eval_every",
        int,
        "evaluate on held-out data every k steps (0 = only at the end)",
        True,
    ),
    ValueFlag(
        ("--report-to",),
        "train.report_to",
        str,
        "experiment trackers, comma-separated: tensorboard, wandb",
        True,
    ),
    ValueFlag(
        ("--n-samples", "--bayes-eval-n-samples", "--bayes-eval-n-samples-final"),
        "eval.n_samples",
        int,
        "posterior samples at evaluation (0 = posterior mean)",
    ),
    ValueFlag(("--eval-batch-size",), "eval.batch_size", int, "evaluation batch size"),
    ValueFlag(("--samples-per-pass",), "eval.samples_per_pass", int, "posterior draws stacked in one forward pass"),
    ValueFlag(("--n-bins",), "eval.n_bins", int, "calibration bins for ECE"),
]
#: Reference on/off switches: flag -> (dotted key, value when given, training only).
SWITCH_FLAGS: dict[str, tuple[str, Any, bool]] = {
    "--bayes-inference-notsample": ("eval.n_samples", 0, False),
    "--bayes-klreweighting": ("method.kl_schedule", "cyclic", True),
    "--bayes-datasetrescaling": ("method.kl_period", "dataset_rescaled", True),
}


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


def _offered(training: bool) -> tuple[list[ValueFlag], dict[str, tuple[str, Any, bool]]]:
    """The value flags and switches a command offers: all of them, or those that do not change training."""
    values = [f for f in VALUE_FLAGS if has_config_key(f.key) and (training or not f.training)]
    switches = {flag: spec for flag, spec in SWITCH_FLAGS.items() if training or not spec[2]}
    return values, switches


def add_config_flags(parser: argparse.ArgumentParser, *, training: bool = True) -> None:
    """Add ``--config``, the positional overrides and the config flags (without training's when not ``training``)."""
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.add_argument("--config", "-c", type=Path, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. method.beta=0.1")
    group = parser.add_argument_group("config shortcuts")
    values, switches = _offered(training)
    for flag in values:
        text = flag.help.format(methods=", ".join(method_names()))
        group.add_argument(*flag.flags, dest=flag.key, type=flag.kind, default=None, help=f"{text} [{flag.key}]")
    for name, (key, value, _) in switches.items():
        group.add_argument(name, dest=f"switch:{name}", action="store_true", help=f"sets {key}={value}")


def cli_overrides(args: argparse.Namespace) -> list[str]:
    """Positional overrides first, then flags (flags win), as dotted key=value strings."""
    items = list(args.overrides)
    for flag in VALUE_FLAGS:
        value = getattr(args, flag.key, None)
        if value is not None:
            items.append(f"{flag.key}={_yaml_value(flag.key, value)}")
    for name, (key, value, _) in SWITCH_FLAGS.items():
        if getattr(args, f"switch:{name}", False):
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
