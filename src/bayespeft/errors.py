"""User-facing errors: one clear line naming the file, field or flag at fault."""

from __future__ import annotations

import sys
from collections.abc import Callable


class BayesPeftError(Exception):
    """Bad user input (config, flag, data file, run directory).

    The CLI prints ``error: <message>`` on one line and exits with status 2, so the
    message must say what is wrong and where (file and line, field or flag).
    """


class ConfigError(BayesPeftError):
    """An invalid configuration value or an unknown name."""


class DataError(BayesPeftError):
    """A missing or malformed data file."""


class RunDirError(BayesPeftError):
    """A run directory that cannot be used as asked (exists, missing, incomplete)."""


class NumericalError(BayesPeftError):
    """A computation gave NaN or infinite values (a diverging training run, a broken adapter)."""


def report_bad_input(error: BayesPeftError) -> int:
    """Print ``error: <message>`` on stderr and return the bad-input exit status, 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def exit_on_bad_input(main: Callable[[], object]) -> None:
    """Run a script's ``main`` as the CLI runs a command, so benchmark scripts refuse bad input the way
    ``bayespeft`` does: a BayesPeftError becomes one line on stderr and exit status 2."""
    try:
        main()
    except BayesPeftError as exc:
        sys.exit(report_bad_input(exc))
