"""User-facing errors: one clear line for a user's mistake (tracebacks stay for our own bugs)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class UserError(Exception):
    """A mistake in what the user gave us (a path, a key, a file's content): shown as one line, exit 1."""


class ConfigError(UserError, ValueError):
    """A configuration key with a value we cannot use (raised while the arguments are parsed)."""


class DatasetRowError(ValueError):
    """A row that cannot be used: where (file, 1-based row, field), what is wrong, and a short ``reason``
    (``bad_json``, ``missing_field``, ``bad_field``, ``missing_image``, ``layout``, ``too_long`` …) for counts.
    ``path`` and ``row`` may be None for rows given in memory; :meth:`at` adds them."""

    def __init__(self, path: str | Path | None, row: int | None, field_name: str, message: str,
                 reason: str = "bad_field") -> None:
        self.path = None if path is None else str(path)
        self.row, self.field, self.message, self.reason = row, field_name, message, reason
        where = [part for part in (self.path, None if row is None else f"row {row}") if part]
        super().__init__(", ".join([*where, f"field '{field_name}': {message}"]))

    def at(self, path: str | Path | None, row: int | None) -> DatasetRowError:
        """The same error, located at ``path``, ``row``."""
        return DatasetRowError(path, row, self.field, self.message, self.reason)


class DatasetFileError(UserError, ValueError):
    """A dataset file that cannot be used as a whole: an unsupported format, or no usable row in it."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""

