"""Long runs: a resumed run is the same run, a kill at any moment (mid-save included) is survived by running the
same command again, SIGTERM saves and stops, torn checkpoints are skipped — weights compared, not logs.

Every run is a real ``llamafactory-cli train`` of the tiny stages; the uninterrupted runs are module fixtures
shared by the tests that compare against them. Kills are injected deterministically (``PRISM_KILL_AT``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.lf_runs import llamafactory_train
from tests.test_prism_align import failure_excerpt
from tests.testing_utils import lf_config

pytestmark = pytest.mark.llamafactory

TWO_RANKS = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"}
SIGKILLED = -9


def align_config(tiny_dir: Path, out: Path, policy: Path, disc: Path, **overrides) -> dict:
    """The shipped tiny alignment, 4 steps of 32 new tokens, a checkpoint after every step, and resuming from
    ``output_dir``'s last checkpoint when one is there (``overwrite_output_dir: false``)."""
    settings = {"model_name_or_path": str(policy), "prism_discriminator": str(disc), "prism_max_new_tokens": 32,
                "prism_disc_learning_rate": 1e-3, "logging_steps": 1, "max_steps": 4, "save_strategy": "steps",
                "save_steps": 1, "overwrite_output_dir": False, "plot_loss": False}
    return lf_config("prism_align", tiny_dir, out, **{**settings, **overrides})


def train(config: dict, work: Path, expect: int = 0, **env: str) -> str:
    """One ``llamafactory-cli train`` in ``work``; asserts its exit code and returns its output."""
    proc = llamafactory_train(config, work, **env)
    log = proc.stdout + proc.stderr
    (work / f"run{len(list(work.glob('run*.log')))}.log").write_text(log)
    assert proc.returncode == expect, failure_excerpt(log)
    return log


def max_difference(a: Path, b: Path) -> float:
    """Largest |Δ| between two safetensors files' tensors (same keys required)."""
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    return max(float((left[k].double() - right[k].double()).abs().max()) for k in left)


def assert_same_run(out: Path, reference: Path, discriminator: bool = True) -> None:
    """Final policy (and discriminator) of ``out`` equal ``reference``'s to 1e-6 (bitwise is what CPU gives)."""
    assert max_difference(out / "model.safetensors", reference / "model.safetensors") <= 1e-6
    if discriminator:
        assert max_difference(out / "discriminator" / "model.safetensors",
                              reference / "discriminator" / "model.safetensors") <= 1e-6
    assert (out / "prism_run_complete.json").is_file()


def resume_copy(straight: Path, step: int, target: Path) -> Path:
    """A fresh output folder holding only ``straight``'s ``checkpoint-<step>``."""
    target.mkdir(parents=True)
    shutil.copytree(straight / f"checkpoint-{step}", target / f"checkpoint-{step}")
    return target


def step_logs(out: Path) -> list[dict]:
    return [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "policy/skipped" in e]


@pytest.fixture(scope="module")
def bf16_discriminator(tiny_discriminator_dir: Path, tmp_path_factory) -> Path:
    from tests.test_discriminator_training import bf16_copy

    return bf16_copy(tiny_discriminator_dir, tmp_path_factory.mktemp("bf16") / "discriminator")


@pytest.fixture(scope="module")
def straight_epochs2(tiny_dir, tiny_sft_run, tiny_discriminator_dir, tmp_path_factory) -> tuple[dict, Path]:
    """Uninterrupted: 4 steps, each window of rollouts trained on twice (``prism_policy_epochs: 2``)."""
    work = tmp_path_factory.mktemp("straight2")
    config = align_config(tiny_dir, work / "out", tiny_sft_run[0], tiny_discriminator_dir, prism_policy_epochs=2)
    train(config, work)
    return config, work / "out"


@pytest.fixture(scope="module")
def straight_epochs1_bf16(tiny_dir, tiny_sft_run, bf16_discriminator, tmp_path_factory) -> tuple[dict, Path]:
    """Uninterrupted: one policy epoch per window, a discriminator loaded from bf16 (float32 master weights)."""
    work = tmp_path_factory.mktemp("straight1")
    config = align_config(tiny_dir, work / "out", tiny_sft_run[0], bf16_discriminator, prism_policy_epochs=1)
    train(config, work)
    return config, work / "out"


@pytest.mark.parametrize("case", ["epochs2_mid_window", "epochs1_bf16_discriminator"])
def test_a_resumed_run_ends_with_the_weights_of_the_uninterrupted_one(case, request, tmp_path):
    """Resumed from a checkpoint in the middle of a reused rollout window (the window, its old log-probs and the
    sampling stream come from the checkpoint), and with a bf16 discriminator whose float32 master weights do."""
    fixture, step = {"epochs2_mid_window": ("straight_epochs2", 1),
                     "epochs1_bf16_discriminator": ("straight_epochs1_bf16", 2)}[case]
    config, straight = request.getfixturevalue(fixture)
    out = resume_copy(straight, step, tmp_path / "out")
    log = train({**config, "output_dir": str(out)}, tmp_path)
    assert f"Resuming training from {out / f'checkpoint-{step}'}" in log
    assert_same_run(out, straight)
    assert [s["step"] for s in step_logs(out)] == [1, 2, 3, 4]
    if case == "epochs1_bf16_discriminator":
        state = torch.load(out / f"checkpoint-{step}" / "discriminator" / "prism_disc_state.pt", weights_only=False)
        assert {v.dtype for v in state["master_weights"].values() if v.is_floating_point()} == {torch.float32}
        saved = load_file(str(out / "discriminator" / "model.safetensors"))
        assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.bfloat16}


