"""Stage prism_disc: the discriminator warm-up as a real LLaMA-Factory run, its loss and its data checks."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from prism_plugin.data.records import DatasetRowError
from tests.lf_runs import llamafactory_train

pytestmark = pytest.mark.llamafactory


def warmup_config(tmp_path: Path, tiny_dir: Path, disc_dir: Path, **overrides) -> dict:
    config = {
        "model_name_or_path": str(disc_dir), "stage": "prism_disc", "do_train": True, "finetuning_type": "full",
        "dataset": "prism_tiny_pairs", "dataset_dir": str(tiny_dir / "data"), "cutoff_len": 1024,
        "output_dir": str(tmp_path / "out"), "logging_steps": 1, "save_strategy": "no", "report_to": "none",
        "per_device_train_batch_size": 4, "learning_rate": 1e-3, "max_steps": 3, "bf16": False,
        "overwrite_output_dir": True, "plot_loss": True,
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def encoder(tiny_discriminator_dir):
    from transformers import AutoModel

    import prism_plugin.discriminator  # noqa: F401
    from prism_plugin.discriminator.rendering import TextScorer
    from prism_plugin.llamafactory.disc.data import PairEncoder

    model = AutoModel.from_pretrained(tiny_discriminator_dir).eval()
    return PairEncoder(TextScorer(model), ["caption", "reasoning"], cutoff_len=1024)


def test_llamafactory_cli_runs_prism_disc_and_saves_a_discriminator(tmp_path, tiny_dir, tiny_discriminator_dir):
    out = llamafactory_train(warmup_config(tmp_path, tiny_dir, tiny_discriminator_dir), tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = tmp_path / "out"
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "prism_discriminator"
    assert (saved / "model.safetensors").is_file() and (saved / "processor_config.json").is_file()
    history = json.loads((saved / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert len(steps) == 3
    for key in ("accuracy", "caption/accuracy", "reasoning/score_gap", "router_aux_loss"):
        assert key in steps[0], key
    report = json.loads((saved / "prism_data_report.json").read_text())
    assert report[0]["kept"] == 16 and report[0]["skipped"] == []
    assert (saved / "training_loss.png").is_file()

    from transformers import AutoModel

    import prism_plugin.discriminator  # noqa: F401

    before = AutoModel.from_pretrained(tiny_discriminator_dir)
    after = AutoModel.from_pretrained(saved)
    head_before, head_after = (next(iter(m.heads.values())).weight for m in (before, after))
    assert not torch.equal(head_before, head_after)


def test_pair_loss_is_bradley_terry_over_full_forwards(encoder, tiny_dir):
    from prism_plugin.data.records import load_pairs
    from prism_plugin.discriminator.segment_forward import SegmentQuery, score
    from prism_plugin.llamafactory.disc.data import PairCollator
    from prism_plugin.llamafactory.disc.trainer import PrismDiscTrainer

    model = encoder.scorer.model.eval()
    records = load_pairs(tiny_dir / "data" / "pairs.jsonl").records[:3]
    features = [encoder.encode(r, "pairs.jsonl") for r in records]
    batch = PairCollator(["caption", "reasoning"], pad_id=encoder.scorer.tokenizer.pad_token_id)(features)
    trainer = PrismDiscTrainer.__new__(PrismDiscTrainer)  # only pair_loss's own state is needed
    trainer.segments, trainer.router_aux_coef = ["caption", "reasoning"], 0.0
    with torch.no_grad():
        loss, metrics = trainer.pair_loss(model, batch)
        prompts = [f.prompt for f in features]
        queries = [SegmentQuery(i, s, getattr(f, side)[s]) for i, f in enumerate(features)
                   for s in ("caption", "reasoning") for side in ("teacher", "student")]
        ref = score(model, prompts, queries, reuse_prefix=False).view(3, 2, 2)
    expected = -torch.nn.functional.logsigmoid(ref[:, :, 0] - ref[:, :, 1]).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert metrics["caption/accuracy"] == pytest.approx(
        ((ref[:, 0, 0] > ref[:, 0, 1]).float() + 0.5 * (ref[:, 0, 0] == ref[:, 0, 1]).float()).mean().item())


def test_warmup_learns_to_prefer_the_teacher(encoder, tiny_dir, tmp_path):
    from transformers import AutoModel, TrainingArguments

    from prism_plugin.data.records import load_pairs
    from prism_plugin.llamafactory.disc.data import PairCollator
    from prism_plugin.llamafactory.disc.trainer import PrismDiscTrainer

    model = AutoModel.from_pretrained(encoder.scorer.model.config.name_or_path)
    features = [encoder.encode(r, "p") for r in load_pairs(tiny_dir / "data" / "pairs.jsonl").records[:8]]
    collator = PairCollator(["caption", "reasoning"], pad_id=encoder.scorer.tokenizer.pad_token_id)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=3e-3,
                             max_steps=40, report_to=[], save_strategy="no", logging_steps=40, seed=0,
                             remove_unused_columns=False, use_cpu=True)
    trainer = PrismDiscTrainer(model=model, args=args, train_dataset=features, data_collator=collator,
                               segments=["caption", "reasoning"])
    model.eval()
    with torch.no_grad():
        before, _ = trainer.pair_loss(model, collator(features))
    trainer.train()
    model.eval()
    with torch.no_grad():
        after, metrics = trainer.pair_loss(model, collator(features))
    assert before.item() > 0.6 and after.item() < 0.35 * before.item()
    assert metrics["accuracy"] == 1.0


def test_bad_rows_stop_the_run_or_are_skipped_and_counted(tmp_path, tiny_dir, encoder):
    from prism_plugin.llamafactory.disc.data import encode_pairs

    rows = (tiny_dir / "data" / "pairs.jsonl").read_text().splitlines()[:4]
    broken = json.loads(rows[1])
    broken["image"] = "images/none.png"
    long_row = json.loads(rows[2])
    long_row["teacher_cot"] = "<think> " + "red " * 1200 + "</think><answer> 1 </answer>"
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join([rows[0], json.dumps(broken), json.dumps(long_row), rows[3]]) + "\n")
    shutil.copytree(tiny_dir / "data" / "images", tmp_path / "images")
    with pytest.raises(DatasetRowError, match=r"row 2, field 'image\[0\]'"):
        encode_pairs([path], encoder, skip_invalid=False, media_dir=None)
    features, reports = encode_pairs([path], encoder, skip_invalid=True, media_dir=None)
    assert [f.row for f in features] == [1, 4]
    assert [(e.row, e.field) for e in reports[0].skipped] == [(2, "image[0]"), (3, "teacher_cot")]
    assert "over cutoff_len 1024" in str(reports[0].skipped[1])


def test_a_row_the_discriminator_processor_rejects_is_a_bad_row(tmp_path, tiny_dir, encoder):
    """An image that decodes but that the Qwen-VL processor refuses (aspect ratio over 200) is caught where the
    pair is encoded: file, row and field, or skipped and counted."""
    from PIL import Image

    from prism_plugin.llamafactory.disc.data import encode_pairs

    rows = [json.loads(line) for line in (tiny_dir / "data" / "pairs.jsonl").read_text().splitlines()[:3]]
    Image.new("RGB", (300, 1), (255, 0, 0)).save(tmp_path / "strip.png")
    rows[1]["image"] = str(tmp_path / "strip.png")
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    media = str(tiny_dir / "data")
    with pytest.raises(DatasetRowError) as info:
        encode_pairs([path], encoder, skip_invalid=False, media_dir=media)
    assert str(info.value) == (f"{path}, row 2, field 'prompt or images': rejected by the discriminator's processor: "
                               "absolute aspect ratio must be smaller than 200, got 300.0")
    features, reports = encode_pairs([path], encoder, skip_invalid=True, media_dir=media)
    assert [f.row for f in features] == [1, 3]
    assert [(e.row, e.reason) for e in reports[0].skipped] == [(2, "rejected")]


def test_prism_disc_refuses_a_plain_language_model(tmp_path, tiny_dir):
    out = llamafactory_train(warmup_config(tmp_path, tiny_dir, tiny_dir / "qwen3_vl_dense"), tmp_path)
    assert out.returncode != 0
    assert "prism-plugin upcycle" in out.stderr


def test_prism_disc_under_torchrun_with_two_processes(tmp_path, tiny_dir, tiny_discriminator_dir):
    config = warmup_config(tmp_path, tiny_dir, tiny_discriminator_dir, max_steps=2)
    out = llamafactory_train(config, tmp_path, FORCE_TORCHRUN="1", NPROC_PER_NODE="2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "world size: 2" in out.stderr + out.stdout
    assert (tmp_path / "out" / "model.safetensors").is_file()
