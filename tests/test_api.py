"""The Python API is the product: every command is a public function of ``bayespeft`` named in its docstring."""

from __future__ import annotations

import inspect
import subprocess
import sys

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


def fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter (nothing imported yet) and return its stdout."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_import_is_light_and_every_public_name_resolves():
    """``import bayespeft`` loads no torch; each name of ``__all__`` imports its module on first use."""
    out = fresh_python(
        "import sys, bayespeft; light = 'torch' not in sys.modules; "
        "missing = [n for n in bayespeft.__all__ if getattr(bayespeft, n, None) is None]; "
        "print(light, missing, set(bayespeft.__all__) <= set(dir(bayespeft)))"
    )
    assert out == "True [] True"
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        bayespeft.not_a_name  # noqa: B018


def test_load_config_first_knows_every_builtin_method():
    """The package's load_config, called before anything else, knows the methods (their configs register on import)."""
    out = fresh_python("import bayespeft; print(bayespeft.load_config(None, ['method.name=blob']).method.beta)")
    assert out == "0.2"


def test_builtin_method_list_matches_the_registry():
    """The command line lists methods from a torch-free constant; it must name what the registry holds."""
    from bayespeft.choices import BUILTIN_METHODS

    registered = fresh_python("import bayespeft; print(','.join(sorted(bayespeft.method_names())))")
    assert registered.split(",") == sorted(BUILTIN_METHODS)
