"""Validated rows of the PRISM datasets: warm-up pairs and alignment prompts.

Every row is checked where it enters; a bad row raises :class:`DatasetRowError` naming the
file, the 1-based row (the line of a JSONL file) and the field — or, when the caller opts in
with ``skip_invalid=True``, is left out and reported in :class:`LoadReport`. Nothing is
dropped or cut silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism_plugin.format import is_valid

IMAGE_MARKER = "<image>"
_CAPTION_SEGMENT_RE = re.compile(r"^\s*<caption>.*?</caption>\s*$", re.DOTALL)
_REASONING_SEGMENT_RE = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


class DatasetRowError(ValueError):
    """A dataset row that cannot be used, with where and why."""

    def __init__(self, path: str | Path, row: int, field_name: str, message: str) -> None:
        self.path, self.row, self.field, self.message = str(path), row, field_name, message
        super().__init__(f"{path}, row {row}, field '{field_name}': {message}")


@dataclass(frozen=True)
class Segments:
    """A response split into its caption segment and its reasoning (think + answer) segment."""

    caption: str
    reasoning: str

    @property
    def response(self) -> str:
        return f"{self.caption.strip()}\n{self.reasoning.strip()}"

    def get(self, segment: str) -> str:
        """Text of ``caption``, ``reasoning`` or the whole ``response``."""
        return self.response if segment == "response" else getattr(self, segment)


@dataclass(frozen=True)
class PairRecord:
    """One warm-up prompt with a teacher (preferred) and a student response."""

    prompt: str
    images: tuple[str, ...]
    teacher: Segments | str  # str: a whole-response pair (GAD-style) with no segment split
    student: Segments | str
    row: int

    @property
    def segmented(self) -> bool:
        return isinstance(self.teacher, Segments)


@dataclass(frozen=True)
class AlignRecord:
    """One alignment prompt with its images, the teacher demonstration and an optional answer."""

    prompt: str
    images: tuple[str, ...]
    teacher: Segments
    ground_truth: str | None
    row: int


@dataclass
class LoadReport:
    """What a loader kept and what it skipped (with the reason for each)."""

    path: str
    records: list = field(default_factory=list)
    skipped: list[DatasetRowError] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.path}: {len(self.records)} rows kept, {len(self.skipped)} skipped"
        return text + "".join(f"\n  {err}" for err in self.skipped[:20]) + (
            f"\n  … {len(self.skipped) - 20} more" if len(self.skipped) > 20 else ""
        )


# --------------------------------------------------------------------------- reading files


def read_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (1-based row, row) from a .jsonl, .json (a list) or .parquet file.

    A JSONL line that is not JSON comes as a :class:`DatasetRowError` in place of the row, so
    the caller decides whether it stops the run or is skipped and counted.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield line_no, DatasetRowError(path, line_no, "<line>", f"not valid JSON ({exc.msg})")
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise DatasetRowError(path, 1, "<file>", "a .json dataset must hold a list of rows")
        yield from enumerate(data, start=1)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
    else:
        raise ValueError(f"{path}: unsupported dataset format {suffix!r}; use .jsonl, .json or .parquet")


# --------------------------------------------------------------------------- field checks


class RowReader:
    """Field access for one row that raises :class:`DatasetRowError` with the right location."""

    def __init__(self, path: Path, row_no: int, row: Any, media_dir: Path) -> None:
        if not isinstance(row, dict):
            raise DatasetRowError(path, row_no, "<row>", f"expected an object, got {type(row).__name__}")
        self.path, self.row_no, self.row, self.media_dir = path, row_no, row, media_dir

    def error(self, field_name: str, message: str) -> DatasetRowError:
        return DatasetRowError(self.path, self.row_no, field_name, message)

    def text(self, *names: str, required: bool = True) -> str | None:
        for name in names:
            value = self.row.get(name)
            if value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                raise self.error(name, "must be a non-empty string")
            return value
        if required:
            raise self.error(" or ".join(names), "missing")
        return None

    def caption(self, name: str) -> str:
        value = self.text(name)
        if not _CAPTION_SEGMENT_RE.match(value):
            raise self.error(name, "must be one '<caption> … </caption>' segment")
        return value

    def reasoning(self, name: str) -> str:
        value = self.text(name)
        if not _REASONING_SEGMENT_RE.match(value):
            raise self.error(name, "must be '<think> … </think>' followed by '<answer> … </answer>'")
        return value

    def response(self, name: str) -> str:
        value = self.text(name)
        if not is_valid(value):
            raise self.error(name, "is not in the <caption>/<think>/<answer> layout")
        return value

    def images(self, *names: str) -> tuple[str, ...]:
        for name in names:
            value = self.row.get(name)
            if value is None:
                continue
            items = value if isinstance(value, list) else [value]
            paths = []
            for i, item in enumerate(items):
                item = item.get("path") if isinstance(item, dict) else item
                if not isinstance(item, str) or not item:
                    raise self.error(f"{name}[{i}]", "must be an image path")
                resolved = Path(item) if Path(item).is_absolute() else self.media_dir / item
                if not resolved.is_file():
                    raise self.error(f"{name}[{i}]", f"image file not found: {resolved}")
                paths.append(str(resolved))
            return tuple(paths)
        return ()

    def check_markers(self, prompt: str, images: tuple[str, ...], prompt_field: str) -> str:
        markers = prompt.count(IMAGE_MARKER)
        if images and markers == 0:
            return IMAGE_MARKER * len(images) + prompt  # images without markers go first, one each
        if markers != len(images):
            raise self.error(prompt_field, f"has {markers} '<image>' markers but the row has {len(images)} images")
        return prompt


def prompt_text(row: RowReader) -> tuple[str, str]:
    """The user prompt from ``prompt``/``question`` (a string or a chat-message list)."""
    for name in ("prompt", "question"):
        value = row.row.get(name)
        if isinstance(value, list):  # authors' parquet: a list of chat messages
            users = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"]
            if not users or not isinstance(users[-1], str) or not users[-1].strip():
                raise row.error(name, "chat-message list has no non-empty user message")
            return users[-1], name
        if value is not None:
            return row.text(name), name
    raise row.error("prompt or question", "missing")


# --------------------------------------------------------------------------- loaders


def load_rows(path: str | Path, parse, skip_invalid: bool, media_dir: str | Path | None) -> LoadReport:
    """Read ``path`` and ``parse`` each :class:`RowReader`; bad rows raise or, opted in, are skipped and counted."""
    path = Path(path)
    media = Path(media_dir) if media_dir is not None else path.parent
    report = LoadReport(path=str(path))
    for row_no, raw in read_rows(path):
        try:
            if isinstance(raw, DatasetRowError):
                raise raw
            report.records.append(parse(RowReader(path, row_no, raw, media)))
        except DatasetRowError as err:
            if not skip_invalid:
                raise
            report.skipped.append(err)
    if not report.records:
        raise ValueError(f"{path}: no usable rows" + (f" ({len(report.skipped)} skipped)" if report.skipped else ""))
    return report


def parse_pair(row: RowReader) -> PairRecord:
    """One warm-up row as a :class:`PairRecord`; raises :class:`DatasetRowError` naming the bad field."""
    prompt, prompt_field = prompt_text(row)
    images = row.images("images", "image")
    prompt = row.check_markers(prompt, images, prompt_field)
    if "teacher_caption" in row.row or "student_caption" in row.row:
        teacher = Segments(row.caption("teacher_caption"), row.reasoning("teacher_cot"))
        student = Segments(row.caption("student_caption"), row.reasoning("student_cot"))
    elif "teacher_response" in row.row or "student_response" in row.row:
        teacher, student = row.text("teacher_response"), row.text("student_response")
    else:
        raise row.error("teacher_caption", "missing (or give teacher_response and student_response)")
    return PairRecord(prompt=prompt, images=images, teacher=teacher, student=student, row=row.row_no)


def parse_align(row: RowReader) -> AlignRecord:
    """One alignment row as an :class:`AlignRecord`; raises :class:`DatasetRowError` naming the bad field."""
    prompt, prompt_field = prompt_text(row)
    images = row.images("images", "image")
    prompt = row.check_markers(prompt, images, prompt_field)
    teacher = Segments(row.caption("teacher_caption"), row.reasoning("teacher_cot"))
    answer = row.row.get("ground_truth", row.row.get("answer"))
    reward_model = row.row.get("reward_model")
    if answer is None and isinstance(reward_model, dict):
        answer = reward_model.get("ground_truth")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise row.error("ground_truth", "must be a string or a number")
    return AlignRecord(
        prompt=prompt, images=images, teacher=teacher, ground_truth=None if answer is None else str(answer),
        row=row.row_no,
    )


def load_pairs(path: str | Path, *, skip_invalid: bool = False, media_dir: str | Path | None = None) -> LoadReport:
    """Warm-up pairs: ``prompt``/``question``, optional ``image(s)``, teacher/student caption + cot
    (two comparisons per row) or teacher/student response (one). Image paths are relative to
    ``media_dir`` (default: the file's folder)."""
    return load_rows(path, parse_pair, skip_invalid, media_dir)


def load_align(path: str | Path, *, skip_invalid: bool = False, media_dir: str | Path | None = None) -> LoadReport:
    """Alignment prompts: ``prompt`` (string with ``<image>`` markers or chat messages), ``images``,
    ``teacher_caption``, ``teacher_cot``, optional ``ground_truth`` / ``answer`` /
    ``reward_model.ground_truth``."""
    return load_rows(path, parse_align, skip_invalid, media_dir)
