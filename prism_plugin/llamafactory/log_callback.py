"""The PRISM stages' ``trainer_log.jsonl``: LLaMA-Factory's own log, with every metric of each log entry.

LLaMA-Factory's ``LogCallback`` writes one JSON line per log to ``output_dir/trainer_log.jsonl`` — what
LlamaBoard reads for the progress bar and the loss curve while a run is live — but keeps only ``loss``,
``reward``, ``accuracy``, ``lr`` and ``epoch`` of it. :class:`PrismLogCallback` writes the same lines with
the PRISM metrics beside them (``caption/score_gap``, ``disc/accuracy``, ``valid_ratio``, …), so the board can
draw those curves live too (:mod:`prism_plugin.llamafactory.board`).

Under LlamaBoard it also changes what the board's Abort (a SIGABRT) does: LLaMA-Factory's callback stops
after the step and lets the stage save its final model, which would mark an aborted PRISM run finished.
Here an Abort before training starts ends the process at once (nothing to save); once training runs,
:class:`~prism_plugin.llamafactory.preemption.PreemptionCallback` takes the signal: the step under way
finishes, a checkpoint is saved, the process exits 134 and the output folder is a resumable, unfinished run.
"""

from __future__ import annotations

import collections
import signal
import sys
import threading
from typing import Any

from llamafactory.train.callbacks import LogCallback

ABORTED_EXIT_CODE = 128 + int(signal.SIGABRT)  # 134, what a process killed by SIGABRT reports


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class PrismLogCallback(LogCallback):
    """``LogCallback`` whose ``trainer_log.jsonl`` lines hold every numeric key of the Trainer's log entry."""

    def __init__(self, stage: str = "prism") -> None:
        super().__init__()
        self.stage = stage
        self._extra: collections.deque[dict[str, float]] = collections.deque()
        if self.webui_mode and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGABRT, self._abort_before_training)

    def _abort_before_training(self, signum: int, frame: Any) -> None:
        sys.stderr.write(f"prism-plugin: {self.stage}: aborted before training started; nothing was saved\n")
        raise SystemExit(ABORTED_EXIT_CODE)

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if args.should_save and self.thread_pool is not None:  # the parent submits exactly one write then
            entry = state.log_history[-1] if state.log_history else {}
            self._extra.append({key: value for key, value in entry.items() if _numeric(value)})
        return super().on_log(args, state, control, **kwargs)

    def _write_log(self, output_dir: str, logs: dict[str, Any]) -> None:
        # one writer thread, submissions in order: the oldest pending entry belongs to this write
        extra = self._extra.popleft() if self._extra else {}
        super()._write_log(output_dir, {**logs, **{k: v for k, v in extra.items() if k not in logs}})
