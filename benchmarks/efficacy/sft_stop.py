"""A stock LLaMA-Factory SFT run (``run_exp``, as ``llamafactory-cli train`` runs it) that stops at the
first evaluation whose greedy dev accuracy reaches a threshold — the study's SFT starting point.

    python benchmarks/efficacy/sft_stop.py CONFIG.json DEV_ALIGN.jsonl THRESHOLD EVERY HISTORY.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoProcessor, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.efficacy.task import evaluate, load_eval_records  # noqa: E402


class ThresholdStop(TrainerCallback):
    """Every ``every`` steps: greedy dev accuracy; training stops once it reaches ``threshold``."""

    def __init__(self, processor, records, threshold: float, every: int, history_file: Path) -> None:
        self.processor, self.records, self.threshold, self.every = processor, records, threshold, every
        self.history_file, self.history = history_file, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:
            return control
        result = evaluate(model, self.processor, self.records, batch_size=256)
        self.history.append({"step": state.global_step, **result})
        self.history_file.write_text(json.dumps(self.history, indent=1))
        print(f"[sft_stop] step {state.global_step}: {result}", flush=True)
        if result["accuracy"] >= self.threshold:
            control.should_training_stop = True
        return control


def main(argv: list[str]) -> None:
    config_file, dev_file, threshold, every, history_file = argv
    config = json.loads(Path(config_file).read_text())
    torch.set_num_threads(1)
    processor = AutoProcessor.from_pretrained(config["model_name_or_path"])
    stop = ThresholdStop(processor, load_eval_records(dev_file), float(threshold), int(every), Path(history_file))
    from llamafactory.train.tuner import run_exp

    run_exp(config, callbacks=[stop])


if __name__ == "__main__":
    main(sys.argv[1:])
