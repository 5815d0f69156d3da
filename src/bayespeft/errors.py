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


def exit_on_bad_input(main: Callable[[], object]) -> None:
    """Run a script's ``main`` as the CLI runs a command: a BayesPeftError becomes ``error: <message>``
    on stderr and exit status 2, so benchmark scripts refuse bad input the way ``bayespeft`` does."""
    try:
        main()
    except BayesPeftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
