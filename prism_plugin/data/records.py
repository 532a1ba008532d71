"""Dataset rows of every PRISM reader, validated where they enter: the one row parser.

Every command and stage that reads rows (``prism_disc``, ``prism_align``, ``align-preview``,
``make-pairs``, the drift monitor, ``score``, ``evaluate``, ``to-easyr1``, ``teach``) goes through
:class:`RowReader`, so one schema is read one way:

- ``prompt`` (or ``question``): a string with ``<image>`` markers, or a chat-message list (the
  authors' parquet) whose last user message is the prompt (string content, or OpenAI-style items);
- ``images`` (or ``image``): one item or a list; each a path, ``{"path": …}``, ``{"bytes": …}`` (as
  Hugging Face ``datasets`` and verl write image columns) or raw bytes. Relative paths resolve against
  the data file's folder (or an explicit media dir) and are returned absolute; bytes stay bytes; every
  image must decode (checked once per distinct image: :mod:`prism_plugin.data.image_check`);
- ground truth: ``ground_truth``, ``answer`` or ``reward_model.ground_truth``;
- teacher segments ``teacher_caption`` + ``teacher_cot``; warm-up students ``student_caption`` +
  ``student_cot`` (or whole ``*_response`` texts); other columns (``data_source``, ``extra_info`` …)
  are ignored.

A bad row raises :class:`DatasetRowError` naming the file, the 1-based row (the line of a JSONL
file) and the field — or, when the caller opts in with ``skip_invalid=True``, is left out and
reported in :class:`LoadReport`. Nothing is dropped or cut silently.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prism_plugin.data.image_check import decode_problem
from prism_plugin.errors import DatasetFileError, DatasetRowError
from prism_plugin.layout import IMAGE_MARKER, Segments, is_caption_segment, is_reasoning_segment

ImageRef = str | bytes
"""An image as the readers hand it on: an absolute path, or the encoded file's bytes."""


@dataclass(frozen=True)
class PromptRecord:
    """One prompt with its images, and what the row carries for it: a ground truth and/or the teacher's
    demonstration (alignment rows always carry the teacher; RLVR and evaluation rows may not)."""

    prompt: str
    images: tuple[ImageRef, ...]
    ground_truth: str | None
    teacher: Segments | None
    row: int
    path: str | None = None  # the file the row came from (None for rows made in memory)


