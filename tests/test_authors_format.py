"""The PRISM release as it comes: the authors' discriminator format and their data schemas, used directly.

``tests/data/authors_disc`` was made with the authors' own code (see its README): a tiny dense Qwen3-VL,
their upcycling, their value head, their save; ``reference_scores.json`` holds their warm-up forward's scores.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.lf_runs import llamafactory_train
from tests.testing_utils import REPO, lf_config

AUTHORS_DISC = REPO / "tests" / "data" / "authors_disc"
AUTHORS_SHARDED = REPO / "tests" / "data" / "authors_disc_sharded"


def reference_rows() -> list[dict]:
    """The reference scores as whole responses: one row per (prompt, teacher or student)."""
    reference = json.loads((AUTHORS_DISC / "reference_scores.json").read_text())
    rows: dict[tuple, dict] = {}
    for item in reference["inputs"]:
        row = rows.setdefault((item["row"], item["role"]), {"prompt": item["user_prompt"],
                                                            "image": str(AUTHORS_DISC / item["image"])})
        row[item["segment"]] = item["segment_text"]
        row[f"{item['segment']}_score"] = item["scores"]["warmup_fp32"]
    return list(rows.values())


def score_rows(directory: Path) -> tuple[list[float], list[float]]:
    from prism_plugin.discriminator.loading import load_discriminator
    from prism_plugin.layout import Segments

    model = load_discriminator(directory).eval()
    rows = reference_rows()
    responses = [Segments(r["caption"], r["reasoning"]).response for r in rows]
    out = model.score_texts([r["prompt"] for r in rows], responses, [[r["image"]] for r in rows])
    return out["caption"].tolist(), out["reasoning"].tolist()


@pytest.mark.parametrize("directory", [AUTHORS_DISC, AUTHORS_SHARDED], ids=["single", "sharded"])
def test_the_released_format_scores_as_the_authors_warm_up(directory):
    rows = reference_rows()
    caption, reasoning = score_rows(directory)
    assert caption == pytest.approx([r["caption_score"] for r in rows], abs=1e-4)
    assert reasoning == pytest.approx([r["reasoning_score"] for r in rows], abs=1e-4)
    assert len(set(round(c, 5) for c in caption)) == len(rows)  # the inputs do move the scores


def test_import_discriminator_writes_our_format_with_identical_scores(tmp_path, capsys):
    from prism_plugin.cli import main

    out = tmp_path / "imported"
    assert main(["import-discriminator", str(AUTHORS_DISC), str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "prism_discriminator" and config["segment_format"] == "turn"
    assert summary["dtype"] == "bfloat16" and config["dtype"] == "bfloat16"  # saved in the dtype it came in
    assert (out / "preprocessor_config.json").is_file() and (out / "tokenizer.json").is_file()
    imported, direct = score_rows(out), score_rows(AUTHORS_DISC)
    for ours, theirs in zip(imported, direct, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-6)


def test_a_qwen3_vl_moe_policy_without_the_head_is_not_a_discriminator(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from prism_plugin.cli import main

    policy = tmp_path / "moe_policy"
    shutil.copytree(AUTHORS_DISC, policy, ignore=shutil.ignore_patterns("value_head.pt", "reference_scores.json"))
    weights = load_file(str(policy / "model.safetensors"))
    del weights["v_head.1.weight"]
    save_file(weights, str(policy / "model.safetensors"), metadata={"format": "pt"})
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "How many?", "response": "x"}) + "\n")
    assert main(["score", "--discriminator", str(policy), "--data", str(data), "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "is a 'qwen3_vl_moe' model (a policy?)" in err and "Traceback" not in err


# ---------------------------------------------------------------------- the authors' data schemas


def authors_alignment_parquet(tiny_dir: Path, path: Path, rows: int = 4) -> Path:
    """Alignment rows in the authors' verl parquet schema: a chat-message prompt, images as Hugging Face image
    structs holding the bytes, the answer under ``reward_model``, extra columns, teacher segments."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prism_plugin.discriminator.authors import AUTHORS_SYSTEM_PROMPT

    table = []
    for k, line in enumerate((tiny_dir / "data" / "align.jsonl").read_text().splitlines()[:rows]):
        row = json.loads(line)
        question = row["prompt"].replace("<image>", "")
        table.append({
            "data_source": "tiny_counting",
            "prompt": [{"role": "system", "content": AUTHORS_SYSTEM_PROMPT},
                       {"role": "user", "content": f"<image>\n{question}\n"}],
            "images": [{"bytes": (tiny_dir / "data" / row["images"][0]).read_bytes(), "path": None}],
            "ability": "counting",
            "reward_model": {"style": "rule", "ground_truth": row["ground_truth"]},
            "extra_info": {"index": k, "split": "train"},
            "teacher_caption": row["teacher_caption"],
            "teacher_cot": row["teacher_cot"],
        })
    pq.write_table(pa.Table.from_pylist(table), path)
    return path


