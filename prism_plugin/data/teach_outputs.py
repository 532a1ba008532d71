"""What ``prism-plugin data teach`` keeps of the teacher's answers, and the files it writes from them.

Every answer in the journal gets a verdict (:func:`verdict`): ``kept``, or the reason it is left out —
``truncated`` (finish reason ``length``: the answer hit ``max_tokens``), ``invalid_layout`` (not in the
PRISM layout of :mod:`prism_plugin.layout`, or a row :func:`~prism_plugin.data.records.load_align` would
reject), ``incorrect`` (``require_correct`` and a ground truth on the row, and the verifiable reward
:func:`prism_plugin.rewards.compute_score` gives no accuracy: rejection sampling). Requests that got no
answer are ``request_failed`` (or ``bad_image`` when an image could not be read to send it); those never
sent (a stopped run) are counted as ``pending``.

From the kept answers, sorted by (row, sample), :func:`write_outputs` (re)builds:

- ``sft.json``: LLaMA-Factory sharegpt rows (system prompt / user prompt with ``<image>`` markers /
  the teacher's response) with absolute image paths; ``dataset_info.json`` names it ``prism_teach_sft``;
- ``align.jsonl``: alignment rows (prompt, images, ``teacher_caption``, ``teacher_cot``, ground truth
  when known) that :func:`~prism_plugin.data.records.load_align` reads — the alignment stage's data and
  the teacher side of the warm-up pairs (``prism-plugin data make-pairs --data align.jsonl`` samples the
  student beside them); ``dataset_info.json`` names it ``prism_teach_align``;
- ``teach_report.json``: counts by reason and, per left-out sample, its row, sample, reason and a text
  excerpt or the error.

Images given as bytes are written once into ``images/`` by content hash.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prism_plugin.data.dataset_info import ALIGN, file_entry, sharegpt_entry
from prism_plugin.data.images import image_paths
from prism_plugin.data.records import DatasetRowError, PromptRecord, RowReader, prompt_parser
from prism_plugin.layout import SYSTEM_PROMPT, Segments

SFT_FILE, ALIGN_FILE, REPORT_FILE, DATASET_INFO_FILE = "sft.json", "align.jsonl", "teach_report.json", \
    "dataset_info.json"
IMAGE_DIR = "images"
SFT_DATASET_NAME, ALIGN_DATASET_NAME = "prism_teach_sft", "prism_teach_align"
DROP_REASONS = ("truncated", "invalid_layout", "incorrect", "request_failed", "bad_image")
EXCERPT_CHARS = 300

_parse_align_row = prompt_parser("required")


def verdict(text: str, finish_reason: str | None, ground_truth: str | None, require_correct: bool) -> str:
    """``kept`` or why an answer is left out: ``truncated``, ``invalid_layout`` or ``incorrect``."""
    from prism_plugin.rewards import compute_score

    if finish_reason == "length":
        return "truncated"
    if Segments.from_response(text) is None:
        return "invalid_layout"
    if require_correct and ground_truth is not None and compute_score(text, ground_truth)["accuracy"] < 1.0:
        return "incorrect"
    return "kept"


def align_row(record: PromptRecord, images: list[str], segments: Segments, sample: int) -> dict[str, Any]:
    """One ``load_align`` row: the question's prompt, images and ground truth, the teacher's two segments, and
    where it came from (``source_row``, ``sample``; other readers ignore those)."""
    row = {"prompt": record.prompt, "images": images, "teacher_caption": segments.caption,
           "teacher_cot": segments.reasoning}
    if record.ground_truth is not None:
        row["ground_truth"] = record.ground_truth
    return {**row, "source_row": record.row, "sample": sample}


def sft_row(record: PromptRecord, images: list[str], segments: Segments) -> dict[str, Any]:
    """One sharegpt row: PRISM system prompt, the prompt with its ``<image>`` markers, the teacher's response
    (its two segments joined as a policy writes them)."""
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": record.prompt},
            {"role": "assistant", "content": segments.response},
        ],
        "images": images,
    }


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def write_outputs(out_dir: Path, records: Iterable[PromptRecord], samples_per_prompt: int,
                  entries: dict[tuple[int, int], dict[str, Any]], failures: dict[tuple[int, int], dict[str, Any]],
                  require_correct: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rebuild ``sft.json``, ``align.jsonl``, ``dataset_info.json`` and ``teach_report.json`` in ``out_dir``
    from the journal ``entries`` (and this run's ``failures``); returns the report. Each file is replaced
    atomically, so a kill while writing leaves the previous version."""
    counts: Counter = Counter()
    dropped: list[dict[str, Any]] = []
    sft, align = [], []
    unverified = 0
    usage: Counter = Counter()
    align_file = out_dir / ALIGN_FILE
    for record in records:
        for sample in range(samples_per_prompt):
            key = (record.row, sample)
            entry = entries.get(key)
            if entry is None:
                failure = failures.get(key)
                counts["pending" if failure is None else failure["reason"]] += 1
                if failure is not None:
                    dropped.append({"row": record.row, "sample": sample, **failure})
                continue
            for name, value in (entry.get("usage") or {}).items():
                if isinstance(value, int):
                    usage[name] += value
            text = entry["text"]
            reason = verdict(text, entry.get("finish_reason"), record.ground_truth, require_correct)
            if reason == "kept":
                segments = Segments.from_response(text)
                images = image_paths(record.images, out_dir / IMAGE_DIR)
                row = align_row(record, images, segments, sample)
                try:  # the output's contract: the row parser of the alignment stage accepts it
                    _parse_align_row(RowReader(align_file, len(align) + 1, row, out_dir))
                except DatasetRowError:
                    reason = "invalid_layout"
            if reason != "kept":
                counts[reason] += 1
                dropped.append({"row": record.row, "sample": sample, "reason": reason,
                                "finish_reason": entry.get("finish_reason"), "text": _excerpt(text)})
                continue
            counts["kept"] += 1
            unverified += int(require_correct and record.ground_truth is None)
            align.append(row)
            sft.append(sft_row(record, images, segments))

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / SFT_FILE, json.dumps(sft, ensure_ascii=False, indent=1) + "\n")
    _write_atomic(align_file, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in align))
    info = {SFT_DATASET_NAME: sharegpt_entry(out_dir / SFT_FILE), ALIGN_DATASET_NAME: file_entry(align_file, ALIGN)}
    _write_atomic(out_dir / DATASET_INFO_FILE, json.dumps(info, indent=2) + "\n")
    requests = sum(counts.values())
    report = {
        "requests": requests,
        "kept": counts["kept"],
        "dropped": {reason: counts[reason] for reason in DROP_REASONS},
        "pending": counts["pending"],  # never sent: the run stopped before them
        "require_correct": require_correct,
        "kept_unverified": unverified,  # kept under require_correct with no ground truth on the row
        "usage": dict(usage),
        **(extra or {}),
        "outputs": {"sft": str((out_dir / SFT_FILE).resolve()), "align": str(align_file.resolve()),
                    "dataset_info": str((out_dir / DATASET_INFO_FILE).resolve()),
                    "sft_dataset": SFT_DATASET_NAME, "align_dataset": ALIGN_DATASET_NAME},
        "dropped_samples": dropped,
    }
    _write_atomic(out_dir / REPORT_FILE, json.dumps(report, ensure_ascii=False, indent=1) + "\n")
    return report


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