@dataclass(frozen=True)
class PairRecord:
    """One warm-up prompt with a teacher (preferred) and a student response."""

    prompt: str
    images: tuple[ImageRef, ...]
    teacher: Segments | str  # str: a whole-response pair (GAD-style) with no segment split
    student: Segments | str
    row: int

    @property
    def segmented(self) -> bool:
        return isinstance(self.teacher, Segments)


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

    A JSONL line that is not UTF-8 text or not JSON comes as a :class:`DatasetRowError` in place of the row,
    so the caller decides whether it stops the run or is skipped and counted. A .json or .parquet file that
    cannot be read as a whole is a :class:`DatasetFileError` naming where it breaks (for JSON, the line).
    A UTF-8 byte-order mark at the start is allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open("rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                try:
                    line = (raw.removeprefix(codecs.BOM_UTF8) if line_no == 1 else raw).decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield line_no, DatasetRowError(path, line_no, "<line>", _not_utf8(raw, exc), "bad_encoding")
                    continue
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield line_no, DatasetRowError(path, line_no, "<line>", f"not valid JSON ({exc.msg})", "bad_json")
    elif suffix == ".json":
        yield from enumerate(_read_json_list(path), start=1)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise DatasetFileError(f"{path}: not a readable parquet file ({exc})") from None
        yield from enumerate(table.to_pylist(), start=1)
    else:
        raise DatasetFileError(f"{path}: unsupported dataset format {suffix!r}; use .jsonl, .json or .parquet")


def _not_utf8(data: bytes, exc: UnicodeDecodeError) -> str:
    """Where ``data`` stops being UTF-8, as words: the byte, and the column of the line it is on."""
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return f"not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); save the file as UTF-8"


def _read_json_list(path: Path) -> list:
    """A .json data set: a list of rows in UTF-8 text; anything else is a :class:`DatasetFileError` naming the line."""
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DatasetFileError(f"{path}, line {line}: {_not_utf8(data, exc)}") from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetFileError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(rows, list):
        raise DatasetRowError(path, 1, "<file>", "a .json dataset must hold a list of rows")
    return rows


# --------------------------------------------------------------------------- field checks


class RowReader:
    """Field access for one row; every failure is a :class:`DatasetRowError` at the right location."""

    def __init__(self, path: str | Path | None, row_no: int | None, row: Any, media_dir: str | Path) -> None:
        if not isinstance(row, dict):
            raise DatasetRowError(path, row_no, "<row>", f"expected an object, got {type(row).__name__}")
        self.path, self.row_no, self.row, self.media_dir = path, row_no, row, Path(media_dir)

    def error(self, field_name: str, message: str, reason: str = "bad_field") -> DatasetRowError:
        return DatasetRowError(self.path, self.row_no, field_name, message, reason)

    def text(self, *names: str, required: bool = True) -> str | None:
        """The first present field of ``names`` as a non-empty string (None if absent and not required)."""
        for name in names:
            value = self.row.get(name)
            if value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                raise self.error(name, "must be a non-empty string")
            return value
        if required:
            raise self.error(" or ".join(names), "missing", "missing_field")
        return None

    def segments(self, side: str) -> Segments:
        """``{side}_caption`` + ``{side}_cot``: one caption segment, then think + answer."""
        caption, cot = self.text(f"{side}_caption"), self.text(f"{side}_cot")
        if not is_caption_segment(caption):
            raise self.error(f"{side}_caption", "must be one '<caption> … </caption>' segment", "layout")
        if not is_reasoning_segment(cot):
            raise self.error(f"{side}_cot", "must be '<think> … </think>' followed by '<answer> … </answer>'", "layout")
        return Segments(caption, cot)

    def response_text(self, name: str) -> tuple[str, str]:
        """The response of ``--response-field name`` and where it came from: ``name``, ``name_response``,
        or ``name_caption`` + ``name_cot`` joined as a policy writes them (layout not checked here)."""
        for key in (name, f"{name}_response"):
            if self.row.get(key) is not None:
                return self.text(key), key
        if self.row.get(f"{name}_caption") is not None or self.row.get(f"{name}_cot") is not None:
            caption, cot = self.text(f"{name}_caption"), self.text(f"{name}_cot")
            return Segments(caption, cot).response, f"{name}_caption/{name}_cot"
        raise self.error(name, f"missing: expected {name!r}, '{name}_response' or '{name}_caption' + '{name}_cot'",
                         "missing_field")

    def images(self) -> tuple[ImageRef, ...]:
        """``images`` / ``image``: paths (resolved, checked, absolute), ``{"path"}``, ``{"bytes"}`` or bytes."""
        for name in ("images", "image"):
            value = self.row.get(name)
            if value is None:
                continue
            items = value if isinstance(value, list) else [value]
            return tuple(self._image(f"{name}[{i}]", item) for i, item in enumerate(items))
        return ()

    def _image(self, where: str, item: Any) -> ImageRef:
        """One image item as an :data:`ImageRef`; it must exist and decode (:mod:`prism_plugin.data.image_check`)."""
        if isinstance(item, dict):
            data, item = item.get("bytes"), item.get("path")
            if isinstance(data, (bytes, bytearray)) and data:
                item = data
        if isinstance(item, (bytes, bytearray)) and item:
            image: ImageRef = bytes(item)
            name = f"({len(image)} bytes)"
        elif isinstance(item, str) and item:
            path = Path(item).expanduser()
            resolved = path if path.is_absolute() else self.media_dir / path
            if not resolved.is_file():
                raise self.error(where, f"image file not found: {resolved}", "missing_image")
            image = name = str(resolved.resolve())
        else:
            raise self.error(where, "must be an image path, {'path': …} or {'bytes': …}")
        problem = decode_problem(image)
        if problem is not None:
            raise self.error(where, f"image {name} {problem}", "bad_image")
        return image

    def prompt(self, images: tuple[ImageRef, ...]) -> str:
        """``prompt`` / ``question`` with one ``<image>`` marker per image (added in front when it has none)."""
        for name in ("prompt", "question"):
            value = self.row.get(name)
            if value is None:
                continue
            text = self._chat_prompt(name, value) if isinstance(value, list) else self.text(name)
            markers = text.count(IMAGE_MARKER)
            if images and markers == 0:
                return IMAGE_MARKER * len(images) + text
            if markers != len(images):
                raise self.error(name, f"has {markers} '{IMAGE_MARKER}' markers but the row has {len(images)} images")
            return text
        raise self.error("prompt or question", "missing", "missing_field")

    def _chat_prompt(self, name: str, messages: list) -> str:
        """The last user message of a chat-message list (string content, or text/image content items)."""
        users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1] if users else None
        if isinstance(content, list):
            pieces = []
            for item in content:
                kind = item.get("type") if isinstance(item, dict) else None
                if kind == "text" and isinstance(item.get("text"), str):
                    pieces.append(item["text"])
                elif kind in ("image", "image_url"):
                    pieces.append(IMAGE_MARKER)
            content = "".join(pieces)
        if not isinstance(content, str) or not content.strip():
            raise self.error(name, "chat-message list has no non-empty user message")
        return content

    def ground_truth(self, required: bool = False) -> str | None:
        """``ground_truth``, ``answer`` or ``reward_model.ground_truth`` as a stripped string."""
        value, where = None, "ground_truth"
        for name in ("ground_truth", "answer"):
            if self.row.get(name) is not None:
                value, where = self.row[name], name
                break
        reward_model = self.row.get("reward_model")
        if value is None and isinstance(reward_model, dict) and reward_model.get("ground_truth") is not None:
            value, where = reward_model["ground_truth"], "reward_model.ground_truth"
        if value is None:
            if required:
                raise self.error("ground_truth", "missing (or give answer / reward_model.ground_truth)",
                                 "missing_field")
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
            raise self.error(where, "must be a non-empty string or a number")
        return str(value).strip()