def test_kills_at_any_moment_are_survived_by_running_the_same_command_again(straight_epochs2, tmp_path):
    """SIGKILL in the middle of a checkpoint's save, after a checkpoint was written but before it was put in
    place, and in the middle of a step; each time the same command again resumes from the last complete
    checkpoint, and the run ends with the uninterrupted run's weights."""
    config, straight = straight_epochs2
    out = tmp_path / "out"
    config = {**config, "output_dir": str(out)}

    train(config, tmp_path, SIGKILLED, PRISM_KILL_AT="save:discriminator@2")  # mid-save: policy written
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert (out / ".prism-staging" / "checkpoint-2" / "model.safetensors").is_file()  # the torn save, ignored

    log = train(config, tmp_path, SIGKILLED, PRISM_KILL_AT="save:staged@3")  # all written, not in place
    assert f"Resuming training from {out / 'checkpoint-1'}" in log
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    log = train(config, tmp_path, SIGKILLED, PRISM_KILL_AT="step@4")  # mid-step
    assert f"Resuming training from {out / 'checkpoint-2'}" in log
    assert (out / "checkpoint-3" / "prism_checkpoint.json").is_file()
    assert not (out / "prism_run_complete.json").exists()

    log = train(config, tmp_path)
    assert f"Resuming training from {out / 'checkpoint-3'}" in log
    assert_same_run(out, straight)
    assert not (out / ".prism-staging").exists()


def test_an_older_torn_checkpoint_is_skipped_and_an_explicit_one_refused(straight_epochs2, tmp_path):
    """A checkpoint without a completion marker (an older version's, or a stock stage's) is judged by its
    content: a torn discriminator config makes it skipped with one warning, and named explicitly it is one
    clear error line."""
    config, straight = straight_epochs2
    out = resume_copy(straight, 1, tmp_path / "out")
    torn = out / "checkpoint-2"
    shutil.copytree(straight / "checkpoint-2", torn)
    (torn / "prism_checkpoint.json").unlink()
    config_file = torn / "discriminator" / "config.json"
    config_file.write_text(config_file.read_text()[:40])

    log = train({**config, "output_dir": str(out), "resume_from_checkpoint": str(torn)}, tmp_path, 1)
    assert f"prism-plugin: error: resume_from_checkpoint: {torn} is incomplete (discriminator/config.json is not " \
           "valid JSON)" in log
    assert "Traceback" not in log

    log = train({**config, "output_dir": str(out)}, tmp_path)
    assert f"skipping the incomplete checkpoint {torn}: discriminator/config.json is not valid JSON" in log
    assert f"Resuming training from {out / 'checkpoint-1'}" in log
    assert_same_run(out, straight)


def test_sigterm_saves_after_the_step_then_the_same_command_resumes(straight_epochs2, tmp_path):
    """SIGTERM during step 2 (no checkpoints configured): the run finishes the step, saves checkpoint-2, exits 143
    with one line saying where it resumes; the same command again ends as the uninterrupted run."""
    config, straight = straight_epochs2
    out = tmp_path / "out"
    config = {**config, "output_dir": str(out), "save_strategy": "no"}
    log = train(config, tmp_path, 143, PRISM_TERM_AT="step@2")
    assert f"stopped by SIGTERM after step 2; checkpoint {out}/checkpoint-2 is saved" in log
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (out / "checkpoint-2" / "prism_checkpoint.json").is_file()
    assert not (out / "prism_run_complete.json").exists()
    train(config, tmp_path)
    assert_same_run(out, straight)


def test_resuming_with_a_changed_step_setting_is_one_clear_line(straight_epochs2, tmp_path):
    config, straight = straight_epochs2
    out = resume_copy(straight, 2, tmp_path / "out")
    log = train({**config, "output_dir": str(out), "prism_num_generations": 2}, tmp_path, 1)
    assert f"prism-plugin: error: cannot resume {out / 'checkpoint-2'} exactly: prism_num_generations: 4 -> 2" \
        in log
    assert "Traceback" not in log


