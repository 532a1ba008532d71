"""Warm-up pairs from a policy: the teacher's demonstration beside the policy's own sample.

``prism-plugin data make-pairs`` samples responses from a (usually SFT) checkpoint for the
alignment-style prompts (``prompt``, ``images``, ``teacher_caption``, ``teacher_cot``) and
writes one pair line per sample in the format :func:`prism_plugin.data.records.load_pairs`
reads, so the discriminator warm-up (``prism_disc``) can learn teacher ≻ student on the
student the alignment stage will start from.

A sample in the PRISM layout is split into ``student_caption`` (the ``<caption>…</caption>``
segment) and ``student_cot`` (``<think>…</think>`` + ``<answer>…</answer>``). A sample that
is not in the layout cannot form a segmented pair: it is not written, but counted by reason
(``truncated``: no end-of-turn token within ``max_new_tokens``; ``invalid_layout``: ended but
not in the layout) and listed in the report — never dropped silently. Input rows are validated
like :func:`~prism_plugin.data.records.load_align`; a bad row stops the run with its file, row
and field, or, with ``skip_invalid``, is counted and listed.

Image paths are written absolute (resolved against ``media_dir``, default the input file's
folder, whatever the working directory), so the output file can live anywhere and still finds its
images; images embedded as bytes in the input are written once into ``<out stem>_images/`` beside
the output and referenced by absolute path.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prism_plugin.data.images import image_paths
from prism_plugin.data.records import DatasetRowError, RowReader, load_align, parse_pair
from prism_plugin.errors import ConfigError, check_at_least_one
from prism_plugin.layout import Segments
from prism_plugin.rollout import Sampling

SKIP_REASONS = ("truncated", "invalid_layout")


@dataclass
class MakePairsReport:
    """What :func:`make_pairs` read, sampled, wrote and left out (with the reason for each)."""

    output: str
    rows_in: int = 0
    rows_used: int = 0
    num_samples: int = 1
    samples: int = 0
    pairs_written: int = 0
    skipped_samples: Counter = field(default_factory=Counter)
    skipped_rows: list[DatasetRowError] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # per left-out sample: row, sample, reason, text

    def summary(self) -> dict[str, Any]:
        """The counts as a JSON-ready dict; ``pairs_written + sum(skipped_samples) == samples``."""
        return {
            "output": self.output,
            "rows_in": self.rows_in,
            "rows_used": self.rows_used,
            "rows_skipped": len(self.skipped_rows),
            "num_samples": self.num_samples,
            "samples": self.samples,
            "pairs_written": self.pairs_written,
            "skipped_samples": {reason: self.skipped_samples.get(reason, 0) for reason in SKIP_REASONS},
        }

    def details(self, limit: int = 20) -> str:
        """Human-readable lines for the skipped input rows and the samples left out (first ``limit`` each)."""
        lines = [f"input row skipped: {err}" for err in self.skipped_rows[:limit]]
        if len(self.skipped_rows) > limit:
            lines.append(f"… {len(self.skipped_rows) - limit} more input rows skipped")
        for item in self.rejected[:limit]:
            text = item["text"].replace("\n", " ")
            lines.append(f"row {item['row']} sample {item['sample']}: {item['reason']} "
                         f"({item['tokens']} tokens): {text[:80]}{'…' if len(text) > 80 else ''}")
        if len(self.rejected) > limit:
            lines.append(f"… {len(self.rejected) - limit} more samples left out")
        return "\n".join(lines)


def pair_row(record: Any, images: list[str], student: Segments) -> dict[str, Any]:
    """One ``load_pairs`` row: the align record's prompt, images and teacher segments, and a student's."""
    return {
        "prompt": record.prompt,
        "images": images,
        "teacher_caption": record.teacher.caption,
        "teacher_cot": record.teacher.reasoning,
        "student_caption": student.caption,
        "student_cot": student.reasoning,
    }


def _accepted(row: dict[str, Any], out_file: Path, row_no: int) -> bool:
    """Whether ``row`` passes the checks :func:`load_pairs` applies (the output's contract)."""
    try:
        parse_pair(RowReader(out_file, row_no, row, out_file.parent))
    except DatasetRowError:
        return False
    return True


def make_pairs(
    policy_dir: str | Path,
    prompts_file: str | Path,
    out_file: str | Path,
    *,
    num_samples: int = 1,
    max_new_tokens: int = 512,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    media_dir: str | Path | None = None,
    skip_invalid: bool = False,
    device: str | None = None,
    progress: bool = True,
    engine: str = "hf",
) -> MakePairsReport:
    """Sample ``num_samples`` responses per row of ``prompts_file`` from ``policy_dir``; write warm-up pairs.

    ``batch_size`` prompts share one left-padded ``generate`` call. The samples depend on
    ``seed`` and ``batch_size`` (and the device); the same values give the same file. ``engine`` ``vllm``
    samples with vLLM (:mod:`prism_plugin.vllm_rollout.checkpoint`).
    """
    from tqdm.auto import tqdm

    from prism_plugin.policy import sample
    from prism_plugin.vllm_rollout.checkpoint import policy_and_engine

    check_at_least_one(("--num-samples", num_samples), ("--batch-size", batch_size),
                       ("--max-new-tokens", max_new_tokens))
    if temperature < 0:
        raise ConfigError(f"--temperature must be 0 (greedy) or more; got {temperature}")
    loaded = load_align(prompts_file, skip_invalid=skip_invalid, media_dir=media_dir)
    records = loaded.records
    out_file = Path(out_file)
    report = MakePairsReport(
        output=str(out_file), rows_in=len(records) + len(loaded.skipped), rows_used=len(records),
        num_samples=num_samples, skipped_rows=list(loaded.skipped),
    )

    image_dir = out_file.parent / f"{out_file.stem}_images"
    sampling = Sampling(max_new_tokens, temperature)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(records), desc="make-pairs", unit="prompt", disable=not progress)
    with policy_and_engine(policy_dir, engine, device=device, seed=seed) as (policy, processor, vision, sampler), \
            out_file.open("w", encoding="utf-8") as handle, torch.no_grad():
        torch.manual_seed(seed)
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            _, split = sample(policy, processor, vision, batch, num_samples, sampling, engine=sampler)
            for i, text in enumerate(split.texts):
                record = batch[i // num_samples]
                report.samples += 1
                segments = None if split.truncated[i] else Segments.from_response(text)
                row = None if segments is None else pair_row(record, image_paths(record.images, image_dir), segments)
                if row is not None and _accepted(row, out_file, report.pairs_written + 1):
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                    report.pairs_written += 1
                    continue
                reason = "truncated" if split.truncated[i] else "invalid_layout"
                report.skipped_samples[reason] += 1
                report.rejected.append({"row": record.row, "sample": i % num_samples, "reason": reason,
                                        "tokens": int(split.lengths[i]), "text": text})
            bar.update(len(batch))
    bar.close()
    return report