# --------------------------------------------------------------------------- row parsers

TeacherRule = Literal["required", "optional", "ignored"]


def parse_pair(row: RowReader) -> PairRecord:
    """One warm-up row as a :class:`PairRecord`; raises :class:`DatasetRowError` naming the bad field."""
    images = row.images()
    prompt = row.prompt(images)
    if "teacher_caption" in row.row or "student_caption" in row.row:
        teacher, student = row.segments("teacher"), row.segments("student")
    elif "teacher_response" in row.row or "student_response" in row.row:
        teacher, student = row.text("teacher_response"), row.text("student_response")
    else:
        raise row.error("teacher_caption", "missing (or give teacher_response and student_response)", "missing_field")
    return PairRecord(prompt=prompt, images=images, teacher=teacher, student=student, row=row.row_no)


def prompt_parser(teacher: TeacherRule = "required", require_ground_truth: bool = False
                  ) -> Callable[[RowReader], PromptRecord]:
    """A row parser for prompt rows: the teacher demonstration ``required`` (alignment), ``optional``
    (evaluation) or ``ignored`` (RLVR); ``require_ground_truth`` for the verifiable reward."""

    def parse(row: RowReader) -> PromptRecord:
        images = row.images()
        prompt = row.prompt(images)
        has_teacher = "teacher_caption" in row.row or "teacher_cot" in row.row
        segments = row.segments("teacher") if teacher == "required" or (teacher == "optional" and has_teacher) else None
        return PromptRecord(prompt=prompt, images=images, ground_truth=row.ground_truth(require_ground_truth),
                            teacher=segments, row=row.row_no, path=None if row.path is None else str(row.path))

    return parse


parse_align = prompt_parser("required")


# --------------------------------------------------------------------------- loaders


def load_rows(path: str | Path, parse: Callable[[RowReader], Any], skip_invalid: bool,
              media_dir: str | Path | None, limit: int | None = None) -> LoadReport:
    """Read ``path`` and ``parse`` each :class:`RowReader`; bad rows raise or, opted in, are skipped and counted.

    Relative image paths resolve against ``media_dir`` (default: the file's own folder). ``limit``: stop once
    that many rows are kept (a reader that uses only the first rows neither checks nor decodes the rest). A
    file with no usable row is an error.
    """
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
        if limit is not None and len(report.records) >= limit:
            break
    if not report.records:
        skipped = f" ({len(report.skipped)} skipped; the first: {report.skipped[0]})" if report.skipped else ""
        raise DatasetFileError(f"{path}: no usable rows{skipped}")
    return report


def load_pairs(path: str | Path, *, skip_invalid: bool = False, media_dir: str | Path | None = None) -> LoadReport:
    """Warm-up pairs: prompt, images, teacher/student caption + cot (two comparisons per row) or
    teacher/student response (one)."""
    return load_rows(path, parse_pair, skip_invalid, media_dir)


def load_prompts(path: str | Path, *, teacher: TeacherRule = "required", require_ground_truth: bool = False,
                 skip_invalid: bool = False, media_dir: str | Path | None = None,
                 limit: int | None = None) -> LoadReport:
    """Prompt rows (:class:`PromptRecord`): alignment (teacher required), evaluation (optional) or RLVR
    (ignored) rows; see :func:`prompt_parser`. ``limit``: the first that many usable rows only."""
    return load_rows(path, prompt_parser(teacher, require_ground_truth), skip_invalid, media_dir, limit)


def load_align(path: str | Path, *, skip_invalid: bool = False, media_dir: str | Path | None = None,
               limit: int | None = None) -> LoadReport:
    """Alignment prompts: prompt, images, ``teacher_caption``, ``teacher_cot``, optional ground truth."""
    return load_prompts(path, teacher="required", skip_invalid=skip_invalid, media_dir=media_dir, limit=limit)


def load_and_encode(files: list[Path], load: Callable[..., LoadReport], encode: Callable[[Any, str], Any],
                    skip_invalid: bool, media_dir: str | Path | None, what: str) -> tuple[list, list[LoadReport]]:
    """Load, validate and ``encode`` every row of ``files`` (``encode`` may reject a row with a
    :class:`DatasetRowError` too); a bad row raises unless ``skip_invalid``, when it is counted in its
    file's report instead. ``what`` names the rows in the error for an empty result."""
    encoded, reports = [], []
    for path in files:
        report = load(path, skip_invalid=skip_invalid, media_dir=media_dir)
        kept = []
        for record in report.records:
            try:
                encoded.append(encode(record, str(path)))
                kept.append(record)
            except DatasetRowError as err:
                if not skip_invalid:
                    raise
                report.skipped.append(err)
        report.records = kept
        reports.append(report)
    if not encoded:
        raise DatasetFileError(f"no usable {what} in " + ", ".join(map(str, files)))
    return encoded, reports
