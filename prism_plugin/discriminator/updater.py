"""The discriminator's training inside the alignment stage: its optimiser, one step per rollout batch.

:class:`DiscriminatorUpdater` owns the discriminator, its optimiser, the cross-rank reduction,
checkpointing and resume. What a step trains on is a
:class:`~prism_plugin.discriminator.loss.DiscriminatorLoss` (Bradley–Terry, the score regulariser, what a
rank with no valid pair contributes, the router load-balancing loss); how often and how far it steps, a
:class:`DiscriminatorOptimization`; how the optimiser state lives across ranks, its backend
(:mod:`prism_plugin.discriminator.optimizers`: one process, sharded across ranks, or a DeepSpeed engine).
Every rank joins the same collectives on every step, also when it has nothing of its own to train.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from prism_plugin.discriminator.loss import DiscriminatorLoss
from prism_plugin.discriminator.optimizers import LocalOptimizer, ShardedOptimizer
from prism_plugin.distributed import all_ranks_sum, is_distributed

STATE_FILE = "prism_disc_state.pt"


@dataclass(frozen=True)
class DiscriminatorOptimization:
    """How the discriminator steps: AdamW's learning rate and weight decay, the gradient clip, and every how
    many rollout batches it trains."""

    learning_rate: float
    weight_decay: float
    max_grad_norm: float
    update_every: int = 1

    @classmethod
    def from_args(cls, args: Any) -> DiscriminatorOptimization:
        """From the ``prism_disc_*`` keys (:class:`~prism_plugin.arguments.DiscriminatorArguments`)."""
        return cls(args.prism_disc_learning_rate, args.prism_disc_weight_decay, args.prism_disc_max_grad_norm,
                   args.prism_disc_update_every)


class DiscriminatorUpdater:
    """One discriminator optimiser step every ``optimization.update_every`` rollout batches, on ``loss``."""

    def __init__(self, model: torch.nn.Module, loss: DiscriminatorLoss, optimization: DiscriminatorOptimization, *,
                 device: torch.device | str = "cpu", deepspeed_config: dict | None = None) -> None:
        """The optimiser backend: a DeepSpeed engine with ``deepspeed_config``, else AdamW sharded across the
        ranks when the run is distributed, else plain AdamW."""
        self.model = model
        self.loss = loss
        self.optimization = optimization
        self.device = torch.device(device)
        lr, decay = optimization.learning_rate, optimization.weight_decay
        if deepspeed_config is not None:
            from prism_plugin.discriminator.optimizers import DeepSpeedOptimizer

            self.optimizer = DeepSpeedOptimizer(model, deepspeed_config, lr, decay)
        else:
            self.optimizer = (ShardedOptimizer if is_distributed() else LocalOptimizer)(model, lr, decay)
        self.batches = 0  # rollout batches seen
        self.nonfinite_skips = 0

    def due(self) -> bool:
        """Whether the current rollout batch is one the discriminator trains on."""
        return self.batches % self.optimization.update_every == 0

    def advance(self) -> None:
        """Count a rollout batch (called once per batch, trained on or not)."""
        self.batches += 1

    def update(self, teacher: Mapping[str, torch.Tensor], student: Mapping[str, torch.Tensor], valid: torch.Tensor,
               aux: torch.Tensor | None) -> dict[str, float]:
        """One step on this rank's rows (scores with gradients) of :attr:`loss`. Every rank calls it; the step
        is skipped on every rank when no rank has anything to train or a loss is not finite."""
        loss, out = self.loss(teacher, student, valid, aux)
        trains = loss.requires_grad and ("disc/loss" in out)
        finite = bool(torch.isfinite(loss.detach()))
        trainers, broken = all_ranks_sum([float(trains), float(not finite)], self.device)
        if broken:
            self.nonfinite_skips += 1
        if not trainers or broken:
            return {**out, "disc/skipped": 1.0, "disc/nonfinite_skips": float(self.nonfinite_skips)}
        if trains:
            self.optimizer.backward(loss)
        norm = self.optimizer.step(self.optimization.max_grad_norm)
        skipped = norm != norm  # NaN: a non-finite gradient norm (the same on every rank after the all-reduce)
        return {**out, "disc/skipped": float(skipped), "disc/grad_norm": norm,
                "disc/nonfinite_skips": float(self.nonfinite_skips)}

    # ----------------------------------------------------------------- checkpoints

    def save(self, directory: str | os.PathLike, processor: Any = None, main: bool = True) -> None:
        """Called on every rank (the optimiser state may be sharded); the main rank writes the discriminator (and
        its processor) in the dtype it was loaded in, the counters and — when that dtype is not the training one
        and the backend does not keep them — the master weights, so a resume is exact."""
        from prism_plugin.discriminator.loading import save_discriminator

        directory = str(directory)
        os.makedirs(directory, exist_ok=True)
        self.optimizer.save(directory, main)
        if not main:
            return
        save_discriminator(self.model, directory, processor)
        state = {"rollout_batches": self.batches, "nonfinite_skips": self.nonfinite_skips}
        if isinstance(self.optimizer, LocalOptimizer) and getattr(self.model, "checkpoint_dtype",
                                                                  torch.float32) != torch.float32:
            state["master_weights"] = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save(state, os.path.join(directory, STATE_FILE))

    def load_state(self, directory: str | os.PathLike) -> bool:
        """Restore the optimiser state, the counters (and master weights) saved by :meth:`save` on every rank;
        False when there are none."""
        path = os.path.join(directory, STATE_FILE)
        if not os.path.isfile(path):
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        if "master_weights" in state:
            self.model.load_state_dict(state["master_weights"])
        self.optimizer.load(str(directory))
        self.batches = state["rollout_batches"]
        self.nonfinite_skips = state["nonfinite_skips"]
        return True
