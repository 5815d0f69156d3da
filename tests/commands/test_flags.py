"""Config flags: Hugging Face spellings, no training flags on evaluation commands, the --method help."""

from __future__ import annotations

import pytest

from bayespeft.cli import build_parser, main, parse_args
from bayespeft.commands.flags import VALUE_FLAGS, cli_overrides, has_config_key, is_training_key
from bayespeft.config import load_config
from bayespeft.methods import method_names


def composed(argv: list[str]):
    return load_config(None, cli_overrides(parse_args(argv)))


@pytest.mark.parametrize(
    ("flags", "field", "value"),
    [
        (["--model_name_or_path", "minilm-l6"], ("model", "name"), "minilm-l6"),
        (["--learning_rate", "0.002"], ("train", "lr"), 0.002),
        (["--per_device_train_batch_size", "3"], ("train", "batch_size"), 3),
        (["--eval_steps", "5"], ("train", "eval_every"), 5),
    ],
)
def test_hugging_face_spellings_set_the_same_keys(flags, field, value):
    section, name = field
    assert getattr(getattr(composed(["train", "--output_dir", "unused", *flags]), section), name) == value


def test_output_dir_hugging_face_spelling():
    assert str(parse_args(["train", "--output_dir", "runs/x"]).output_dir) == "runs/x"


def test_flags_for_keys_the_config_lacks_are_not_offered():
    """--num_train_epochs and --gradient_accumulation_steps appear once TrainConfig has their keys."""
    for flags, key, _kind, _help in VALUE_FLAGS:
        if not has_config_key(key):
            with pytest.raises(SystemExit):
                parse_args(["train", "-o", "unused", flags[-1], "1"])


@pytest.mark.parametrize("command", ["evaluate", "calibrate", "ood"])
@pytest.mark.parametrize("flag", ["--lr", "--learning_rate", "--batch-size", "--max-steps", "--lora-r", "--bayes-beta"])
def test_evaluation_commands_refuse_training_flags(capsys, command, flag):
    extra = ["--datasets", "obqa"] if command == "ood" else []
    with pytest.raises(SystemExit) as exc:
        main([command, "--run-dir", "unused", *extra, flag, "1"])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("command", ["evaluate", "calibrate", "ood"])
def test_evaluation_commands_offer_no_training_flag(command):
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    offered = {a.dest for a in sub.choices[command]._actions}
    training = {key for _flags, key, _kind, _help in VALUE_FLAGS if is_training_key(key)}
    assert not offered & training
    assert "train.seed" in offered and "eval.n_samples" in offered  # the seed rebuilds what training initialised


def test_method_help_lists_every_method():
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    for name in method_names():
        assert name in help_text
    assert "one of: " + ", ".join(method_names()) in help_text
