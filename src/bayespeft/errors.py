"""User-facing errors: one clear line naming the file, field or flag at fault."""

from __future__ import annotations


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
