"""User-facing errors: one clear line for a user's mistake (tracebacks stay for our own bugs)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A mistake in what the user gave us (a path, a key, a file's content): shown as one line, exit 1."""


class ConfigError(UserError, ValueError):
    """A configuration key or command-line option with a value we cannot use (raised while the arguments are
    parsed, or before a command reads any model or data)."""


class DatasetRowError(ValueError):
    """A row that cannot be used: where (file, 1-based row, field), what is wrong, and a short ``reason``
    (``bad_json``, ``bad_encoding``, ``missing_field``, ``bad_field``, ``missing_image``, ``bad_image``, ``layout``,
    ``too_long``, ``rejected`` …) for counts.
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


def check_at_least_one(*options: tuple[str, int | None]) -> None:
    """A :class:`ConfigError` for the first ``(option, value)`` whose value is below 1 (None: not given)."""
    for option, value in options:
        if value is not None and value < 1:
            raise ConfigError(f"{option} must be at least 1; got {value}")


@contextmanager
def encoder_rejects(encoder: str, path: str | Path | None, row: int | None, has_images: bool) -> Iterator[None]:
    """Inside: a toolkit's encoder (LLaMA-Factory's multimodal plugin, a Hugging Face processor) encodes one row.
    What such an encoder raises on a row it cannot take — ``ValueError`` (a placeholder count that does not match,
    an image shape it refuses), ``OSError`` or PIL's ``DecompressionBombError`` (an image it cannot open) — comes
    out as a :class:`DatasetRowError` (reason ``rejected``) at ``path``, ``row``, so the row stops the run with
    one line or is skipped and counted. Other exceptions pass unchanged: they are bugs, not bad rows.

    The field is ``prompt``, or ``prompt or images`` for a row with images: the encoders' errors do not say which.
    """
    from PIL import Image

    try:
        yield
    except (DatasetRowError, UserError):
        raise
    except (ValueError, OSError, Image.DecompressionBombError) as exc:
        words = " ".join(str(exc).split()) or type(exc).__name__
        if len(words) > 300:
            words = words[:300] + " …"
        raise DatasetRowError(path, row, "prompt or images" if has_images else "prompt",
                              f"rejected by {encoder}: {words}", "rejected") from exc


class DatasetFileError(UserError, ValueError):
    """A dataset file that cannot be used as a whole: an unsupported format, or no usable row in it."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""

