"""How a command calls its twin in the Python API: every parsed flag goes to the parameter of the same name.

Passing flags by name keeps the command and the function in step: a flag the function does not
take is not passed, and ``--quiet`` becomes ``progress=False``.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["call_api"]


def call_api(function: Callable[..., Any], args: argparse.Namespace, **given: Any) -> Any:
    """Call ``function`` with the flags in ``args`` named like its parameters; ``given`` values win."""
    parameters = inspect.signature(function).parameters
    values = {name: getattr(args, name) for name in parameters if hasattr(args, name)}
    if "progress" in parameters and hasattr(args, "quiet"):
        values["progress"] = not args.quiet
    return function(**{**values, **given})
