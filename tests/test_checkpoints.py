"""The pieces of long-run trust without a training run: which checkpoints count as complete, the rank-specific
sampling stream, the resumable samplers, the resume checks and the fault points."""

from __future__ import annotations

import json
import random
import signal
import struct

import pytest
import torch
from safetensors.torch import save_file

from prism_plugin.llamafactory.checkpoints import (
    CHECKPOINT_MARKER,
    IncompleteCheckpointError,
    checkpoint_problem,
    last_complete_checkpoint,
    require_complete,
)
from prism_plugin.rng import SamplingStream

pytestmark = pytest.mark.transformers4


def make_checkpoint(folder, marker: bool = False):
    """A checkpoint folder as the Trainer writes one: config, weights, optimiser archive, trainer state last."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "x"}))
    save_file({"w": torch.arange(6.0)}, str(folder / "model.safetensors"))
    torch.save({"state": {}}, folder / "optimizer.pt")
    (folder / "discriminator").mkdir()
    (folder / "discriminator" / "config.json").write_text("{}")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    if marker:
        (folder / CHECKPOINT_MARKER).write_text(json.dumps({"global_step": 1}))
    return folder


def test_an_unmarked_checkpoint_is_judged_by_its_content(tmp_path):
    good = make_checkpoint(tmp_path / "checkpoint-1")
    assert checkpoint_problem(good) is None

    def torn(name, damage):
        folder = make_checkpoint(tmp_path / name)
        damage(folder)
        return checkpoint_problem(folder)

    assert torn("a", lambda f: (f / "trainer_state.json").unlink()) == "no trainer_state.json (the save did not finish)"
    assert torn("b", lambda f: (f / "discriminator" / "config.json").write_text('{"a": ')) == \
        "discriminator/config.json is not valid JSON"
    weights = tmp_path / "c" / "model.safetensors"
    size = make_checkpoint(tmp_path / "c") and weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size - 4])
    assert checkpoint_problem(tmp_path / "c") == f"model.safetensors is truncated ({size - 4} of {size} bytes)"
    assert torn("d", lambda f: (f / "model.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")) == \
        "model.safetensors is truncated (header of 1000000000 bytes in a 10-byte file)"
    archive = tmp_path / "e" / "optimizer.pt"
    make_checkpoint(tmp_path / "e")
    archive.write_bytes(archive.read_bytes()[:-30])
    assert checkpoint_problem(tmp_path / "e") == "optimizer.pt is truncated (its archive index does not read)"


def test_a_marked_checkpoint_is_complete_and_a_torn_marker_is_not(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoint-2", marker=True)
    (folder / "trainer_state.json").unlink()  # the marker is written last, after a barrier: it decides
    assert checkpoint_problem(folder) is None
    (folder / CHECKPOINT_MARKER).write_text("{")
    assert checkpoint_problem(folder) == f"{CHECKPOINT_MARKER} does not parse"


def test_the_last_complete_checkpoint_skips_newer_torn_ones_with_one_line_each(tmp_path):
    for step in (1, 2, 10):
        make_checkpoint(tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-10" / "trainer_state.json").unlink()
    (tmp_path / "checkpoint-3").mkdir()  # an empty folder left by a kill
    (tmp_path / ".prism-staging" / "checkpoint-11").mkdir(parents=True)  # a staged save is never a checkpoint
    lines = []
    assert last_complete_checkpoint(tmp_path, lines.append) == str(tmp_path / "checkpoint-2")
    assert lines == [
        f"prism-plugin: skipping the incomplete checkpoint {tmp_path / 'checkpoint-10'}: no trainer_state.json "
        "(the save did not finish)",
        f"prism-plugin: skipping the incomplete checkpoint {tmp_path / 'checkpoint-3'}: no trainer_state.json "
        "(the save did not finish)"]
    assert last_complete_checkpoint(tmp_path / "missing") is None
    with pytest.raises(IncompleteCheckpointError, match=r"checkpoint-10 is incomplete \(no trainer_state.json"):
        require_complete(tmp_path / "checkpoint-10")


def test_sampling_streams_differ_per_rank_resume_exactly_and_leave_the_global_generator_alone():
    def draws(stream, n=5):
        with stream.active():
            return torch.rand(n)

    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    rank0, rank1, again0 = SamplingStream(7, 0), SamplingStream(7, 1), SamplingStream(7, 0)
    first = draws(rank0)
    assert not torch.equal(first, draws(rank1))  # every rank starts from the same seed, yet samples apart
    assert torch.equal(first, draws(again0))  # ... reproducibly
    assert torch.equal(torch.random.get_rng_state(), before)  # sampling did not move the global stream
    saved = rank0.state_dict()
    expected = draws(rank0)
    resumed = SamplingStream(0, 5)
    resumed.load_state_dict(saved)
    assert torch.equal(draws(resumed), expected)
    assert resumed.next_seed() == rank0.next_seed()


def test_the_group_sampler_and_the_refill_stream_resume_where_they_were():
    from prism_plugin.llamafactory.align.trainer import GroupRepeatSampler, PromptStream

    sampler = GroupRepeatSampler(5, 2, seed=3)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    assert epochs[0] != epochs[1] and all(order[0::2] == order[1::2] for order in epochs)
    fresh = GroupRepeatSampler(5, 2, seed=3)
    fresh.set_epoch(2)  # a run resumed in its third epoch
    assert list(fresh) == epochs[2]

    stream = PromptStream(list(range(7)), seed=1)
    stream.take(4)
    saved = stream.state_dict()
    expected = stream.take(9)
    resumed = PromptStream(list(range(7)), seed=99)
    resumed.load_state_dict(saved)
    assert resumed.take(9) == expected
    random.seed(0)  # the stream never touched the global generator's state


def test_resume_settings_name_every_change():
    from prism_plugin.arguments import PrismArguments
    from prism_plugin.errors import ConfigError
    from prism_plugin.llamafactory.align.trainer import check_resume_settings, resume_settings

    class Training:
        per_device_train_batch_size, gradient_accumulation_steps, seed = 2, 1, 0

    saved = resume_settings(PrismArguments(prism_num_generations=4), Training)
    same = resume_settings(PrismArguments(prism_num_generations=4, prism_skip_invalid_rows=True,
                                          prism_discriminator="moved/disc"), Training)
    check_resume_settings("ckpt", {"settings": saved, "world_size": 8}, same, 8)  # data checks, paths may change
    changed = resume_settings(PrismArguments(prism_num_generations=8, prism_temperature=0.7), Training)
    with pytest.raises(ConfigError) as error:
        check_resume_settings("ckpt", {"settings": saved, "world_size": 8}, changed, 4)
    assert str(error.value).startswith("cannot resume ckpt exactly: ranks: 8 -> 4; prism_num_generations: 4 -> 8; "
                                       "prism_temperature: 1.0 -> 0.7. Resume with the checkpoint's settings")


def test_fault_points_match_by_name_and_step(monkeypatch):
    from prism_plugin import faults

    sent = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, signum: sent.append(signum))
    monkeypatch.setenv(faults.KILL_AT_ENV, "save:staged@3, step")
    monkeypatch.setenv(faults.TERM_AT_ENV, "save:model@2")
    faults.kill_point("save:staged", 2)
    faults.kill_point("save:model", 3)
    assert sent == []
    faults.kill_point("save:staged", 3)
    faults.kill_point("step", 1)
    faults.kill_point("save:model", 2)
    assert sent == [signal.SIGKILL, signal.SIGKILL, signal.SIGTERM]
