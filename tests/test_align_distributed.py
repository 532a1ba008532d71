"""The discriminator step of prism_align across two real gloo processes when a rank has no valid rollout.

Every rank must join the same collectives (the valid-rollout count, then each gradient), or the ranks
deadlock; the step happens on every rank as soon as one rank has a valid rollout, with the same result.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

G = 3  # rollouts per prompt
RANK0_VALID = [True, False, True, True, True, False]
DEADLINE_S = 90


def _trainer_and_batch(tiny_dir: Path, disc_dir: Path):
    """A PrismAlignTrainer holding only what ``_update_discriminator`` reads, and a batch of 2 prompts × G."""
    from transformers import AutoModel

    import prism_plugin.discriminator  # noqa: F401
    from prism_plugin.data.records import load_pairs
    from prism_plugin.discriminator.texts import TextScorer
    from prism_plugin.llamafactory.align_data import AlignItem
    from prism_plugin.llamafactory.align_trainer import AlignSettings, PrismAlignTrainer
    from prism_plugin.llamafactory.pairs import PairEncoder

    torch.manual_seed(0)
    disc = AutoModel.from_pretrained(disc_dir)
    encoder = PairEncoder(TextScorer(disc), ["caption", "reasoning"], cutoff_len=1024)
    records = load_pairs(tiny_dir / "data" / "pairs.jsonl").records[:2]
    items, students = [], []
    for k, record in enumerate(records):
        feat = encoder.encode(record, "pairs.jsonl")
        items.append(AlignItem([], {}, feat.prompt, feat.teacher, None, record.row, "pairs.jsonl"))
        other = encoder.segment_ids(records[1 - k].student, "student")
        students += [feat.student, other, feat.student]
    trainer = object.__new__(PrismAlignTrainer)
    trainer.settings = AlignSettings(segment_weights={"caption": 0.5, "reasoning": 0.5}, num_generations=G)
    trainer.segments, trainer.discriminator = ["caption", "reasoning"], disc
    trainer.disc_tokenizer = encoder.scorer.tokenizer
    trainer.disc_optimizer = torch.optim.AdamW([p for p in disc.parameters() if p.requires_grad], lr=1e-3)
    trainer.nonfinite_skips = {"scores": 0, "disc_loss": 0, "policy_loss": 0}
    trainer.accelerator = SimpleNamespace(device=torch.device("cpu"))
    return trainer, items, students


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _worker(rank: int, world: int, init_file: str, tiny_dir: str, disc_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                         timeout=timedelta(seconds=DEADLINE_S))
    try:
        trainer, items, students = _trainer_and_batch(Path(tiny_dir), Path(disc_dir))
        result = {"before": _params(trainer.discriminator)}
        # one valid rollout set on rank 0 only; rank 1's rollouts are all invalid (no segments)
        valid = torch.tensor(RANK0_VALID if rank == 0 else [False] * len(students))
        mine = [s if v else {} for s, v in zip(students, valid.tolist(), strict=True)]
        result["one_valid"] = trainer._update_discriminator(items, mine, valid)
        result["after_one_valid"] = _params(trainer.discriminator)
        # no valid rollout on any rank
        none = torch.zeros(len(students), dtype=torch.bool)
        result["none_valid"] = trainer._update_discriminator(items, [{}] * len(students), none)
        result["after_none_valid"] = _params(trainer.discriminator)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tiny_dir, tiny_discriminator_dir, tmp_path_factory) -> tuple[list[dict], float]:
    """Both ranks' metrics and discriminator parameters, and the wall time of the two-process run."""
    import torch.multiprocessing as mp

    work = tmp_path_factory.mktemp("gloo")
    start = time.monotonic()
    context = mp.start_processes(_worker, args=(2, str(work / "rendezvous"), str(tiny_dir), str(tiny_discriminator_dir),
                                                str(work)), nprocs=2, join=False, start_method="spawn")
    try:
        while not context.join(timeout=max(1.0, DEADLINE_S - (time.monotonic() - start))):
            if time.monotonic() - start > DEADLINE_S:
                pytest.fail(f"the two ranks did not finish within {DEADLINE_S} s (deadlock?)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    elapsed = time.monotonic() - start
    return [torch.load(work / f"rank{r}.pt", weights_only=False) for r in range(2)], elapsed


def test_a_rank_without_valid_rollouts_joins_the_step(two_rank_results, tiny_dir, tiny_discriminator_dir):
    (rank0, rank1), elapsed = two_rank_results
    assert elapsed < DEADLINE_S
    assert rank0["one_valid"]["disc/skipped"] == 0.0
    assert rank1["one_valid"]["disc/skipped"] == 0.0  # the step happened globally, not only where there was data
    assert "disc/loss" in rank0["one_valid"] and "disc/loss" not in rank1["one_valid"]
    assert rank0["one_valid"]["disc/grad_norm"] == pytest.approx(rank1["one_valid"]["disc/grad_norm"])
    for before0, before1 in zip(rank0["before"], rank1["before"], strict=True):
        assert torch.equal(before0, before1)
    after0, after1 = rank0["after_one_valid"], rank1["after_one_valid"]
    assert all(torch.equal(a, b) for a, b in zip(after0, after1, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(rank0["before"], after0, strict=True))
    assert all(torch.isfinite(p).all() for p in after0)

    # rank 1 contributes nothing: the step equals a single process's step on rank 0's rollouts
    trainer, items, students = _trainer_and_batch(tiny_dir, tiny_discriminator_dir)
    valid = torch.tensor(RANK0_VALID)
    trainer._update_discriminator(items, [s if v else {} for s, v in zip(students, RANK0_VALID, strict=True)], valid)
    for single, both in zip(_params(trainer.discriminator), after0, strict=True):
        torch.testing.assert_close(both, single, rtol=1e-5, atol=1e-6)


def test_no_rank_with_valid_rollouts_skips_the_step(two_rank_results):
    (rank0, rank1), _ = two_rank_results
    assert rank0["none_valid"] == {"disc/skipped": 1.0}
    assert rank1["none_valid"] == {"disc/skipped": 1.0}
    for rank in (rank0, rank1):
        assert all(torch.equal(a, b) for a, b in zip(rank["after_one_valid"], rank["after_none_valid"], strict=True))
