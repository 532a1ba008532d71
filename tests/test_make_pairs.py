"""``prism-plugin data make-pairs``: SFT-policy samples joined with the teacher's into warm-up pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NUM_ROWS = 4
NUM_SAMPLES = 2
MAX_NEW_TOKENS = 96


@pytest.fixture(scope="module")
def align_rows(tiny_dir: Path) -> list[dict]:
    lines = (tiny_dir / "data" / "align.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:NUM_ROWS]]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def made(tiny_dir, tiny_sft_run, align_rows, tmp_path_factory) -> tuple[Path, dict, Path]:
    """One CLI run: 4 prompts x 2 samples from the SFT policy, 3 prompts per generate call.

    The input sits in another folder than its images, its relative paths resolve via ``--image-dir``.
    """
    import contextlib
    import io

    from prism_plugin.cli import main

    work = tmp_path_factory.mktemp("make_pairs")
    data = write_rows(work / "align.jsonl", align_rows)
    out = work / "sub" / "pairs.jsonl"
    argv = ["data", "make-pairs", "--policy", str(tiny_sft_run[0]), "--data", str(data), "--out", str(out),
            "--num-samples", str(NUM_SAMPLES), "--max-new-tokens", str(MAX_NEW_TOKENS), "--seed", "3",
            "--batch-size", "3", "--image-dir", str(tiny_dir / "data")]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(argv) == 0
    summary = json.loads(stdout.getvalue().strip().splitlines()[-1])
    return out, summary, data


def test_output_loads_as_pairs_in_the_layout(made, align_rows):
    from prism_plugin.data.records import Segments, load_pairs
    from prism_plugin.layout import is_valid

    out, summary, _ = made
    assert summary["pairs_written"] > 0, summary
    report = load_pairs(out)  # strict: any bad row raises
    assert len(report.records) == summary["pairs_written"] and not report.skipped
    sources = {Path(row["images"][0]).name: row for row in align_rows}  # one distinct image per tiny row
    for record in report.records:
        assert record.segmented and isinstance(record.student, Segments)
        assert is_valid(record.student.response)
        assert record.student.caption.startswith("<caption>") and record.student.caption.endswith("</caption>")
        assert record.student.reasoning.startswith("<think>") and record.student.reasoning.endswith("</answer>")
        source = sources[Path(record.images[0]).name]
        assert record.prompt == source["prompt"]
        assert record.teacher == Segments(source["teacher_caption"], source["teacher_cot"])
        assert [Path(p).name for p in record.images] == [Path(p).name for p in source["images"]]
    for line in out.read_text().splitlines():  # written absolute, so the file resolves from any folder
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in json.loads(line)["images"])


def test_output_is_registered_for_the_warm_up_stage(made):
    out, summary, _ = made
    info = json.loads((out.parent / "dataset_info.json").read_text())
    assert summary["dataset"] == "prism_pairs" and summary["dataset_info"] == str(out.parent / "dataset_info.json")
    assert info["prism_pairs"] == {"file_name": str(out.resolve()), "prism_kind": "pairs"}


def test_summary_counts_add_up(made):
    _, summary, _ = made
    assert summary["rows_in"] == summary["rows_used"] == NUM_ROWS and summary["rows_skipped"] == 0
    assert summary["samples"] == NUM_ROWS * NUM_SAMPLES
    assert summary["pairs_written"] + sum(summary["skipped_samples"].values()) == summary["samples"]
    assert set(summary["skipped_samples"]) == {"truncated", "invalid_layout"}


def test_same_seed_same_pairs(made, tiny_dir, tiny_sft_run, tmp_path):
    from prism_plugin.data.make_pairs import make_pairs

    out, summary, data = made
    again = tmp_path / "again.jsonl"
    report = make_pairs(tiny_sft_run[0], data, again, num_samples=NUM_SAMPLES, max_new_tokens=MAX_NEW_TOKENS,
                        seed=3, batch_size=3, media_dir=tiny_dir / "data", progress=False)
    assert report.summary()["skipped_samples"] == summary["skipped_samples"]
    assert again.read_text() == out.read_text()


def test_samples_out_of_the_layout_are_counted_and_listed(tiny_dir, tiny_sft_run, align_rows, tmp_path):
    from prism_plugin.data.make_pairs import make_pairs

    data = write_rows(tmp_path / "align.jsonl", align_rows[:2])
    report = make_pairs(tiny_sft_run[0], data, tmp_path / "pairs.jsonl", num_samples=2, max_new_tokens=4,
                        media_dir=tiny_dir / "data", progress=False)  # 4 tokens: no sample can close the layout
    assert report.pairs_written == 0 and report.skipped_samples["truncated"] == 4
    assert [(r["row"], r["sample"], r["reason"]) for r in report.rejected] == [
        (1, 0, "truncated"), (1, 1, "truncated"), (2, 0, "truncated"), (2, 1, "truncated")]
    assert "row 2 sample 1: truncated" in report.details()
    assert (tmp_path / "pairs.jsonl").read_text() == ""


def test_bad_input_row_names_row_and_field_or_is_skipped(tiny_dir, tiny_sft_run, align_rows, tmp_path):
    from prism_plugin.data.make_pairs import make_pairs
    from prism_plugin.data.records import DatasetRowError

    bad = dict(align_rows[1], images=["images/missing.png"])
    data = write_rows(tmp_path / "align.jsonl", [align_rows[0], bad])
    media = tiny_dir / "data"
    with pytest.raises(DatasetRowError) as err:
        make_pairs(tiny_sft_run[0], data, tmp_path / "pairs.jsonl", max_new_tokens=4, media_dir=media,
                   progress=False)
    assert err.value.row == 2 and err.value.field == "images[0]" and "align.jsonl" in str(err.value)

    report = make_pairs(tiny_sft_run[0], data, tmp_path / "pairs.jsonl", max_new_tokens=4, skip_invalid=True,
                        media_dir=media, progress=False)
    summary = report.summary()
    assert (summary["rows_in"], summary["rows_used"], summary["rows_skipped"], summary["samples"]) == (2, 1, 1, 1)
    assert "row 2" in report.details() and "images[0]" in report.details()


def test_student_segments_split():
    from prism_plugin.layout import Segments

    text = "\n <caption>a cat</caption>\n<think>it is</think> <answer>cat</answer>\n"
    assert Segments.from_response(text) == Segments("<caption>a cat</caption>",
                                                    "<think>it is</think> <answer>cat</answer>")
    assert Segments.from_response("<caption>a</caption><answer>b</answer>") is None


def test_relative_paths_from_another_working_directory_and_an_empty_result_fails(tiny_dir, tiny_sft_run, tmp_path,
                                                                                   monkeypatch, capsys):
    """The README's pattern with relative paths: images resolve against the data file's folder, whatever the
    working directory and wherever the output goes; a run that writes no pair is a failure, said in one line."""
    import shutil

    from prism_plugin.cli import main
    from prism_plugin.data.records import load_pairs

    shutil.copytree(tiny_dir / "data", tmp_path / "tiny" / "data")
    monkeypatch.chdir(tmp_path)
    argv = ["data", "make-pairs", "--policy", str(tiny_sft_run[0]), "--data", "tiny/data/align.jsonl",
            "--out", "tiny/data/pairs_sft.jsonl", "--max-new-tokens", "96", "--num-samples", "2"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["pairs_written"] > 0
    rows = [json.loads(line) for line in (tmp_path / "tiny" / "data" / "pairs_sft.jsonl").read_text().splitlines()]
    assert all(Path(p).is_absolute() and Path(p).is_file() for row in rows for p in row["images"])
    assert len(load_pairs(tmp_path / "tiny" / "data" / "pairs_sft.jsonl").records) == summary["pairs_written"]

    assert main([*argv[:-4], "--max-new-tokens", "2", "--num-samples", "1"]) == 1  # every sample truncated
    err = capsys.readouterr().err
    assert "prism-plugin data make-pairs: error: no pair written" in err and "Traceback" not in err
