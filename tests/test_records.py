"""Dataset rows are validated where they enter: file, row and field in every error; nothing dropped silently."""

import json

import pytest

from prism_plugin.data.records import DatasetRowError, Segments, load_align, load_pairs

pytestmark = pytest.mark.transformers4

CAP = "<caption> red 1 </caption>"
COT = "<think> red 1 = 1 </think>\n<answer> 1 </answer>"


@pytest.fixture
def media(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    return tmp_path


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def pair(**overrides):
    row = {"prompt": "<image>How many?", "image": "a.png", "teacher_caption": CAP, "teacher_cot": COT,
           "student_caption": "<caption> red 2 </caption>", "student_cot": "<think> 2 </think><answer> 2 </answer>"}
    row.update(overrides)
    return {k: v for k, v in row.items() if v is not None}


def test_tiny_dataset_files_load(tiny_dir):
    pairs = load_pairs(tiny_dir / "data" / "pairs.jsonl")
    align = load_align(tiny_dir / "data" / "align.jsonl")
    assert pairs.skipped == [] and align.skipped == []
    assert all(r.segmented and r.images for r in pairs.records)
    assert all(r.ground_truth and r.teacher.caption.startswith("<caption>") for r in align.records)


def test_pairs_resolve_images_relative_to_the_file(media):
    report = load_pairs(write_jsonl(media / "p.jsonl", [pair()]))
    record = report.records[0]
    assert record.images == (str(media / "a.png"),)
    assert record.teacher == Segments(CAP, COT) and record.row == 1


@pytest.mark.parametrize(
    "overrides, field, message",
    [
        ({"image": "missing.png"}, "image[0]", "image file not found"),
        ({"teacher_cot": "<answer> 1 </answer>"}, "teacher_cot", "<think>"),
        ({"student_caption": "red 2"}, "student_caption", "<caption>"),
        ({"prompt": None}, "prompt or question", "missing"),
        ({"prompt": "<image><image>two?"}, "prompt", "2 '<image>' markers but the row has 1 images"),
        ({"teacher_caption": None, "student_caption": None}, "teacher_caption", "missing"),
        ({"teacher_caption": ""}, "teacher_caption", "non-empty string"),
    ],
)
def test_bad_pair_rows_name_file_row_and_field(media, overrides, field, message):
    path = write_jsonl(media / "p.jsonl", [pair(), pair(**overrides)])
    with pytest.raises(DatasetRowError, match=message) as info:
        load_pairs(path)
    assert info.value.row == 2 and info.value.field == field and info.value.path == str(path)
    assert f"{path}, row 2, field '{field}'" in str(info.value)


def test_skip_is_opt_in_counted_and_reported(media):
    rows = [pair(), pair(image="missing.png"), "{not json", pair()]
    path = write_jsonl(media / "p.jsonl", rows)
    with pytest.raises(DatasetRowError, match="row 2"):
        load_pairs(path)
    report = load_pairs(path, skip_invalid=True)
    assert [r.row for r in report.records] == [1, 4]
    assert [(e.row, e.field) for e in report.skipped] == [(2, "image[0]"), (3, "<line>")]
    assert "2 rows kept, 2 skipped" in report.summary() and "row 3" in report.summary()


def test_whole_response_pairs_and_question_field(media):
    good = "<caption> a </caption><think> b </think><answer> c </answer>"
    row = {"question": "Q?", "image": "a.png", "teacher_response": good, "student_response": "just c"}
    record = load_pairs(write_jsonl(media / "p.jsonl", [row])).records[0]
    assert not record.segmented and record.prompt == "<image>Q?"  # marker added for the unmarked image


def test_align_rows_accept_the_authors_parquet_shape(media):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "<image>Count?"}],
             "images": [{"path": "a.png"}], "teacher_caption": CAP, "teacher_cot": COT,
             "reward_model": {"ground_truth": "1"}}]
    path = media / "align.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    record = load_align(path).records[0]
    assert record.prompt == "<image>Count?" and record.ground_truth == "1" and record.images == (str(media / "a.png"),)


def test_empty_file_is_an_error(media):
    with pytest.raises(ValueError, match="no usable rows"):
        load_align(write_jsonl(media / "empty.jsonl", []))
