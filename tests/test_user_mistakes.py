"""A user's mistake in a real ``llamafactory-cli train`` run: one clear line, a non-zero exit, no traceback."""

from __future__ import annotations

import json

import pytest

from tests.lf_runs import llamafactory_train
from tests.testing_utils import lf_config


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


def test_a_misspelt_key_gets_a_suggestion(tmp_path, tiny_dir):
    line = run_mistake(tmp_path, tiny_dir, prism_num_generation=4)
    assert "unknown keys: 'prism_num_generation' (did you mean 'prism_num_generations'?)" in line


@pytest.mark.parametrize("key, value, expected", [
    ("prism_policy_loss", "grpp", "prism_policy_loss 'grpp' is not a registered policy loss (did you mean 'grpo'?)"),
    ("prism_reward", "verifable", "(did you mean 'verifiable'?)"),
    ("prism_logprob_chunk_size", 0, "these keys must be >= 1: prism_logprob_chunk_size=0"),
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
