"""``prism-plugin evaluate``: real policies (SFT, untrained, LoRA adapter, text) on verifiable rows.

The rows are the first of the tiny build's held-out ``eval.jsonl`` (the alignment row format; scenes the SFT
run never saw — ``align.jsonl`` holds exactly its training examples).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.testing_utils import REPO

MAX_NEW_TOKENS = 96
NUM_HELD_OUT = 4


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from prism_plugin.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def held_out(tiny_dir) -> Path:
    """The tiny build's held-out rows (relative image paths, resolved against the file's folder)."""
    return tiny_dir / "data" / "eval.jsonl"


@pytest.fixture(scope="module")
def lora_adapter(tiny_dir, tmp_path_factory) -> Path:
    """A LoRA adapter directory from a real 3-step LLaMA-Factory LoRA SFT of the tiny VL policy."""
    from tests.lf_runs import llamafactory_train
    from tests.testing_utils import lf_config

    work = tmp_path_factory.mktemp("lora")
    config = lf_config("sft", tiny_dir, work / "out", finetuning_type="lora", lora_target="all", max_steps=3,
                       num_train_epochs=None, per_device_train_batch_size=4, plot_loss=False, logging_steps=1)
    proc = llamafactory_train(config, work)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (work / "out" / "adapter_config.json").is_file()
    return work / "out"


@pytest.fixture(scope="module")
def compared(tiny_dir, tiny_sft_run, lora_adapter, held_out, tmp_path_factory) -> dict:
    """One CLI run: the SFT policy, the untrained policy and the LoRA adapter, greedy, on the first 4 held-out
    rows; 3 rows per engine call (so a batch boundary falls inside the 4 rows); default display names."""
    import contextlib
    import io

    from prism_plugin.cli import main
    from prism_plugin.evaluate import default_names

    models = [tiny_sft_run[0], tiny_dir / "qwen3_vl_policy", lora_adapter]
    out = tmp_path_factory.mktemp("evaluate") / "out"
    argv = ["evaluate", *[a for m in models for a in ("--model", str(m))], "--data", str(held_out),
            "--out", str(out), "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "3",
            "--limit", str(NUM_HELD_OUT)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(argv) == 0
    names = default_names(models)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return {"out": out, "stdout": stdout.getvalue(), "summary": summary, "names": names, "models": models}


# --------------------------------------------------------------------------- hand-computed metric helpers


def test_pass_at_k_and_mean_at_k_on_a_hand_made_table():
    from prism_plugin.evaluate import mean_at_k, mean_pass_at_k, pass_at_k, summarize

    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 0, 2) == 0.0 and pass_at_k(5, 4, 2) == 1.0
    assert pass_at_k(3, 1, 3) == 1.0 and pass_at_k(3, 0, 3) == 0.0  # n = k: "any correct"
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # k = 1: the share correct
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)

    table = [[1, 0, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0]]  # rows x 3 samples
    assert mean_at_k(table) == pytest.approx(5 / 12)
    assert mean_pass_at_k(table, 3) == pytest.approx(3 / 4)
    assert mean_pass_at_k(table, 1) == pytest.approx(5 / 12)  # pass@1 over k samples is mean@k

    lines = [{"row": r + 10, "sample": s, "accuracy": float(v), "valid_layout": s == 0, "truncated": v == 0 and s == 2,
              "response_tokens": 10 * (s + 1)} for r, row in enumerate(table) for s, v in enumerate(row)]
    metrics = summarize(lines, 3)
    assert metrics["samples"] == 12 and metrics["accuracy"] == pytest.approx(5 / 12)
    assert metrics["pass@3"] == pytest.approx(3 / 4)
    assert metrics["layout_valid"] == pytest.approx(4 / 12) and metrics["truncated"] == pytest.approx(3 / 12)
    assert metrics["response_tokens"] == pytest.approx(20.0)
    assert "caption_exact_match" not in metrics and "pass@1" not in summarize(lines[:1], 1)


def test_caption_exact_match_and_token_f1_on_hand_examples():
    from prism_plugin.evaluate import caption_exact_match, caption_token_f1

    teacher = "<caption> red 3 green 0 blue 2 </caption>"
    assert caption_exact_match("<caption>red 3\n green 0  blue 2</caption>", teacher) == 1.0  # whitespace only
    assert caption_exact_match("<caption> Red 3 green 0 blue 2 </caption>", teacher) == 0.0  # case counts
    assert caption_exact_match("<caption> red 3 green 0 </caption>", teacher) == 0.0
    assert caption_exact_match(None, teacher) == 0.0

    # pred [red 3 green 1], gold [red 3 green 0 blue 2]: overlap 3, P = 3/4, R = 3/6 -> F1 = 0.6
    assert caption_token_f1("<caption> red 3 green 1 </caption>", teacher) == pytest.approx(0.6)
    assert caption_token_f1("<caption> RED 3 Green 0 blue 2 </caption>", teacher) == pytest.approx(1.0)
    assert caption_token_f1("<caption> blue 2 red 3 green 0 </caption>", teacher) == pytest.approx(1.0)  # a bag
    # multiset overlap: pred [3 3 3], gold [3 red] -> overlap 1, P = 1/3, R = 1/2 -> F1 = 0.4
    assert caption_token_f1("<caption> 3 3 3 </caption>", "<caption> 3 red </caption>") == pytest.approx(0.4)
    assert caption_token_f1("<caption> yellow </caption>", teacher) == 0.0
    assert caption_token_f1("<caption></caption>", "<caption> </caption>") == 1.0
    assert caption_token_f1("<caption></caption>", teacher) == 0.0 and caption_token_f1(None, teacher) == 0.0


def test_default_names_tell_directories_apart(tmp_path):
    from prism_plugin.evaluate import default_names

    models = [tmp_path / "sft" / "checkpoint-80", tmp_path / "align" / "checkpoint-80", tmp_path / "base"]
    assert default_names(models) == ["sft-checkpoint-80", "align-checkpoint-80", "base"]
    assert default_names([tmp_path / "base", tmp_path / "base"]) == ["base", "base-2"]


# --------------------------------------------------------------------------- real policies


def test_sft_policy_is_layout_valid_more_often_than_the_untrained_one(compared):
    sft, base, _ = compared["names"]
    models = compared["summary"]["models"]
    assert models[sft]["layout_valid"] > models[base]["layout_valid"], models
    assert models[sft]["accuracy"] >= models[base]["accuracy"]


def test_summary_equals_what_the_per_sample_jsonl_gives(compared, held_out):
    from prism_plugin.data.records import load_prompts
    from prism_plugin.evaluate import caption_exact_match, caption_token_f1
    from prism_plugin.layout import Segments, is_valid
    from prism_plugin.rewards import compute_score

    records = load_prompts(held_out, teacher="optional", require_ground_truth=True).records[:NUM_HELD_OUT]
    summary = compared["summary"]
    assert (summary["rows"], summary["rows_skipped"], summary["num_samples"]) == (NUM_HELD_OUT, 0, 1)
    assert summary["rows_with_images"] == NUM_HELD_OUT and summary["temperature"] == 0.0
    assert list(summary["models"]) == compared["names"]
    for name, model in zip(compared["names"], compared["models"], strict=True):
        metrics = summary["models"][name]
        assert metrics["model"] == str(Path(model).resolve()) and metrics["vision"] is True
        lines = read_jsonl(compared["out"] / f"{name}.jsonl")
        assert [(line["row"], line["sample"]) for line in lines] == [(r.row, 0) for r in records]
        for line, record in zip(lines, records, strict=True):
            scores = compute_score(line["response"], record.ground_truth)
            assert (line["accuracy"], line["reward"]) == (scores["accuracy"], scores["overall"])
            assert line["ground_truth"] == record.ground_truth
            assert line["valid_layout"] == (is_valid(line["response"]) and not line["truncated"])
            if line["truncated"]:
                assert line["response_tokens"] == MAX_NEW_TOKENS
            else:
                assert 0 < line["response_tokens"] <= MAX_NEW_TOKENS
            caption = Segments.from_response(line["response"]).caption if line["valid_layout"] else None
            assert line["caption_exact_match"] == caption_exact_match(caption, record.teacher.caption)
            assert line["caption_token_f1"] == pytest.approx(caption_token_f1(caption, record.teacher.caption))
        assert metrics["samples"] == len(lines) == NUM_HELD_OUT and "pass@1" not in metrics
        for key, field in [("accuracy", "accuracy"), ("layout_valid", "valid_layout"), ("truncated", "truncated"),
                           ("response_tokens", "response_tokens"), ("caption_exact_match", "caption_exact_match"),
                           ("caption_token_f1", "caption_token_f1")]:
            assert metrics[key] == pytest.approx(mean(line[field] for line in lines)), (name, key)
        assert metrics["caption_rows"] == NUM_HELD_OUT


def test_comparison_table_and_chart(compared):
    from PIL import Image

    models = compared["summary"]["models"]
    table = [line.split() for line in compared["stdout"].splitlines() if line.strip()]
    columns = ["accuracy", "layout_valid", "truncated", "response_tokens", "caption_exact_match", "caption_token_f1"]
    assert table[0] == ["model", *columns]
    for row, name in zip(table[1:4], compared["names"], strict=True):
        expected = [f"{models[name][k]:.1f}" if k == "response_tokens" else f"{models[name][k]:.3f}" for k in columns]
        assert row == [name, *expected]
    assert compared["stdout"].splitlines()[-1].startswith("written: ")
    with Image.open(compared["out"] / "comparison.png") as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 300


def test_lora_adapter_is_evaluated_on_its_base_with_the_adapter_merged(compared, tiny_dir, lora_adapter):
    from prism_plugin.policy import policy_config

    base, config, is_adapter = policy_config(lora_adapter)
    assert is_adapter and Path(base) == tiny_dir / "qwen3_vl_policy" and hasattr(config, "vision_config")
    _, base_name, lora_name = compared["names"]
    base_lines = read_jsonl(compared["out"] / f"{base_name}.jsonl")
    lora_lines = read_jsonl(compared["out"] / f"{lora_name}.jsonl")
    assert len(lora_lines) == NUM_HELD_OUT
    # greedy, same rows, same batches: only the merged adapter can make the responses differ
    assert [line["response"] for line in lora_lines] != [line["response"] for line in base_lines]


def test_sampling_pass_at_k_from_another_working_directory(tiny_sft_run, held_out, tmp_path, monkeypatch, capsys):
    """Relative --model, --data and --out from another folder; 3 samples per row at temperature 1."""
    monkeypatch.chdir(tmp_path)
    model = os.path.relpath(tiny_sft_run[0], tmp_path)
    data = os.path.relpath(held_out, tmp_path)
    code, out, err = run_cli(["evaluate", "--model", model, "--name", "sft", "--data", data, "--out", "results",
                              "--num-samples", "3", "--temperature", "1.0", "--limit", "3", "--seed", "5",
                              "--max-new-tokens", str(MAX_NEW_TOKENS), "--device", "cpu"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    lines = read_jsonl(tmp_path / "results" / "sft.jsonl")
    assert summary["rows"] == 3 and [(line["row"], line["sample"]) for line in lines] == [
        (row, sample) for row in (1, 2, 3) for sample in range(3)]
    by_row = [[line["accuracy"] for line in lines if line["row"] == row] for row in (1, 2, 3)]
    metrics = summary["models"]["sft"]
    assert metrics["accuracy"] == pytest.approx(mean(a for row in by_row for a in row))  # mean@3
    assert metrics["pass@3"] == pytest.approx(mean(any(a == 1.0 for a in row) for row in by_row))
    assert any(len({line["response"] for line in lines if line["row"] == row}) > 1 for row in (1, 2, 3))
    assert "pass@3" in out.splitlines()[0].split()
    assert not (tmp_path / "results" / "comparison.png").exists()  # one model: no chart


def test_text_policy_on_text_rows_and_skipped_rows(tiny_dir, held_out, tmp_path):
    """The text policy on text-only RLVR rows (no teacher: no caption metrics); a bad row is skipped, counted."""
    from prism_plugin.evaluate import evaluate
    from prism_plugin.rewards import REWARD_VERSION

    rows = [json.loads(line) for line in held_out.read_text().splitlines()]
    def text_row(row: dict) -> dict:  # the caption's counts spelled out in the prompt, no image
        counts = row["teacher_caption"].removeprefix("<caption>").removesuffix("</caption>").strip()
        return {"prompt": f"Shapes: {counts}. {row['prompt'].replace('<image>', '')}", "answer": row["ground_truth"]}

    text_rows = [text_row(row) for row in rows[:3]]
    text_rows.insert(1, {"prompt": "How many shapes?"})  # no answer: row 2 is bad
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in text_rows))
    result = evaluate([tiny_dir / "qwen3_policy"], data, tmp_path / "out", max_new_tokens=16, skip_invalid=True,
                      progress=False)
    summary = result.summary
    assert (summary["rows"], summary["rows_skipped"], summary["rows_with_images"]) == (3, 1, 0)
    assert summary["reward_version"] == REWARD_VERSION == 3
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["reward_version"] == REWARD_VERSION
    assert "row 2, field 'ground_truth'" in summary["skipped"][0] and "row 2" in result.details()
    metrics = summary["models"]["qwen3_policy"]
    assert metrics["vision"] is False and "caption_exact_match" not in metrics
    lines = read_jsonl(tmp_path / "out" / "qwen3_policy.jsonl")
    assert [line["row"] for line in lines] == [1, 3, 4] and all("caption_token_f1" not in line for line in lines)
    assert metrics["truncated"] == pytest.approx(mean(line["truncated"] for line in lines))
    assert result.plot is None and "caption" not in result.table()


def test_text_only_policy_on_rows_with_images_is_noted():
    from prism_plugin.evaluate import Evaluation

    summary = {"rows_with_images": 2, "models": {"text": {"vision": False}, "vl": {"vision": True}}}
    details = Evaluation(Path("."), summary).details()
    assert details == "text is a text-only policy: the images of 2 rows are not shown to it"


# --------------------------------------------------------------------------- mistakes: one line, exit 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num-samples", "2"], "--num-samples 2 with --temperature 0"),
        (["--temperature", "-0.5"], "--temperature must be 0 (greedy) or more"),
        (["--name", "a", "--name", "b"], "2 --name for 1 --model"),
        (["--name", "../x"], "cannot be a file name"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--device", "gpu"], "device 'gpu' is not a torch device"),
    ],
)
def test_option_mistakes_are_one_line(extra, message, tiny_dir, held_out, tmp_path, capsys):
    code, out, err = run_cli(["evaluate", "--model", str(tiny_dir / "qwen3_policy"), "--data",
                              str(held_out), "--out", str(tmp_path / "out"), *extra], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("prism-plugin evaluate: error: ") and message in err, err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_path_and_model_mistakes_are_one_line(tiny_dir, tiny_discriminator_dir, held_out, tmp_path, capsys):
    data = str(held_out)
    policy = str(tiny_dir / "qwen3_policy")
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "no_answer.jsonl").write_text(json.dumps({"prompt": "How many?"}) + "\n")
    cases = [
        (["--model", str(tmp_path / "missing"), "--data", data], "policy directory not found"),
        (["--model", policy, "--model", str(tiny_discriminator_dir), "--data", data],
         "is a PRISM discriminator, not a policy"),
        (["--model", str(REPO / "tests" / "data" / "authors_disc"), "--data", data],
         "is a PRISM discriminator, not a policy"),  # the authors' released format: a qwen3_vl_moe with a head
        (["--model", str(tiny_dir / "tokenizer"), "--data", data], "neither config.json nor adapter_config.json"),
        (["--model", policy, "--model", policy, "--name", "a", "--name", "a", "--data", data], "'a' is given twice"),
        (["--model", policy, "--data", str(tmp_path / "missing.jsonl")], "dataset file not found"),
        (["--model", policy, "--data", str(tmp_path / "empty.jsonl")], "empty.jsonl: no usable rows"),
        (["--model", policy, "--data", str(tmp_path / "no_answer.jsonl")], "row 1, field 'ground_truth': missing"),
        (["--model", policy, "--data", str(tmp_path / "no_answer.jsonl"), "--skip-invalid"],
         "no usable rows (1 skipped; the first: "),
        (["--model", policy, "--data", data, "--out", str(tmp_path / "file")], "is a file; give a directory"),
        (["--model", policy, "--data", data, "--image-dir", str(tmp_path)], "row 1, field 'images[0]': image file "),
    ]
    for extra, message in cases:
        argv = ["evaluate", *extra] + ([] if "--out" in extra else ["--out", str(tmp_path / "out")])
        code, out, err = run_cli(argv, capsys)
        assert code == 1 and out == "", (extra, out, err)
        assert err.count("\n") == 1 and err.startswith("prism-plugin evaluate: error: ") and message in err, err
    assert not (tmp_path / "out").exists()


def test_an_image_that_does_not_decode_is_one_line_or_skipped_and_counted(tiny_dir, held_out, tmp_path, capsys):
    """Through the installed ``prism-plugin`` command: a truncated PNG stops ``evaluate`` before any policy loads,
    naming file, row and field; with ``--skip-invalid`` the row is left out, listed and counted in summary.json."""
    import shutil
    import subprocess
    import sys

    rows = read_jsonl(held_out)[:3]
    shutil.copytree(held_out.parent / "images", tmp_path / "images")
    image = tmp_path / rows[1]["images"][0]
    image.write_bytes(image.read_bytes()[:200])
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    argv = ["evaluate", "--model", str(tiny_dir / "qwen3_vl_policy"), "--data", str(data), "--out",
            str(tmp_path / "out"), "--max-new-tokens", "4"]
    cli = str(Path(sys.executable).with_name("prism-plugin"))
    proc = subprocess.run([cli, *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    message = f"{data}, row 2, field 'images[0]': image {image} does not decode: image file is truncated"
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr[-2000:]
    assert proc.stderr == f"prism-plugin evaluate: error: {message}\n"
    assert not (tmp_path / "out").exists()

    code, out, err = run_cli([*argv, "--skip-invalid"], capsys)
    assert code == 0 and message in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert (summary["rows"], summary["rows_skipped"], summary["skipped"]) == (2, 1, [message])
    assert [line["row"] for line in read_jsonl(tmp_path / "out" / "qwen3_vl_policy.jsonl")] == [1, 3]
