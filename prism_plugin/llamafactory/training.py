"""The end of a PRISM stage inside LLaMA-Factory: train, save what LLaMA-Factory's own stages save, report the
data and plot the curves (shared by ``prism_disc`` and ``prism_align``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def train_and_save(trainer: Any, training_args: Any, finetuning_args: Any, reports: list, plot_keys: list) -> None:
    """Train, then save model, metrics, state, the data report and (``plot_loss``) the metric curves, and last
    the completion marker. A run stopped by SIGTERM (or LlamaBoard's Abort) saves a checkpoint and exits non-zero
    instead (:mod:`prism_plugin.llamafactory.preemption`)."""
    from prism_plugin.llamafactory.checkpoints import mark_output_complete
    from prism_plugin.llamafactory.preemption import PreemptionCallback, preempted_message

    preemption = PreemptionCallback()
    trainer.add_callback(preemption)
    preemption.install()
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if preemption.stopped_at is not None:
        if trainer.is_world_process_zero():
            message = preempted_message(finetuning_args.stage, training_args.output_dir, preemption.stopped_at,
                                        preemption.signal_name)
            sys.stderr.write(f"prism-plugin: {message}\n")
        raise SystemExit(preemption.exit_code)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        write_data_report(training_args.output_dir, reports)
        logged = {key for entry in trainer.state.log_history for key in entry}
        if finetuning_args.plot_loss and any(key in logged for key in plot_keys):
            from llamafactory.extras.ploting import plot_loss

            plot_loss(training_args.output_dir, keys=[key for key in plot_keys if key in logged])
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        mark_output_complete(training_args.output_dir, trainer.state.global_step)


def write_data_report(output_dir: str | Path, reports: list) -> None:
    """``prism_data_report.json``: rows kept and skipped (with reasons) per dataset file."""
    summary = [
        {"file": r.path, "kept": len(r.records), "skipped": [str(e) for e in r.skipped]} for r in reports
    ]
    (Path(output_dir) / "prism_data_report.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
