"""User-facing errors: one clear line for a user's mistake (tracebacks stay for our own bugs)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in what the user gave us (a path, a key, a file's content): shown as one line, exit 1."""


class ConfigError(UserError, ValueError):
    """A configuration key with a value we cannot use (raised while the arguments are parsed)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""

