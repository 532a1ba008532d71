"""Dataset rows are validated where they enter: file, row and field in every error; nothing dropped silently."""

import importlib
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


# --------------------------------------------------------------------------- files and images that do not decode


def truncated_png(path):
    """A PNG cut short: it opens (the header is there) but does not decode."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def align_row(**overrides):
    row = {"prompt": "<image>How many?", "images": ["a.png"], "teacher_caption": CAP, "teacher_cot": COT,
           "ground_truth": "1"}
    row.update(overrides)
    return row


def test_an_image_that_does_not_decode_is_a_bad_row_or_skipped_and_counted(media):
    truncated_png(media / "cut.png")
    (media / "notes.png").write_text("not an image")
    path = write_jsonl(media / "align.jsonl", [align_row(), align_row(images=["cut.png"]),
                                               align_row(images=["a.png", "notes.png"], prompt="<image><image>Two?")])
    with pytest.raises(DatasetRowError) as info:
        load_align(path)
    assert str(info.value) == (f"{path}, row 2, field 'images[0]': image {media / 'cut.png'} does not decode: "
                               "image file is truncated")
    report = load_align(path, skip_invalid=True)
    assert [r.row for r in report.records] == [1]
    assert [(e.row, e.field, e.reason) for e in report.skipped] == [(2, "images[0]", "bad_image"),
                                                                      (3, "images[1]", "bad_image")]
    assert str(report.skipped[1]).endswith(f"image {media / 'notes.png'} is not an image file (PIL cannot identify "
                                           "its format)")
    assert "1 rows kept, 2 skipped" in report.summary()


def test_embedded_image_bytes_are_decoded_too(media):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cut = truncated_png(media / "cut.png").read_bytes()
    rows = [align_row(images=[{"bytes": (media / "a.png").read_bytes()}]), align_row(images=[{"bytes": cut}])]
    path = media / "align.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DatasetRowError) as info:
        load_align(path)
    assert str(info.value) == (f"{path}, row 2, field 'images[0]': image ({len(cut)} bytes) does not decode: "
                               "image file is truncated")


def test_each_distinct_image_is_decoded_once(media, monkeypatch):
    from prism_plugin.data import image_check

    decoded = []
    real = image_check._decode
    monkeypatch.setattr(image_check, "_checked", type(image_check._checked)())
    monkeypatch.setattr(image_check, "_decode", lambda source: decoded.append(source) or real(source))
    path = write_jsonl(media / "align.jsonl", [align_row()] * 5)
    assert len(load_align(path).records) == 5 and len(load_align(path).records) == 5
    assert decoded == [str(media / "a.png")]


def test_a_jsonl_line_that_is_not_utf8_is_named(media):
    path = media / "align.jsonl"
    latin = json.dumps(align_row(prompt="<image>Caf\u00e9?"), ensure_ascii=False).encode("latin-1")
    lines = [json.dumps(align_row()).encode(), latin, json.dumps(align_row()).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    column = lines[1].index(b"\xe9") + 1
    with pytest.raises(DatasetRowError) as info:
        load_align(path)
    assert str(info.value) == (f"{path}, row 2, field '<line>': not UTF-8 text (byte 0xe9 at column {column}); "
                               "save the file as UTF-8")
    report = load_align(path, skip_invalid=True)
    assert [r.row for r in report.records] == [1, 3]
    assert [(e.row, e.reason) for e in report.skipped] == [(2, "bad_encoding")]


def test_a_json_file_that_is_not_utf8_or_not_json_names_the_line(media):
    from prism_plugin.errors import DatasetFileError

    text = json.dumps([align_row(), align_row(prompt="<image>Caf\u00e9?")], indent=1, ensure_ascii=False)
    line = text[: text.index("\u00e9")].count("\n") + 1
    latin = media / "latin.json"
    latin.write_bytes(text.encode("latin-1"))
    with pytest.raises(DatasetFileError) as info:
        load_align(latin)
    column = len(text[: text.index("\u00e9")].rsplit("\n", 1)[-1]) + 1
    assert str(info.value) == (f"{latin}, line {line}: not UTF-8 text (byte 0xe9 at column {column}); "
                               "save the file as UTF-8")
    broken = media / "broken.json"
    broken.write_text('[{"prompt": "a"},\n {"prompt": }]', encoding="utf-8")
    with pytest.raises(DatasetFileError, match=rf"^{broken}, line 2: not valid JSON \(Expecting value, column 13\)$"):
        load_align(broken)
    parquet = media / "broken.parquet"
    parquet.write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetFileError, match=rf"^{parquet}: not a readable parquet file"):
        load_align(parquet)


def test_a_utf8_byte_order_mark_is_read_as_text(media):
    jsonl = media / "align.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + json.dumps(align_row()).encode() + b"\n")
    as_json = media / "align.json"
    as_json.write_bytes(b"\xef\xbb\xbf" + json.dumps([align_row()]).encode())
    assert load_align(jsonl).records[0].row == 1 and load_align(as_json).records[0].row == 1


def test_a_limit_stops_reading_once_enough_rows_are_kept(media):
    path = write_jsonl(media / "align.jsonl", [align_row(images=["missing.png"]), align_row(), align_row(),
                                               "{not json"])
    report = load_align(path, skip_invalid=True, limit=2)
    assert [r.row for r in report.records] == [2, 3] and [e.row for e in report.skipped] == [1]
    assert report.records[0].path == str(path)


READERS = ["to-easyr1", "make-pairs", "teach", "align-preview", "evaluate", "drift monitor", "warm-up pairs"]


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_stops_at_load_on_an_image_that_does_not_decode(reader, media, tiny_dir, tmp_path):
    """Each reader goes through the one row parser, so the same bad image is the same one line, raised before any
    model loads or request is sent (the policy and discriminator named here do not exist)."""
    truncated_png(media / "cut.png")
    if reader == "warm-up pairs":
        path = write_jsonl(media / "pairs.jsonl", [pair(), pair(image="cut.png")])
        field = "image[0]"
    else:
        path = write_jsonl(media / "align.jsonl", [align_row(), align_row(images=["cut.png"])])
        field = "images[0]"
    nowhere = str(tmp_path / "nowhere")
    calls = {  # reader: (module, function, arguments)
        "to-easyr1": ("prism_plugin.easyr1.convert", "to_easyr1", (path, tmp_path / "out.parquet")),
        "make-pairs": ("prism_plugin.data.make_pairs", "make_pairs", (nowhere, path, tmp_path / "pairs.jsonl")),
        "teach": ("prism_plugin.data.teach", "teach", (path, tmp_path / "teach"),
                  {"api_base": "http://127.0.0.1:9/v1", "model": "m", "progress": False}),
        "align-preview": ("prism_plugin.preview", "preview_alignment_step", (nowhere, nowhere, path)),
        "evaluate": ("prism_plugin.evaluate", "evaluate", ([tiny_dir / "qwen3_policy"], path, tmp_path / "eval"),
                     {"progress": False}),
        "drift monitor": ("prism_plugin.llamafactory.drift", "make_drift_monitor",
                          ({"prism_drift_monitor": nowhere, "prism_drift_data": str(path)},)),
        "warm-up pairs": ("prism_plugin.data.records", "load_pairs", (path,)),
    }
    module, function, args, *kwargs = calls[reader]
    read = getattr(importlib.import_module(module), function)
    with pytest.raises(DatasetRowError) as info:
        read(*args, **(kwargs[0] if kwargs else {}))
    assert str(info.value) == f"{path}, row 2, field '{field}': image {media / 'cut.png'} does not decode: " \
                              "image file is truncated"
