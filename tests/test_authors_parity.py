"""Our advantage and discriminator loss against the PRISM authors' own functions.

Always: against ``tests/data/authors_core_reference.json``, values their functions produced (their
``compute_grpo_multi_reward_advantage`` and the ``use_mm_gad`` branch of ``update_critic``, commit 6079044).
With ``PRISM_AUTHORS_SRC`` (a checkout of github XIAO4579/PRISM) and ``PRISM_AUTHORS_PYTHON`` (an interpreter
that imports their bundled verl: torch, numpy, tensordict, ray, omegaconf, codetiming and a transformers 4.x —
their ``verl/utils/model.py`` does not import under transformers 5), their functions also run live, in a
subprocess (their package is named ``verl`` like EasyR1's), on fresh random cases; skipped cleanly otherwise.

Deliberately not replicated (see the README's method notes): their per-micro-batch averaging under dynamic
batch sizes and their float32 summation order.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
import torch

from prism_plugin.advantage import segment_advantage
from prism_plugin.discriminator.loss import discriminator_loss
from tests.testing_utils import REPO

REFERENCE = json.loads((REPO / "tests" / "data" / "authors_core_reference.json").read_text())
SCORES = ("student_caption", "student_cot", "teacher_caption", "teacher_cot")


def our_loss(inputs: dict, clip: float = 10.0, reg: float = 0.001) -> tuple[float, dict[str, list[float]]]:
    """Our discriminator loss (defaults: the authors' behaviour) and its gradients w.r.t. the four scores."""
    leaves = {k: torch.tensor(inputs[k], dtype=torch.float64, requires_grad=True) for k in SCORES}
    loss, _ = discriminator_loss({"caption": leaves["teacher_caption"], "reasoning": leaves["teacher_cot"]},
                                 {"caption": leaves["student_caption"], "reasoning": leaves["student_cot"]},
                                 torch.tensor(inputs["valid"]), reg, clip=clip)
    loss.backward()
    return loss.item(), {k: v.grad.tolist() for k, v in leaves.items()}


def our_advantage(inputs: dict) -> list[float]:
    groups = {uid: k for k, uid in enumerate(dict.fromkeys(inputs["uid"]))}
    return segment_advantage(
        {"caption": torch.tensor(inputs["caption_scores"]), "reasoning": torch.tensor(inputs["cot_scores"])},
        {"caption": 0.5, "reasoning": 0.5}, torch.tensor(inputs["format_scores"]).bool(),
        [groups[u] for u in inputs["uid"]], format_penalty=1.5).tolist()


@pytest.mark.parametrize("case", REFERENCE["loss_cases"], ids=lambda c: c["name"])
def test_discriminator_loss_equals_the_authors(case):
    loss, grads = our_loss(case["inputs"])
    assert loss == pytest.approx(case["loss"], abs=1e-9)
    for name in SCORES:
        assert grads[name] == pytest.approx(case["grad"][name], abs=1e-9), name


@pytest.mark.parametrize("case", REFERENCE["advantage_cases"], ids=lambda c: c["name"])
def test_advantage_equals_the_authors(case):
    assert our_advantage(case["inputs"]) == pytest.approx(case["advantages"], abs=1e-5)


# ---------------------------------------------------------------------- live, against their checkout


def authors_interpreter() -> tuple[str, str]:
    src, python = os.environ.get("PRISM_AUTHORS_SRC"), os.environ.get("PRISM_AUTHORS_PYTHON")
    if not src:
        pytest.skip("PRISM_AUTHORS_SRC is not set (a checkout of github XIAO4579/PRISM)")
    if not (Path(src) / "verl" / "verl" / "workers" / "critic" / "dp_critic.py").is_file():
        pytest.fail(f"PRISM_AUTHORS_SRC={src} has no verl/verl/workers/critic/dp_critic.py")
    if not python:
        pytest.skip("PRISM_AUTHORS_PYTHON is not set (an interpreter with torch, tensordict, ray, omegaconf, "
                    "codetiming and transformers 4.x, which their verl needs)")
    return src, python


def random_cases(seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    loss_cases, advantage_cases = [], []
    for k in range(3):
        rows = rng.randint(2, 8)
        case = {k2: [round(rng.uniform(-14, 14), 3) for _ in range(rows)] for k2 in SCORES}
        case["valid"] = [rng.random() < 0.6 for _ in range(rows)]
        loss_cases.append({"name": f"live{k}", **case, "score_clip": 10.0, "score_reg_coef": 0.001})
        sizes = [rng.randint(1, 5) for _ in range(rng.randint(2, 4))]
        uid = [f"g{g}" for g, size in enumerate(sizes) for _ in range(size)]
        advantage_cases.append({"name": f"live{k}", "uid": uid,
                                "caption_scores": [round(rng.uniform(-5, 5), 3) for _ in uid],
                                "cot_scores": [round(rng.uniform(-5, 5), 3) for _ in uid],
                                "format_scores": [int(rng.random() < 0.6) for _ in uid],
                                "caption_weight": 0.5, "cot_weight": 0.5, "format_penalty": 1.5})
    return loss_cases, advantage_cases


def test_live_parity_with_the_authors_checkout():
    src, python = authors_interpreter()
    loss_cases, advantage_cases = random_cases(seed=7)
    proc = subprocess.run([python, str(REPO / "tests" / "authors_harness.py")],
                          input=json.dumps({"loss_cases": loss_cases, "advantage_cases": advantage_cases}),
                          env={**os.environ, "PRISM_AUTHORS_SRC": src}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    for case, theirs in zip(loss_cases, result["loss_cases"], strict=True):
        loss, grads = our_loss(case)
        assert loss == pytest.approx(theirs["d_loss"], abs=1e-6), case["name"]
        for name in SCORES:
            assert grads[name] == pytest.approx(theirs["grad"][name], abs=1e-6), (case["name"], name)
    for case, theirs in zip(advantage_cases, result["advantage_cases"], strict=True):
        assert our_advantage(case) == pytest.approx(theirs["advantages"], abs=1e-5), case["name"]
