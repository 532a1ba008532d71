"""Where the discriminator's optimiser state lives across ranks: one backend per layout, one interface.

- :class:`LocalOptimizer` — one process: AdamW on the (float32 master) weights.
- :class:`ShardedOptimizer` — several ranks without DeepSpeed: gradients averaged by all-reduce, AdamW's state
  sharded across the ranks with torch's ``ZeroRedundancyOptimizer`` (each rank steps its shard of the
  parameters and broadcasts it), so the moments take 1/N of the memory on each rank.
- :class:`DeepSpeedOptimizer` — under ``deepspeed:``: a DeepSpeed engine of its own, built from the run's config
  (ZeRO stage 2 at least, 3 where the policy uses it): gradients, float32 master weights and moments sharded.

Every backend: ``backward(loss)``, ``step(max_grad_norm) -> grad norm`` (NaN when the step was skipped for a
non-finite norm), and a checkpoint (``save(directory, main)`` on every rank, ``load(directory)``) that resumes
exactly. Collectives run on every rank in the same order.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from prism_plugin.distributed import rank, world_size

OPTIMIZER_FILE = "optimizer.pt"


class LocalOptimizer:
    """AdamW on every trainable parameter of the model, in one process."""

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = self._build(lr, weight_decay)

    def _build(self, lr: float, weight_decay: float) -> Any:
        return torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _reduce(self) -> None:
        """Make every rank's gradients the same (nothing to do in one process)."""

    def step(self, max_grad_norm: float) -> float:
        for param in self.params:  # a parameter no score reached steps with a zero gradient, on every backend alike
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        self._reduce()
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_grad_norm)
        finite = bool(torch.isfinite(norm))
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm) if finite else float("nan")

    def state_dict(self) -> dict[str, Any]:
        """The whole optimiser state (gathered on the main rank where it is sharded)."""
        return self.optimizer.state_dict()

    def save(self, directory: str, main: bool) -> None:
        state = self.state_dict()
        if main:
            torch.save(state, os.path.join(directory, OPTIMIZER_FILE))

    def load(self, directory: str) -> bool:
        path = os.path.join(directory, OPTIMIZER_FILE)
        if not os.path.isfile(path):
            return False
        self.optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))
        return True


class ShardedOptimizer(LocalOptimizer):
    """Several ranks, no DeepSpeed: gradients averaged by all-reduce, AdamW's state sharded across the ranks."""

    def _build(self, lr: float, weight_decay: float) -> Any:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(self.params, optimizer_class=torch.optim.AdamW, lr=lr,
                                       weight_decay=weight_decay)

    def _reduce(self) -> None:
        world = world_size()
        for param in self.params:
            torch.distributed.all_reduce(param.grad)
            param.grad /= world

    def state_dict(self) -> dict[str, Any]:
        self.optimizer.consolidate_state_dict(to=0)  # a collective: every rank calls it
        return self.optimizer.state_dict() if rank() == 0 else {}


class DeepSpeedOptimizer:
    """A DeepSpeed engine of the discriminator's own (its module stays the model the scorer calls)."""

    def __init__(self, model: torch.nn.Module, config: dict[str, Any], lr: float, weight_decay: float) -> None:
        import deepspeed

        params = [p for p in model.parameters() if p.requires_grad]
        client = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=client, config=config)
        self.params = params

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self, max_grad_norm: float) -> float:
        """The engine clips (``gradient_clipping`` in its config) and steps; it skips a non-finite step."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        return norm if torch.isfinite(torch.tensor(norm)) else float("nan")

    def save(self, directory: str, main: bool) -> None:
        self.engine.save_checkpoint(os.path.join(directory, "deepspeed"), tag="discriminator")

    def load(self, directory: str) -> bool:
        path = os.path.join(directory, "deepspeed")
        if not os.path.isdir(path):
            return False
        self.engine.load_checkpoint(path, tag="discriminator", load_module_strict=True)
        return True


def deepspeed_config(base: dict[str, Any], hidden_size: int, max_grad_norm: float, world: int) -> dict[str, Any]:
    """The discriminator's DeepSpeed config from the run's (``base``, as the Trainer resolved it): the same
    precision and ZeRO stage (at least 2), one micro-batch per step, its own clip, no optimiser or scheduler
    section (AdamW is given), and the policy-sized ``auto`` buckets sized for the discriminator."""
    zero = dict(base.get("zero_optimization") or {})
    zero["stage"] = max(2, int(zero.get("stage", 0) or 0))
    sizes = {"reduce_bucket_size": hidden_size * hidden_size,
             "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
             "stage3_param_persistence_threshold": 10 * hidden_size}
    for key, value in sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value
    config = {key: value for key, value in base.items() if key in ("bf16", "fp16", "communication_data_type")}
    for precision in ("bf16", "fp16"):
        if isinstance(config.get(precision), dict) and config[precision].get("enabled") == "auto":
            config[precision] = {**config[precision], "enabled": False}
    config.update(zero_optimization=zero, train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1,
                  train_batch_size=world, gradient_clipping=max_grad_norm, steps_per_print=10**9,
                  zero_allow_untested_optimizer=True)
    return config
