"""Preemption: on SIGTERM (what Slurm and Kubernetes send before a kill) the PRISM stages finish the step
under way, save a checkpoint, and exit non-zero with one line that says where the run resumes. A run started
by LlamaBoard (``LLAMABOARD_ENABLED``) treats the board's Abort, a SIGABRT, the same way.

The signal may reach the ranks at different moments, so after each optimiser step they agree (a sum over
the ranks of "signalled") and all stop after the same step. Under torchrun, torchrun forwards the signal to
its workers and kills them ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds later (30 by default): set it above one
step plus one save.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from transformers import TrainerCallback

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a process killed by the signal reports


class PreemptionCallback(TrainerCallback):
    """Turns a SIGTERM into "save after this step, then stop" on every rank (see the module docstring)."""

    def __init__(self) -> None:
        self.signalled = False
        self.signal_number = signal.SIGTERM  # the signal that stopped the run (SIGABRT: LlamaBoard's Abort)
        self.stopped_at: int | None = None  # the global step the run stopped after, once it has

    def install(self) -> None:
        """Catch SIGTERM, and under LlamaBoard SIGABRT, in this process (only the main thread may; elsewhere the
        defaults stay)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            if os.environ.get("LLAMABOARD_ENABLED", "").lower() in ("1", "true", "y"):
                signal.signal(signal.SIGABRT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True
        self.signal_number = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal_number).name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, what a process killed by it reports (143 for SIGTERM)."""
        return 128 + int(self.signal_number)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        from prism_plugin.distributed import any_rank

        if any_rank(self.signalled, args.device):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


def preempted_message(stage: str, output_dir: str, step: int, signal_name: str = "SIGTERM") -> str:
    """The one line a preempted run ends with."""
    return (f"{stage}: stopped by {signal_name} after step {step}; checkpoint {output_dir}/checkpoint-{step} is "
            f"saved. Run the same command again (overwrite_output_dir: false) to resume from it")
