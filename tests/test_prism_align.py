"""Stage prism_align: the alignment game as a real LLaMA-Factory run from the tiny SFT policy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

CLI = str(Path(sys.executable).with_name("llamafactory-cli"))


def run_align(tmp_path: Path, tiny_dir: Path, policy: Path, disc: Path, **overrides) -> tuple[Path, list[dict]]:
    out = tmp_path / "align"
    config = {
        "model_name_or_path": str(policy), "stage": "prism_align", "do_train": True, "finetuning_type": "full",
        "prism_discriminator": str(disc), "prism_num_generations": 4, "prism_max_new_tokens": 96,
        "prism_disc_learning_rate": 1e-3, "dataset": "prism_tiny_align", "dataset_dir": str(tiny_dir / "data"),
        "template": "prism_qwen3_vl", "cutoff_len": 1024, "output_dir": str(out), "logging_steps": 1,
        "save_strategy": "no", "report_to": "none", "per_device_train_batch_size": 2, "learning_rate": 1e-4,
        "max_steps": 3, "bf16": False, "seed": 0, "overwrite_output_dir": True,
    }
    config.update(overrides)
    path = tmp_path / "align.yaml"
    path.write_text(json.dumps(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([CLI, "train", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return out, [entry for entry in history if "policy/loss" in entry]


def test_align_updates_policy_and_discriminator_and_logs_the_game(tmp_path, tiny_dir, tiny_sft_run,
                                                                   tiny_discriminator_dir):
    from transformers import AutoModel

    import prism_plugin.discriminator  # noqa: F401

    policy = tiny_sft_run[0]
    out, steps = run_align(tmp_path, tiny_dir, policy, tiny_discriminator_dir, prism_policy_epochs=2)
    assert len(steps) == 3
    fresh = [steps[0], steps[2]]  # with 2 policy epochs, steps 1 and 3 sample new rollouts; step 2 reuses them
    for key in ("valid_ratio", "response_length", "advantage_mean", "caption/teacher_score", "reasoning/teacher_score",
                "reward", "disc/skipped"):
        assert all(key in step for step in fresh) and key not in steps[1], key
    assert all("policy/clip_frac" in step and "policy/ratio_mean" in step for step in steps)
    assert any(step["valid_ratio"] > 0 for step in fresh), "the SFT policy should produce some layout-valid rollouts"
    updated = [step for step in fresh if step["disc/skipped"] == 0.0]
    assert updated and all("disc/loss" in s and "disc/caption/accuracy" in s for s in updated)
    # second pass over a batch of rollouts: the ratio moves away from 1
    assert any(step["policy/ratio_max"] > 1.0 or step["policy/ratio_min"] < 1.0 for step in steps)

    before = load_file(str(policy / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    disc_before = AutoModel.from_pretrained(tiny_discriminator_dir)
    disc_after = AutoModel.from_pretrained(out / "discriminator")
    assert any(not torch.equal(a, b) for a, b in zip(disc_before.parameters(), disc_after.parameters(), strict=True))
    assert (out / "discriminator" / "processor_config.json").is_file()
    assert (out / "prism_data_report.json").is_file()


def test_align_with_a_fixed_scorer_and_one_epoch(tmp_path, tiny_dir, tiny_sft_run, tiny_discriminator_dir):
    from transformers import AutoModel

    import prism_plugin.discriminator  # noqa: F401

    out, steps = run_align(tmp_path, tiny_dir, tiny_sft_run[0], tiny_discriminator_dir,
                           prism_update_discriminator=False, prism_segments=["response"],
                           prism_segment_weights=[1.0], max_steps=2)
    assert all("disc/loss" not in step for step in steps)
    assert all(step["policy/ratio_mean"] == pytest.approx(1.0) for step in steps)  # one on-policy step per batch
    assert all("response/teacher_score" in step for step in steps)  # GAD: one whole-response segment
    disc_before = AutoModel.from_pretrained(tiny_discriminator_dir)
    disc_after = AutoModel.from_pretrained(out / "discriminator")
    assert all(torch.equal(a, b) for a, b in zip(disc_before.parameters(), disc_after.parameters(), strict=True))


def test_align_without_discriminator_is_a_clear_error(tmp_path, tiny_dir):
    config = {"model_name_or_path": str(tiny_dir / "qwen3_vl_policy"), "stage": "prism_align", "do_train": True,
              "dataset": "prism_tiny_align", "dataset_dir": str(tiny_dir / "data"), "template": "prism_qwen3_vl",
              "output_dir": str(tmp_path / "o"), "report_to": "none"}
    path = tmp_path / "a.yaml"
    path.write_text(json.dumps(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([CLI, "train", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "needs `prism_discriminator: DIR`" in proc.stderr
