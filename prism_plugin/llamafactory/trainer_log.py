"""Metrics from outside a Trainer (the drift monitor's) into its own ``log``, while a run lasts.

A callback cannot add keys to the logs the Trainer writes; for the run it wraps, ``transformers.Trainer.log``
adds the monitor's pending metrics, so they take the Trainer's own path (``log_history``, console,
``report_to``). The patch is scoped: the original ``log`` is back when the run ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def log_through_trainer(monitor: Any) -> Iterator[None]:
    """While the run lasts, ``transformers.Trainer.log`` adds the monitor's pending metrics to the logs
    it is given, so they take the Trainer's own path (``log_history``, console, ``report_to``)."""
    from transformers import Trainer

    original = Trainer.log

    def log(self: Any, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        logs.update(monitor.take_pending())
        original(self, logs, *args, **kwargs)

    Trainer.log = log
    try:
        yield
    finally:
        Trainer.log = original
