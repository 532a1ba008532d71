"""The alignment step across two real gloo processes: the same result as one process where the method says so,
and every rank in the same collectives where one rank's batch differs (no valid rollout, a non-finite score).
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.llamafactory

DEADLINE_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(worker, world: int, *args) -> float:
    """Run ``worker(rank, world, *args)`` in ``world`` fresh processes; fail on a rank error or a hang."""
    import torch.multiprocessing as mp

    start = time.monotonic()
    context = mp.start_processes(worker, args=(world, *args), nprocs=world, join=False, start_method="spawn")
    try:
        while not context.join(timeout=5.0):
            if time.monotonic() - start > DEADLINE_S:
                pytest.fail(f"{world} ranks did not finish within {DEADLINE_S} s (deadlock?)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return time.monotonic() - start


# ---------------------------------------------------------------------- the discriminator update


def scorer_and_batch(tiny_dir: Path, disc_dir: Path, **keys):
    """The tiny discriminator's scorer and a batch of 2 prompts × G = 3 (as in test_prism_align)."""
    from transformers import AutoTokenizer

    from prism_plugin.rollout import end_of_turn_id
    from tests.test_prism_align import scorer_case

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "tokenizer")
    assert end_of_turn_id(tokenizer) is not None
    return scorer_case(tiny_dir, disc_dir, tokenizer, **keys), tokenizer


def _disc_worker(rank: int, world: int, init_file: str, tiny_dir: str, disc_dir: str, out_dir: str, keys: dict):
    from tests.testing_utils import rollout_batch

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                         timeout=timedelta(seconds=DEADLINE_S))
    try:
        (scorer, batch), tokenizer = scorer_and_batch(Path(tiny_dir), Path(disc_dir), **keys)
        before = [p.detach().clone() for p in scorer.model.parameters()]
        if rank == 1:  # rank 1's rollouts are all outside the layout
            batch = rollout_batch(tokenizer, ["<caption> red 1 </caption> five"] * 6, batch.prompts, 3)
        metrics = scorer.update(batch, scorer.score(batch))
        local = scorer.updater.optimizer.optimizer.optim  # this rank's shard of AdamW
        state_bytes = sum(t.numel() * t.element_size() for s in local.state.values() for t in s.values()
                          if torch.is_tensor(t) and t.dim() > 0)
        torch.save({"before": before, "after": [p.detach().clone() for p in scorer.model.parameters()],
                    "metrics": metrics, "state_bytes": state_bytes}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module", params=[{}, {"prism_no_valid_pair": "skip", "prism_score_reg_rows": "valid"}],
                ids=["authors", "skip"])
