"""Per-step metrics for the PRISM trainers: collected during a logging interval, gathered across ranks
(non-finite values left out, as trl does) and averaged into each ``log``."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping


def gather_metrics(local: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """Every rank's values per key (each rank's own dict in a single process)."""
    from prism_plugin.distributed import all_gather

    merged: dict[str, list[float]] = defaultdict(list)
    for rank_metrics in all_gather({key: list(values) for key, values in local.items()}):
        for key, values in (rank_metrics or {}).items():
            merged[key].extend(values)
    return dict(merged)


class MetricsLogMixin:
    """Mix into a ``transformers.Trainer``: ``record_metrics`` during steps, averages land in each log.

    ``log`` runs on every rank (the Trainer calls it everywhere), so the gather is a collective that
    every rank joins; only the main process's callbacks write the result.
    """

    def _init_metrics(self) -> None:
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def record_metrics(self, mode: str, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self._metrics[mode][key].append(float(value))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in sorted(gather_metrics(self._metrics[mode]).items()):
            finite = [v for v in values if math.isfinite(v)]
            if finite:
                logs[f"{prefix}{key}"] = round(sum(finite) / len(finite), 4)
        self._metrics[mode].clear()
        super().log(logs, start_time)  # type: ignore[misc]
