"""Access to peer implementations (trl's GRPO loss, EasyR1's core_algos) for parity tests."""

from __future__ import annotations

import importlib
import importlib.util
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from prism_plugin.easyr1 import hook
from tests.easyr1_support import easyr1_root, import_easyr1


def easyr1_core_algos():
    """EasyR1's ``verl.trainer.core_algos`` from the checkout named by ``EASYR1_SRC``, else skip."""
    root = easyr1_root()
    if not (root / "verl" / "trainer" / "core_algos.py").is_file():
        pytest.fail(f"EASYR1_SRC={root} has no verl/trainer/core_algos.py")
    try:
        return import_easyr1(hook.CORE_ALGOS, root)
    except ImportError as exc:
        if "another 'verl'" not in str(exc):
            raise
        pytest.skip(f"{exc}; run EasyR1 parity in a separate process")


def fix_trl_import_flags() -> dict[str, bool]:
    """Make trl 0.24 importable under transformers 5: reset ``trl.import_utils._<pkg>_available`` to the
    package's real availability (transformers 5 turned them into always-truthy ``(bool, version)`` tuples,
    so ``trl.trainer.callbacks`` imports absent packages such as ``mergekit``). Returns the flags changed."""
    import_utils = importlib.import_module("trl.import_utils")
    changed: dict[str, bool] = {}
    for name in dir(import_utils):
        if not (name.startswith("_") and name.endswith("_available")) or name.startswith("__"):
            continue
        value = getattr(import_utils, name)
        if callable(value):
            continue
        available = importlib.util.find_spec(name[1 : -len("_available")]) is not None
        if value is not available:
            setattr(import_utils, name, available)
            changed[name] = available
    return changed


def trl_grpo_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    loss_type: str,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    importance_sampling_level: str = "token",
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """trl 0.24 ``GRPOTrainer._compute_loss`` run on given log-probs through a minimal trainer stand-in."""
    pytest.importorskip("trl", reason="trl is not installed (LLaMA-Factory brings it)")
    fix_trl_import_flags()
    from trl.trainer.grpo_trainer import GRPOTrainer

    batch, width = completion_mask.shape
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (per_token_logps, torch.zeros_like(per_token_logps)),
        top_entropy_quantile=1.0,
        beta=0.0,
        importance_sampling_level=importance_sampling_level,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        args=SimpleNamespace(delta=None),
        use_vllm=False,
        loss_type=loss_type,
        current_gradient_accumulation_steps=1,
        max_completion_length=max_completion_length or width,
        accelerator=SimpleNamespace(gather=lambda x: x.reshape(-1), num_processes=1),
        model=SimpleNamespace(training=True),
        _metrics={"train": defaultdict(list)},
    )
    inputs = {
        "prompt_ids": torch.zeros(batch, 1, dtype=torch.long),
        "prompt_mask": torch.ones(batch, 1, dtype=torch.long),
        "completion_ids": torch.zeros(batch, width, dtype=torch.long),
        "completion_mask": completion_mask,
        "advantages": advantages,
        "old_per_token_logps": old_per_token_logps,
        "num_items_in_batch": completion_mask.sum(),
    }
    return GRPOTrainer._compute_loss(trainer, None, inputs)
