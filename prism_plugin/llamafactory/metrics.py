"""Per-step metrics for the PRISM trainers: collected during a logging interval, averaged into ``log``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping


class MetricsLogMixin:
    """Mix into a ``transformers.Trainer``: ``record_metrics`` during steps, averages land in each log."""

    def _init_metrics(self) -> None:
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def record_metrics(self, mode: str, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self._metrics[mode][key].append(float(value))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self._metrics[mode].items():
            if values:
                logs[f"{prefix}{key}"] = round(sum(values) / len(values), 4)
        self._metrics[mode].clear()
        super().log(logs, start_time)  # type: ignore[misc]
