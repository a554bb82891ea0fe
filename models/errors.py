"""Errors a user can fix: a bad setting or a damaged input. The CLI prints them as one line and exits 2.

Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


class UserError(Exception):
    """An error whose message alone tells the user what to change."""


class ConfigError(UserError, ValueError):
    """A setting outside what is allowed: ``<setting>=<value>: <what is allowed>``."""

    def __init__(self, setting: str, value: Any, allowed: str) -> None:
        self.setting, self.value, self.allowed = setting, value, allowed
        super().__init__(f"{setting}={format_value(value)}: {allowed}")


class InputError(UserError):
    """An input on disk that is missing, damaged or unwritable: names the path and what to do."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = Path(path), problem, fix
        super().__init__(f"{path}: {problem}; {fix}")


class NonFiniteError(UserError):
    """A computation produced NaN or inf where it must not: names where, and the settings to change."""


class DecodeStall(UserError):
    """A decode that can no longer move (a model that only predicts the mask token): names where and the fix."""


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return str(value)


def first_line(error: BaseException) -> str:
    """An exception's first line of text, or its type's name when it has none."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