def test_the_authors_alignment_parquet_reads_through_the_one_row_parser(tiny_dir, tmp_path):
    from PIL import Image

    from prism_plugin.data.records import load_align
    from prism_plugin.easyr1.convert import to_easyr1

    parquet = authors_alignment_parquet(tiny_dir, tmp_path / "rl_training_data.parquet")
    records = load_align(parquet).records
    assert len(records) == 4 and records[0].prompt.startswith("<image>\nHow many")
    assert isinstance(records[0].images[0], bytes) and Image.open(io.BytesIO(records[0].images[0])).size[0] > 0
    assert records[0].ground_truth and records[0].teacher.caption.startswith("<caption>")
    report = to_easyr1(parquet, tmp_path / "rlvr.parquet")  # the bytes are embedded again
    assert len(report.records) == 4


def test_align_preview_and_make_pairs_take_the_release_as_is(tiny_dir, tiny_sft_run, tmp_path, monkeypatch, capsys):
    """From another working directory, with relative paths: the authors' discriminator and parquet directly."""
    from prism_plugin.cli import main
    from prism_plugin.data.records import load_pairs

    work = tmp_path / "work"
    work.mkdir()
    authors_alignment_parquet(tiny_dir, work / "align.parquet", rows=2)
    shutil.copytree(AUTHORS_DISC, work / "disc")
    monkeypatch.chdir(work)
    assert main(["align-preview", "--policy", str(tiny_sft_run[0]), "--discriminator", "disc", "--data",
                 "align.parquet", "--num-prompts", "2", "--num-generations", "2", "--max-new-tokens", "64"]) == 0
    assert "teacher score caption" in capsys.readouterr().out
    assert main(["data", "make-pairs", "--policy", str(tiny_sft_run[0]), "--data", "align.parquet", "--out",
                 "out/pairs.jsonl", "--num-samples", "2", "--max-new-tokens", "96"]) == 0
    pairs = load_pairs(work / "out" / "pairs.jsonl").records
    assert pairs and all(Path(p).parent == work / "out" / "pairs_images" for p in pairs[0].images)


def test_prism_align_and_prism_disc_run_on_the_authors_discriminator(tiny_dir, tiny_sft_run, tmp_path):
    """``prism_discriminator`` and ``model_name_or_path`` of ``prism_disc`` take the released directory as is;
    what they save is a prism-plugin discriminator that keeps the authors' segment rendering."""
    from prism_plugin.discriminator.loading import load_discriminator

    parquet = authors_alignment_parquet(tiny_dir, tmp_path / "rl_training_data.parquet")
    align = lf_config("prism_align", tiny_dir, tmp_path / "align", model_name_or_path=str(tiny_sft_run[0]),
                      prism_discriminator=str(AUTHORS_DISC), dataset=str(parquet), max_steps=2, logging_steps=1,
                      prism_max_new_tokens=96, prism_disc_learning_rate=1e-2, prism_policy_epochs=1)
    proc = llamafactory_train(align, tmp_path / "a")
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = tmp_path / "align" / "discriminator"
    assert json.loads((saved / "config.json").read_text())["segment_format"] == "turn"
    before, after = load_discriminator(AUTHORS_DISC), load_discriminator(saved)
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters(), strict=True))

    warm = lf_config("prism_disc", tiny_dir, tmp_path / "warm", model_name_or_path=str(AUTHORS_DISC),
                     max_steps=2, num_train_epochs=None, do_eval=None, eval_strategy=None, val_size=None)
    proc = llamafactory_train(warm, tmp_path / "w")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((tmp_path / "warm" / "config.json").read_text())
    assert config["model_type"] == "prism_discriminator" and config["segment_format"] == "turn"