def two_rank_disc(request, tiny_dir, tiny_discriminator_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("gloo")
    spawn(_disc_worker, 2, str(work / "rendezvous"), str(tiny_dir), str(tiny_discriminator_dir), str(work),
          request.param)
    return request.param, [torch.load(work / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_a_rank_without_valid_rollouts_joins_the_discriminator_step(two_rank_disc, tiny_dir, tiny_discriminator_dir):
    """Each rank's loss is its own (the authors' teacher term where it has no valid pair, or nothing with
    ``skip``), gradients are averaged over ranks, and every rank ends with the same discriminator."""
    from tests.testing_utils import rollout_batch

    keys, (rank0, rank1) = two_rank_disc
    assert rank0["metrics"]["disc/skipped"] == rank1["metrics"]["disc/skipped"] == 0.0
    assert "disc/caption/accuracy" in rank0["metrics"] and "disc/caption/accuracy" not in rank1["metrics"]
    assert rank0["metrics"]["disc/grad_norm"] == pytest.approx(rank1["metrics"]["disc/grad_norm"])
    assert all(torch.equal(a, b) for a, b in zip(rank0["after"], rank1["after"], strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(rank0["before"], rank0["after"], strict=True))

    # the same step in one process: the two ranks' losses averaged
    (scorer, batch), tokenizer = scorer_and_batch(tiny_dir, tiny_discriminator_dir, **keys)
    invalid = rollout_batch(tokenizer, ["<caption> red 1 </caption> five"] * 6, batch.prompts, 3)
    updater = scorer.updater
    losses = []
    for part in (batch, invalid):
        scorer.score(part)
        pending = scorer.pending_update(part)
        from prism_plugin.discriminator.loss import discriminator_loss

        rows = pending.rows
        if rows:
            teacher = {n: pending.scores[[pending.teacher_slot[(int(part.group_index[i]), n)] for i, _, _ in rows]]
                       for n in scorer.segments}
            student = {n: pending.scores[[slots[n] for _, _, slots in rows]] for n in scorer.segments}
            valid = torch.tensor([v for _, v, _ in rows])
        else:
            teacher = {n: pending.scores[[pending.teacher_slot[(k, n)] for k in range(2)]] for n in scorer.segments}
            student = {n: torch.zeros(2) for n in scorer.segments}
            valid = torch.zeros(2, dtype=torch.bool)
        loss, metrics = discriminator_loss(teacher, student, valid, 0.001, clip=10.0,
                                           reg_rows=updater.loss.reg_rows, no_valid_pair=updater.loss.no_valid_pair)
        if "loss" in metrics:
            losses.append(loss + 0.01 * pending.aux)
    assert len(losses) == (2 if not keys else 1)  # with skip, rank 1 has nothing to train on
    (sum(losses) / 2).backward()
    updater.optimizer.step(updater.optimization.max_grad_norm)
    for single, both in zip(scorer.model.parameters(), rank0["after"], strict=True):
        torch.testing.assert_close(both, single.detach(), rtol=1e-5, atol=1e-6)
    # the optimiser state is sharded: each rank holds about half of AdamW's two float32 moments
    full = 2 * sum(p.numel() * 4 for p in scorer.model.parameters() if p.requires_grad)
    assert rank0["state_bytes"] + rank1["state_bytes"] == full
    assert all(0.3 * full < rank["state_bytes"] < 0.7 * full for rank in (rank0, rank1))


# ---------------------------------------------------------------------- the policy update under DDP


GOOD = "<caption> red 3 blue 2 </caption>\n<think> red 3 + blue 2 = 5 </think>\n<answer> 5 </answer>"
LONG = ("<caption> red 3 blue 2 green 0 yellow 1 </caption>\n<think> red 3 + blue 2 = 5, and 5 is the sum of "
        "the two </think>\n<answer> 4 </answer>")
WRONG = "<caption> red 1 blue 2 </caption>\n<think> red 1 + blue 2 = 3 </think>\n<answer> 3 </answer>"


NAN_ONCE = '''import math
import os

calls = {"n": 0}


def nan_once_on_rank_one(rollouts, teachers, ground_truths):
    calls["n"] += 1
    bad = calls["n"] == 1 and os.environ["RANK"] == "1"
    return {"response": [math.nan if bad else float(len(r)) for r in rollouts["response"]]}
'''


def _policy_worker(rank: int, world: int, port: int, tiny_dir: str, out_dir: str, reward: str, per_device: int,
                   steps: int, generations: int = 2, across: bool = False, one_prompt: bool = False) -> None:
    """One rank of a real PrismAlignTrainer run (DDP on gloo when world > 1) that records, at every optimizer
    step, each parameter's gradient (None when the step trains nothing) and the logged metrics."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments

    from prism_plugin.arguments import PrismArguments
    from prism_plugin.layout import Segments
    from prism_plugin.llamafactory.align.trainer import PrismAlignTrainer
    from prism_plugin.policy import policy_prompt
    from prism_plugin.scorers import AlignPrompt, FileScorer, VerifiableScorer, load_score_function
    from tests.testing_utils import ReplayEngine

    torch.manual_seed(0)
    policy_dir = Path(tiny_dir) / "qwen3_policy"
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    prompts = [AlignPrompt(policy_prompt(tokenizer, False, q), Segments.from_response(GOOD), answer, k + 1, "test")
               for k, (q, answer) in enumerate([("How many red and blue?", "5"), ("How many in total?", "3")])]
    answers = {tuple(prompts[0].policy.input_ids): [GOOD, WRONG, LONG, GOOD],
               tuple(prompts[1].policy.input_ids): [LONG, WRONG, GOOD, WRONG]}
    if reward == "verifiable":
        scorer = VerifiableScorer()
    else:
        (Path(out_dir) / f"scorer{rank}.py").write_text(NAN_ONCE)
        scorer = FileScorer(load_score_function(str(Path(out_dir) / f"scorer{rank}.py"), "nan_once_on_rank_one"),
                            ["response"])
    records: list[dict] = []

    class Record(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            records.append({"grads": {n: None if p.grad is None else p.grad.detach().clone()
                                      for n, p in model.named_parameters()}})

        def on_log(self, args, state, control, logs=None, **kwargs):
            records.append({"logs": dict(logs)})

    args = TrainingArguments(output_dir=str(Path(out_dir) / f"run{rank}"), per_device_train_batch_size=per_device,
                             max_steps=steps, learning_rate=1e-3, max_grad_norm=0.0, logging_steps=1,
                             report_to="none", save_strategy="no", seed=0, ddp_backend="gloo" if world > 1 else None,
                             use_cpu=True, dataloader_drop_last=False, remove_unused_columns=False)
    prism = PrismArguments(prism_reward=reward if reward == "verifiable" else "scorer.py:f",
                           prism_segments=["response"], prism_segment_weights=[1.0],
                           prism_num_generations=generations, prism_max_new_tokens=64,
                           prism_groups_across_ranks=across)
    dataset = prompts[:1] if one_prompt else prompts * steps
    trainer = PrismAlignTrainer(model=model, args=args, train_dataset=dataset, data_collator=lambda b: b,
                                processing_class=tokenizer, callbacks=[Record()], prism_args=prism, scorer=scorer,
                                engine=ReplayEngine(tokenizer, answers, offset=rank * per_device if across else 0))
    trainer.train()
    torch.save(records, Path(out_dir) / f"rank{rank}.pt")


def run_policy(tmp_path: Path, tiny_dir: Path, world: int, reward: str = "verifiable", steps: int = 1,
               per_device: int | None = None, generations: int = 2, across: bool = False,
               one_prompt: bool = False) -> list:
    per_device = per_device or 2 // world
    spawn(_policy_worker, world, free_port(), str(tiny_dir), str(tmp_path), reward, per_device, steps, generations,
          across, one_prompt)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


def test_two_ranks_with_one_prompt_each_give_the_gradients_of_one_rank_with_both(tiny_dir, tmp_path):
    """The policy loss is the mean over the global count of completion tokens, not a mean of per-rank means:
    the two prompts' rollouts have different lengths, so a per-rank mean would weight them differently."""
    single = run_policy(tmp_path / "one", tiny_dir, 1)[0]
    ranks = run_policy(tmp_path / "two", tiny_dir, 2)
    grads = [next(r["grads"] for r in records if "grads" in r) for records in (single, *ranks)]
    assert all(g is not None for g in grads[0].values())
    compared = 0
    for name, expected in grads[0].items():
        for rank_grads in grads[1:]:
            torch.testing.assert_close(rank_grads[name], expected, rtol=1e-4, atol=1e-7)
            compared += 1
    assert compared == 2 * len(grads[0])
    logged = [next(r["logs"] for r in records if "logs" in r) for records in (single, *ranks)]
    assert logged[1]["loss"] == pytest.approx(logged[0]["loss"], rel=1e-4)
    # metrics gathered over ranks: every rank logs the statistics of all four rollouts
    assert logged[1]["response_length"] == logged[2]["response_length"] == pytest.approx(logged[0]["response_length"])


def test_a_non_finite_score_on_one_rank_skips_the_step_on_every_rank(tiny_dir, tmp_path):
    """Rank-agreed skip: the rank that sees a NaN score and the one that does not both join the same step with
    a zero loss, drop its gradients (the optimiser leaves the policy), and train normally on the next step."""
    ranks = run_policy(tmp_path, tiny_dir, 2, reward="file", steps=2)
    for records in ranks:
        steps = [r["grads"] for r in records if "grads" in r]
        logs = [r["logs"] for r in records if "logs" in r and "loss" in r["logs"]]
        assert len(steps) == 2 and len(logs) == 2
        assert all(g is None for g in steps[0].values())  # step 1: skipped everywhere
        assert all(g is not None and torch.isfinite(g).all() for g in steps[1].values())  # step 2: trains
        assert logs[0]["nonfinite_skips/scores"] == 1.0 and logs[0]["policy/skipped"] == 1.0
        assert logs[1]["policy/skipped"] == 0.0
    for name, grad in ranks[0][[i for i, r in enumerate(ranks[0]) if "grads" in r][1]]["grads"].items():
        other = ranks[1][[i for i, r in enumerate(ranks[1]) if "grads" in r][1]]["grads"][name]
        torch.testing.assert_close(grad, other)


def test_a_group_spread_over_two_ranks_trains_as_one_rank_with_the_whole_group(tiny_dir, tmp_path):
    """``prism_groups_across_ranks``: one prompt's G = 4 rollouts, two on each rank, normalised as one group
    (scores gathered), give the gradients of one process holding the whole group."""
    single = run_policy(tmp_path / "one", tiny_dir, 1, per_device=1, generations=4, one_prompt=True)[0]
    ranks = run_policy(tmp_path / "two", tiny_dir, 2, per_device=2, generations=4, across=True, one_prompt=True)
    grads = [next(r["grads"] for r in records if "grads" in r) for records in (single, *ranks)]
    for name, expected in grads[0].items():
        for rank_grads in grads[1:]:
            torch.testing.assert_close(rank_grads[name], expected, rtol=1e-4, atol=1e-7)
    logged = [next(r["logs"] for r in records if "logs" in r) for records in (single, *ranks)]
    assert logged[1]["advantage_mean"] == pytest.approx(logged[0]["advantage_mean"], abs=1e-6)
