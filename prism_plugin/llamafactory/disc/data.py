"""Warm-up pairs as model inputs: rendered prompt + teacher/student segment token ids, and their batches.

Teacher and student segments are tokenised the same way (each response on its own, followed by
the end-of-turn token, split with :func:`prism_plugin.segment_split.split_segments`), so both sides are
scored at the same structural token. Rows too long for ``cutoff_len`` are errors (or skipped and
counted when the user opts in) — never truncated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prism_plugin.data.records import DatasetRowError, LoadReport, PairRecord, load_and_encode, load_pairs
from prism_plugin.discriminator.segment_forward import PromptInputs, pad_right


@dataclass(frozen=True)
class PairFeatures:
    """One warm-up row ready for the discriminator: prompt inputs and ids per segment for both sides."""

    prompt: PromptInputs
    teacher: dict[str, list[int]]
    student: dict[str, list[int]]
    row: int


def resolve_dataset_files(names: list[str], dataset_dir: str) -> list[Path]:
    """Files of LLaMA-Factory ``dataset`` names: ``dataset_dir/dataset_info.json`` entries, or paths."""
    info_path = Path(dataset_dir) / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    files = []
    for name in names:
        if name in info:
            entry = info[name]
            if "file_name" not in entry:
                raise ValueError(f"{info_path}: dataset {name!r} has no 'file_name' (PRISM stages read local files)")
            path = Path(entry["file_name"])
            files.append(path if path.is_absolute() else Path(dataset_dir) / path)
        elif Path(name).is_file() or (Path(dataset_dir) / name).is_file():
            files.append(Path(name) if Path(name).is_file() else Path(dataset_dir) / name)
        else:
            raise ValueError(f"dataset {name!r} is neither an entry of {info_path} nor a file")
    return files


class PairEncoder:
    """Turns :class:`PairRecord` rows into :class:`PairFeatures` with the discriminator's own processor."""

    def __init__(self, scorer: Any, segments: list[str], cutoff_len: int) -> None:
        self.scorer, self.segments, self.cutoff_len = scorer, segments, cutoff_len

    def encode(self, record: PairRecord, path: str) -> PairFeatures:
        def fail(field: str, message: str, reason: str) -> DatasetRowError:
            return DatasetRowError(path, record.row, field, message, reason)

        if not record.segmented and any(s != "response" for s in self.segments):
            raise fail("teacher_response", "whole-response pairs only train prism_segments: [response]", "bad_field")
        try:
            prompt = self.scorer.render_prompt(record.prompt, list(record.images) or None)
        except DatasetRowError as err:
            raise err.at(path, record.row) from err.__cause__
        sides = {}
        for side, response in (("teacher", record.teacher), ("student", record.student)):
            try:
                sides[side] = self.scorer.segment_ids(response, self.segments)
            except ValueError as exc:
                raise fail(f"{side}_caption" if record.segmented else f"{side}_response", f"{side} {exc}",
                           "layout") from None
            for name, ids in sides[side].items():
                length = len(prompt.input_ids) + len(ids)
                if length > self.cutoff_len:
                    field = f"{side}_{'caption' if name == 'caption' else 'cot' if record.segmented else 'response'}"
                    raise fail(field, f"prompt + {name} segment is {length} tokens, over cutoff_len {self.cutoff_len}",
                               "too_long")
        return PairFeatures(prompt, sides["teacher"], sides["student"], record.row)


def encode_pairs(
    files: list[Path], encoder: PairEncoder, skip_invalid: bool, media_dir: str | None
) -> tuple[list[PairFeatures], list[LoadReport]]:
    """Load, validate and encode every warm-up file; a bad row raises unless ``skip_invalid``."""
    return load_and_encode(files, load_pairs, encoder.encode, skip_invalid, media_dir, "warm-up pairs")


def collate_rows(rows: list[tuple[PromptInputs, list[int], str]], pad_id: int) -> dict[str, Any]:
    """One padded discriminator forward over (prompt, segment ids, segment name) rows, images included."""
    sequences, names, pixel_values, grids = [], [], [], []
    for prompt, ids, name in rows:
        prompt_ids = torch.as_tensor(prompt.input_ids, dtype=torch.long).reshape(-1)
        sequences.append(torch.cat([prompt_ids, torch.tensor(ids, dtype=torch.long)]))
        names.append(name)
        if prompt.pixel_values is not None:
            pixel_values.append(prompt.pixel_values)
            grids.append(prompt.image_grid_thw)
    input_ids, attention_mask = pad_right(sequences, pad_id, torch.device("cpu"))
    batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "segments": names}
    if pixel_values:
        batch["pixel_values"] = torch.cat(pixel_values)
        batch["image_grid_thw"] = torch.cat(grids)
    return batch


class PairCollator:
    """Batches pairs into one padded forward: rows [teacher s1, student s1, teacher s2, …] per pair."""

    def __init__(self, segments: list[str], pad_id: int) -> None:
        self.segments, self.pad_id = segments, pad_id

    def __call__(self, features: list[PairFeatures]) -> dict[str, Any]:
        rows = [(feat.prompt, side[name], name) for feat in features for name in self.segments
                for side in (feat.teacher, feat.student)]
        return collate_rows(rows, self.pad_id)
