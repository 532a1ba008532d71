"""``prism-plugin upcycle`` and ``prism-plugin score`` on the tiny models, with bad rows reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prism_plugin.cli import main

pytestmark = pytest.mark.transformers4

# the processor's settings file: one (transformers 5.x) or one per sub-processor (4.57)
PROCESSOR_CONFIGS = ("processor_config.json", "preprocessor_config.json")


@pytest.fixture(scope="module")
def cli_disc(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "disc"
    code = main(["upcycle", str(tiny_dir / "qwen3_vl_dense"), str(out), "--expert-mode", "dedicated", "--seed", "1"])
    assert code == 0
    return out


def test_upcycle_cli_writes_a_loadable_discriminator(cli_disc: Path) -> None:
    from transformers import AutoModel, AutoProcessor

    import prism_plugin.discriminator  # noqa: F401

    config = json.loads((cli_disc / "config.json").read_text())
    assert config["model_type"] == "prism_discriminator" and config["expert_mode"] == "dedicated"
    assert config["backbone_config"]["model_type"] == "qwen3_vl_moe"
    text = config["backbone_config"]["text_config"]
    # transformers 4.57 reads ``num_experts``; 5.x writes its own name (``num_local_experts``) too
    assert text["num_experts"] == 4 and text.get("num_local_experts", 4) == 4
    for name in ("tokenizer.json", "chat_template.jinja"):
        assert (cli_disc / name).is_file(), name
    assert any((cli_disc / name).is_file() for name in PROCESSOR_CONFIGS)
    assert type(AutoModel.from_pretrained(cli_disc)).__name__ == "PrismDiscriminator"
    AutoProcessor.from_pretrained(cli_disc)


def test_score_cli_reports_bad_rows(cli_disc: Path, tiny_dir: Path, tmp_path: Path, capsys) -> None:
    rows = [json.loads(line) for line in (tiny_dir / "data" / "pairs.jsonl").read_text().splitlines()][:4]
    rows[1]["image"] = "images/missing.png"
    rows[2]["student_cot"] = "no tags at all"
    data = tmp_path / "rows.jsonl"
    # Image paths are relative to the data file: point them at the tiny images.
    for row in rows:
        row["image"] = str(tiny_dir / "data" / row["image"])
    lines = [json.dumps(r) for r in rows] + ["{not json", json.dumps({"image": rows[0]["image"]})]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.jsonl"
    args = ["score", "--discriminator", str(cli_disc), "--data", str(data), "--out", str(out)]
    assert main([*args, "--batch-size", "2", "--response-field", "student"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["rows"] == 6 and summary["scored"] == 2
    assert summary["fraction_valid"] == pytest.approx(2 / 6, abs=1e-6)
    assert summary["bad_rows"] == 4
    assert summary["bad_by_reason"] == {"bad_json": 1, "layout": 1, "missing_field": 1, "missing_image": 1}
    assert set(summary["mean_score"]) == {"caption", "reasoning"}
    assert f"{data}, row 2, field 'image[0]': image file not found" in captured.err and "missing.png" in captured.err
    assert f"{data}, row 3, field 'student_caption/student_cot'" in captured.err
    assert f"{data}, row 5, field '<line>': not valid JSON" in captured.err
    assert f"{data}, row 6, field 'prompt or question': missing" in captured.err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0]["valid"] and isinstance(records[0]["caption"], float)
    assert "error" in records[1] and records[2]["valid"] is False and records[2]["caption"] is None
    assert abs(records[0]["caption"]) <= 10.0


def test_score_cli_counts_images_that_do_not_decode_or_that_the_processor_rejects(cli_disc: Path, tiny_dir: Path,
                                                                                   tmp_path: Path, capsys) -> None:
    from PIL import Image

    good = json.loads((tiny_dir / "data" / "pairs.jsonl").read_text().splitlines()[0])
    good["image"] = str(tiny_dir / "data" / good["image"])
    cut = tmp_path / "cut.png"
    cut.write_bytes(Path(good["image"]).read_bytes()[:200])
    strip = tmp_path / "strip.png"
    Image.new("RGB", (300, 1), (255, 0, 0)).save(strip)
    latin = json.dumps({**good, "prompt": "<image>Caf\u00e9?"}, ensure_ascii=False).encode("latin-1")
    data = tmp_path / "rows.jsonl"
    data.write_bytes(b"\n".join([json.dumps(good).encode(), json.dumps({**good, "image": str(cut)}).encode(),
                                 json.dumps({**good, "image": str(strip)}).encode(), latin]) + b"\n")
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--discriminator", str(cli_disc), "--data", str(data), "--out", str(out),
                 "--response-field", "student"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["rows"] == 4 and summary["scored"] == 1
    assert summary["bad_by_reason"] == {"bad_encoding": 1, "bad_image": 1, "rejected": 1}
    errors = [f"{data}, row 2, field 'image[0]': image {cut} does not decode: image file is truncated",
              f"{data}, row 3, field 'prompt or images': rejected by the discriminator's processor: absolute aspect "
              "ratio must be smaller than 200, got 300.0",
              f"{data}, row 4, field '<line>': not UTF-8 text (byte 0xe9 at column {latin.index(0xE9) + 1}); save the "
              "file as UTF-8"]
    assert [line for line in captured.err.splitlines() if line.startswith(str(data))] == errors
    assert [r.get("error") for r in map(json.loads, out.read_text().splitlines())] == [None, *errors]


def test_score_cli_over_long_rows(cli_disc: Path, tiny_dir: Path, tmp_path: Path, capsys) -> None:
    row = json.loads((tiny_dir / "data" / "pairs.jsonl").read_text().splitlines()[0])
    row["image"] = str(tiny_dir / "data" / row["image"])
    row["response"] = row.pop("teacher_caption") + "\n" + row.pop("teacher_cot")
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(row) + "\n")
    out = tmp_path / "scores.jsonl"
    args = ["score", "--discriminator", str(cli_disc), "--data", str(data), "--out", str(out), "--max-length", "20"]
    assert main(args) == 1  # no row could be scored: a failure, said in one line
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["bad_by_reason"] == {"too_long": 1}
    assert f"{data}, row 1, field 'response'" in captured.err and "max_length 20" in captured.err
    assert "prism-plugin score: error: no row of" in captured.err and "Traceback" not in captured.err


def test_score_cli_with_a_field_no_row_has_fails_with_a_suggestion(cli_disc: Path, tiny_dir: Path, tmp_path: Path,
                                                                   capsys) -> None:
    data = tmp_path / "pairs.jsonl"
    rows = [json.loads(line) for line in (tiny_dir / "data" / "pairs.jsonl").read_text().splitlines()][:2]
    data.write_text("".join(json.dumps({**r, "image": str(tiny_dir / "data" / r["image"])}) + "\n" for r in rows))
    args = ["score", "--discriminator", str(cli_disc), "--data", str(data), "--out", str(tmp_path / "s.jsonl")]
    assert main([*args, "--response-field", "studnet"]) == 1
    err = capsys.readouterr().err
    assert "prism-plugin score: error: no row of" in err and "did you mean 'student_cot'?" in err


@pytest.mark.parametrize("which", ["policy", "missing"])
def test_score_cli_refuses_a_policy_or_a_missing_directory_in_one_line(which: str, tiny_dir: Path, tmp_path: Path,
                                                                       capsys) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "How many?", "response": "x"}) + "\n")
    disc = tiny_dir / "qwen3_vl_policy" if which == "policy" else tmp_path / "discrimnator"
    args = ["score", "--discriminator", str(disc), "--data", str(data), "--out", str(tmp_path / "s.jsonl")]
    assert main(args) == 1
    err = capsys.readouterr().err
    expected = "is a 'qwen3_vl' model (a policy?)" if which == "policy" else "discriminator directory not found"
    assert "prism-plugin score: error:" in err and expected in err and str(disc) in err
    assert "Traceback" not in err and err.count("error:") == 1