def test_dynamic_sampling_refills_resume_exactly(tiny_dir, tiny_sft_run, tmp_path):
    """DAPO's refill stream and sampling rounds continue from the checkpoint: resumed after step 2, the run
    (which refills after step 2) ends with the uninterrupted run's weights."""
    rlvr = {"model_name_or_path": str(tiny_sft_run[0]), "prism_num_generations": 2, "prism_max_new_tokens": 40,
            "prism_overlong_buffer": 0, "logging_steps": 1, "max_steps": 4, "save_strategy": "steps",
            "save_steps": 2, "overwrite_output_dir": False, "plot_loss": False}
    straight = tmp_path / "straight"
    config = lf_config("prism_rlvr", tiny_dir, straight, **rlvr)
    train(config, tmp_path / "s")
    assert any(s["dapo/sampling_rounds"] > 0 for s in step_logs(straight)[2:]), "no refill after the checkpoint"
    out = resume_copy(straight, 2, tmp_path / "out")
    train({**config, "output_dir": str(out)}, tmp_path / "r")
    assert_same_run(out, straight, discriminator=False)


def test_two_ranks_sample_apart_within_a_group(tiny_dir, tiny_sft_run, tmp_path):
    """``prism_groups_across_ranks`` on 2 real ranks with the HF engine: a prompt's 4 rollouts, 2 per rank, are
    sampled from each rank's own stream, so the ranks' rollouts of the same prompt differ."""
    (tmp_path / "record.py").write_text(
        "import json, os\n"
        "def record(rollouts, teacher, ground_truths):\n"
        "    with open(os.path.join(os.environ['RECORD_DIR'], f\"rank{os.environ['RANK']}.jsonl\"), 'a') as f:\n"
        "        f.write(json.dumps(list(zip(rollouts['caption'], rollouts['reasoning']))) + '\\n')\n"
        "    return {s: [0.0] * len(rollouts[s]) for s in ('caption', 'reasoning')}\n")
    config = lf_config("prism_align", tiny_dir, tmp_path / "out", model_name_or_path=str(tiny_sft_run[0]),
                       prism_discriminator=None, prism_reward=f"{tmp_path / 'record.py'}:record",
                       prism_groups_across_ranks=True, prism_max_new_tokens=96, per_device_train_batch_size=2,
                       max_steps=3, logging_steps=1, plot_loss=False)
    train(config, tmp_path, **TWO_RANKS, RECORD_DIR=str(tmp_path))
    # each rank's layout-valid rollouts of the run (the scorer sees only those); ranks sampling alike, as every
    # rank did when all drew from the one global seed, would score the same texts
    ranks = [sorted(tuple(r) for line in (tmp_path / f"rank{k}.jsonl").read_text().splitlines()
                    for r in json.loads(line)) for k in (0, 1)]
    assert ranks[0] and ranks[1], "no layout-valid rollout to compare"
    assert ranks[0] != ranks[1]


def test_two_ranks_resume_exactly_with_a_sharded_discriminator_optimiser(tiny_dir, tiny_sft_run,
                                                                         tiny_discriminator_dir, tmp_path):
    """2 ranks, a prompt's rollouts spread over them, the discriminator's AdamW state sharded (ZeRO): resumed
    after step 1, the run ends with the uninterrupted run's weights."""
    straight = tmp_path / "straight"
    config = align_config(tiny_dir, straight, tiny_sft_run[0], tiny_discriminator_dir, prism_groups_across_ranks=True,
                          per_device_train_batch_size=2, prism_policy_epochs=1, max_steps=3)
    train(config, tmp_path / "s", **TWO_RANKS)
    assert "world size: 2" in (tmp_path / "s" / "run0.log").read_text()
    assert {p.name for p in (straight / "checkpoint-1").glob("prism_align_state_*.pt")} == {
        "prism_align_state_0.pt", "prism_align_state_1.pt"}
    out = resume_copy(straight, 1, tmp_path / "out")
    train({**config, "output_dir": str(out)}, tmp_path / "r", **TWO_RANKS)
    assert_same_run(out, straight)


def test_the_warm_up_survives_kills_and_resumes_exactly(tiny_dir, bf16_discriminator, tmp_path):
    """Stage prism_disc on a bf16 discriminator: killed mid-save and mid-step, the same command again each time
    ends with the uninterrupted run's weights (its float32 master weights travel in the checkpoints)."""
    warmup = {"model_name_or_path": str(bf16_discriminator), "val_size": None, "do_eval": None,
              "eval_strategy": None, "per_device_eval_batch_size": None, "num_train_epochs": None, "max_steps": 4,
              "gradient_accumulation_steps": 1, "logging_steps": 1, "save_strategy": "steps", "save_steps": 1,
              "overwrite_output_dir": False, "plot_loss": False}
    straight = tmp_path / "straight"
    config = lf_config("prism_disc", tiny_dir, straight, **warmup)
    train(config, tmp_path / "s")
    assert (straight / "checkpoint-2" / "prism_master_weights.pt").is_file()
    out = tmp_path / "out"
    config = {**config, "output_dir": str(out)}
    train(config, tmp_path / "k", SIGKILLED, PRISM_KILL_AT="save:model@2")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    train(config, tmp_path / "k", SIGKILLED, PRISM_KILL_AT="step@4")
    log = train(config, tmp_path / "k")
    assert f"Resuming training from {out / 'checkpoint-3'}" in log
    assert max_difference(out / "model.safetensors", straight / "model.safetensors") <= 1e-6
    assert (out / "prism_run_complete.json").is_file()
