"""The results journal of ``prism-plugin data teach``: one JSON line per answered request, keyed by
(row, sample), appended and flushed as each answer arrives.

The journal is the run's only state: the output files are rebuilt from it, and a re-run skips the keys it
already holds, so no paid request is sent twice and nothing answered is lost when a run dies. A line is
written whole (one ``write`` of the line and its newline, then flushed and synced); a kill in the middle
of a write can leave only a torn last line with no newline, which :meth:`Journal.open` cuts off (that
request is sent again). One run at a time writes a journal (an exclusive lock on the file, where the
platform has ``fcntl``).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from prism_plugin.errors import UserError

Key = tuple[int, int]
"""(1-based row of the data file, sample index)."""


class Journal:
    """An open, locked journal file: the entries it held when opened, and :meth:`append` for new ones."""

    def __init__(self, path: Path, handle: Any, entries: dict[Key, dict[str, Any]], repaired: str | None) -> None:
        self.path, self._handle, self.entries, self.repaired = path, handle, entries, repaired
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path) -> Journal:
        """Open (or create) ``path`` for appending: cut a torn last line, read every entry, lock the file.
        A broken complete line or a duplicate key is a :class:`UserError` naming the line."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+b")
        _lock(handle, path)
        handle.seek(0)
        raw = handle.read()
        repaired = None
        if raw and not raw.endswith(b"\n"):
            cut = raw.rfind(b"\n") + 1
            repaired = raw[cut:][:200].decode("utf-8", "replace")
            handle.truncate(cut)
            handle.flush()
            os.fsync(handle.fileno())
            raw = raw[:cut]
        entries: dict[Key, dict[str, Any]] = {}
        for line_no, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                key = (int(entry["row"]), int(entry["sample"]))
            except (ValueError, KeyError, TypeError) as exc:
                handle.close()
                raise UserError(f"{path}, line {line_no}: not a journal entry ({exc}); "
                                "fix or remove that line, or use a new --out") from None
            if key in entries:
                handle.close()
                raise UserError(f"{path}, line {line_no}: row {key[0]} sample {key[1]} is already answered on "
                                "an earlier line; was the journal written by two runs at once?")
            entry["line"] = line_no
            entries[key] = entry
        return cls(path, handle, entries, repaired)

    def append(self, entry: dict[str, Any]) -> None:
        """Write one entry as a whole line, flushed and synced (thread-safe)."""
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        self.entries[(int(entry["row"]), int(entry["sample"]))] = entry

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock(handle: Any, path: Path) -> None:
    """An exclusive, non-blocking lock on the open journal: a second run on the same ``--out`` stops at once."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UserError(f"{path} is in use by another teach run; wait for it or use another --out") from None
