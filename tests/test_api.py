"""The Python API is the product: every command is a public function of ``bayespeft`` named in its docstring."""

from __future__ import annotations

import inspect

import pytest

import bayespeft
from bayespeft.cli import build_parser

#: Sub-command -> the functions of ``bayespeft`` it calls (sample-store: one per action).
TWINS = {
    "train": ["train"],
    "evaluate": ["evaluate"],
    "calibrate": ["calibrate"],
    "ood": ["ood"],
    "report": ["report"],
    "sweep": ["sweep"],
    "compare": ["compare"],
    "tune": ["tune"],
    "sample": ["sample"],
    "sample-store": ["merge_stores", "export_store", "salvage_store", "store_info"],
    "score": ["score"],
}


def sub_commands() -> list[str]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]  # argparse keeps its sub-parsers here
    return list(action.choices)


def test_every_command_has_a_twin():
    assert sorted(sub_commands()) == sorted(TWINS)


@pytest.mark.parametrize("command", sorted(TWINS))
def test_twin_is_public_and_names_its_command(command):
    for name in TWINS[command]:
        function = getattr(bayespeft, name)
        assert inspect.isfunction(function) and name in bayespeft.__all__
        assert not function.__module__.startswith("bayespeft.commands"), "the API must not live in the CLI layer"
        assert f"``bayespeft {command}" in inspect.getdoc(function), f"{name}'s docstring does not name {command}"


def test_load_config_composes_like_the_cli():
    """The public load_config reads the defaults list of configs/base.yaml, groups and dotted overrides."""
    from pathlib import Path

    base = Path(__file__).resolve().parents[1] / "configs" / "base.yaml"
    config = bayespeft.load_config(base, ["method=mle", "train.lr=0.001"])
    assert config.method.name == "mle" and config.train.lr == 0.001
    assert config.model.name == "smollm2-135m" and config.data.dataset == "arc_easy"  # from the defaults list
    assert bayespeft.load_config(base).method.name == "blob"
