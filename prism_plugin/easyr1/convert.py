"""PRISM alignment / RLVR rows -> the parquet EasyR1 reads (``prompt``, ``images``, ``answer``).

Input: ``.jsonl`` / ``.json`` / ``.parquet`` rows with ``prompt`` or ``question`` (a string with
``<image>`` markers, or the authors' chat-message list), ``images`` / ``image`` (paths, or
``{"bytes": …}`` as in Hugging Face image columns) and ``answer`` / ``ground_truth`` /
``reward_model.ground_truth``; other fields (teacher segments …) are ignored. Rows are checked by
the same field checks as the LLaMA-Factory side (:mod:`prism_plugin.data.records`): an error names
the file, the row and the field; ``skip_invalid=True`` leaves bad rows out and reports them.
Output: one ``<image>`` marker per image in ``prompt`` (added in front when a row has none),
``images`` as absolute paths, or as ``{"bytes": …}`` with ``embed_images`` (self-contained files
for multi-node Ray jobs), and ``answer`` as a string (EasyR1's default ``answer_key``). Without any
image in the data there is no ``images`` column: EasyR1's ``RLHFDataset`` takes its multimodal
branch whenever the row has the ``data.image_key`` column, and that branch needs a processor, which
a text-only model does not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_plugin.data.records import DatasetRowError, LoadReport, load_prompts


@dataclass(frozen=True)
class EasyR1Row:
    """One EasyR1 training row; ``images`` holds absolute paths (str) or encoded image bytes."""

    prompt: str
    images: tuple[str | bytes, ...]
    answer: str
    row: int


def load_rlvr(path: str | Path, *, skip_invalid: bool = False, image_dir: str | Path | None = None) -> LoadReport:
    """Validated EasyR1 rows of ``path`` (through the one row parser, :mod:`prism_plugin.data.records`);
    relative image paths resolve against ``image_dir`` (default: the file's folder)."""
    report = load_prompts(path, teacher="ignored", require_ground_truth=True, skip_invalid=skip_invalid,
                          media_dir=image_dir)
    report.records = [EasyR1Row(r.prompt, r.images, r.ground_truth, r.row) for r in report.records]
    return report


def image_storage(records: list[EasyR1Row], embed_images: bool) -> str | None:
    """How :func:`to_easyr1` writes the ``images`` column for ``records``: ``"paths"`` (absolute, valid on
    this machine only), ``"bytes"`` (``embed_images``, or input already holding bytes), or None (no row
    has an image: no column)."""
    if not any(rec.images for rec in records):
        return None
    if embed_images or any(isinstance(img, bytes) for rec in records for img in rec.images):
        return "bytes"
    return "paths"


def to_easyr1(
    src: str | Path,
    out: str | Path,
    *,
    image_dir: str | Path | None = None,
    skip_invalid: bool = False,
    embed_images: bool = False,
) -> LoadReport:
    """Convert ``src`` to an EasyR1 parquet at ``out``; returns the report (kept rows, skipped errors)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    report = load_rlvr(src, skip_invalid=skip_invalid, image_dir=image_dir)
    records: list[EasyR1Row] = report.records
    columns = {"prompt": pa.array([rec.prompt for rec in records], pa.string())}
    storage = image_storage(records, embed_images)
    if storage == "bytes":
        images: Any = [[{"bytes": _read(img)} for img in rec.images] for rec in records]
        columns["images"] = pa.array(images, pa.list_(pa.struct([("bytes", pa.binary())])))
    elif storage == "paths":
        columns["images"] = pa.array([list(rec.images) for rec in records], pa.list_(pa.string()))
    columns["answer"] = pa.array([rec.answer for rec in records], pa.string())
    table = pa.table(columns)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return report


def _read(image: str | bytes) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


__all__ = ["DatasetRowError", "EasyR1Row", "image_storage", "load_rlvr", "to_easyr1"]
