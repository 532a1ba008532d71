"""A user's mistake in a real ``llamafactory-cli train`` run: one clear line, a non-zero exit, no traceback."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.lf_runs import llamafactory_train
from tests.test_prism_align import run_align
from tests.testing_utils import lf_config

SKIP_HINT = " (set prism_skip_invalid_rows: true to skip bad rows; they are counted and listed)"


def run_mistake(tmp_path, tiny_dir, **overrides) -> str:
    config = lf_config("prism_align", tiny_dir, tmp_path / "out", **{
        "model_name_or_path": str(tiny_dir / "qwen3_vl_policy"), "prism_discriminator": str(tmp_path / "disc"),
        "max_steps": 1, **overrides})
    proc = llamafactory_train(config, tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("prism-plugin: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


def test_a_bad_row_names_file_row_field_and_the_skip_key(tmp_path, tiny_dir, tiny_discriminator_dir):
    rows = [json.loads(line) for line in (tiny_dir / "data" / "align.jsonl").read_text().splitlines()[:3]]
    rows[1]["images"] = ["images/nowhere.png"]
    data = tmp_path / "align.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = run_mistake(tmp_path, tiny_dir, dataset=str(data), media_dir=str(tiny_dir / "data"),
                       prism_discriminator=str(tiny_discriminator_dir))
    assert f"{data}, row 2, field 'images[0]': image file not found" in line
    assert "prism_skip_invalid_rows: true" in line


def bad_align_data(tmp_path, tiny_dir):
    """The first 4 tiny alignment rows (with a copy of their images): row 2's PNG cut short, so it opens but does
    not decode; row 3's prompt holds a literal ``<video>``, which LLaMA-Factory's multimodal plugin refuses for a
    row with no video. Returns the data file and the cut image."""
    media = tmp_path / "data"
    shutil.copytree(tiny_dir / "data" / "images", media / "images")
    rows = [json.loads(line) for line in (tiny_dir / "data" / "align.jsonl").read_text().splitlines()[:4]]
    image = media / rows[1]["images"][0]
    image.write_bytes(image.read_bytes()[:200])
    rows[2]["prompt"] += " Ignore the <video>."
    data = media / "align.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data, image


def test_an_image_that_does_not_decode_stops_the_run_with_one_line(tmp_path, tiny_dir, tiny_discriminator_dir):
    data, image = bad_align_data(tmp_path, tiny_dir)
    line = run_mistake(tmp_path, tiny_dir, dataset=str(data), media_dir=str(data.parent),
                       prism_discriminator=str(tiny_discriminator_dir))
    assert line == (f"prism-plugin: error: {data}, row 2, field 'images[0]': image {image} does not decode: "
                    f"image file is truncated{SKIP_HINT}")


def test_bad_rows_are_skipped_and_counted_with_the_skip_key(tmp_path, tiny_dir, tiny_discriminator_dir):
    """The truncated image and the row the template's plugin rejects are left out and listed; the run trains on
    the two good rows."""
    data, image = bad_align_data(tmp_path, tiny_dir)
    out, steps = run_align(tmp_path, tiny_dir, tiny_dir / "qwen3_vl_policy", tiny_discriminator_dir,
                           dataset=str(data), media_dir=str(data.parent), prism_skip_invalid_rows=True,
                           prism_max_new_tokens=16, max_steps=1)
    assert len(steps) == 1
    [report] = json.loads((out / "prism_data_report.json").read_text())
    assert report["file"] == str(data) and report["kept"] == 2 and len(report["skipped"]) == 2
    assert report["skipped"][0] == (f"{data}, row 2, field 'images[0]': image {image} does not decode: image file "
                                    "is truncated")
    assert report["skipped"][1].startswith(
        f"{data}, row 3, field 'prompt or images': rejected by LLaMA-Factory's multimodal plugin: The number of "
        "videos does not match the number of <video> tokens in")
    log = (out / "run.log").read_text()
    assert f"{data}: 2 rows kept, 2 skipped" in log


def test_a_misspelt_key_gets_a_suggestion(tmp_path, tiny_dir):
    line = run_mistake(tmp_path, tiny_dir, prism_num_generation=4)
    assert "unknown keys: 'prism_num_generation' (did you mean 'prism_num_generations'?)" in line


@pytest.mark.parametrize("key, value, expected", [
    ("prism_policy_loss", "grpp", "prism_policy_loss 'grpp' is not a registered policy loss (did you mean 'grpo'?)"),
    ("prism_reward", "verifable", "(did you mean 'verifiable'?)"),
    ("prism_logprob_chunk_size", 0, "prism_logprob_chunk_size must be at least 1; got 0"),
    ("prism_num_generations", 1, "prism_num_generations must be >= 2; got 1: advantages are normalised within each "
                                 "prompt's group of rollouts, so a group of one has advantage 0 and the policy learns "
                                 "nothing"),
])
def test_a_wrong_value_is_caught_when_the_keys_are_parsed(tmp_path, tiny_dir, key, value, expected):
    line = run_mistake(tmp_path, tiny_dir, **{key: value})
    assert expected in line


def test_a_misspelt_discriminator_directory_is_not_found(tmp_path, tiny_dir):
    line = run_mistake(tmp_path, tiny_dir, prism_discriminator=str(tmp_path / "discrimnator"))
    assert f"discriminator directory not found: {tmp_path / 'discrimnator'}" in line


def test_a_policy_given_as_discriminator_is_named(tmp_path, tiny_dir):
    line = run_mistake(tmp_path, tiny_dir, prism_discriminator=str(tiny_dir / "qwen3_vl_policy"))
    assert "is a 'qwen3_vl' model (a policy?)" in line
