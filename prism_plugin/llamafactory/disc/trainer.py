"""``PrismDiscTrainer``: the discriminator warm-up (Stage 2a) on a transformers ``Trainer``.

Per pair and segment: ``−log σ(s_teacher − s_student)``, averaged over the comparisons, plus
``router_aux_coef ×`` the router load-balancing loss. Optimiser, scheduler, gradient
accumulation, DeepSpeed and logging are the Trainer's own; checkpoints are the Trainer's, staged and renamed
into place whole (:mod:`prism_plugin.llamafactory.checkpoints`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import Trainer

from prism_plugin.discriminator.loss import discriminator_loss
from prism_plugin.llamafactory.checkpoints import AtomicCheckpointMixin
from prism_plugin.llamafactory.metrics import MetricsLogMixin

MASTER_WEIGHTS_FILE = "prism_master_weights.pt"


class PrismDiscTrainer(AtomicCheckpointMixin, MetricsLogMixin, Trainer):
    """Pairwise Bradley–Terry trainer for :class:`PrismDiscriminator` on :class:`PairCollator` batches."""

    def __init__(self, *args: Any, segments: list[str], router_aux_coef: float = 0.01, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.segments = list(segments)
        self.router_aux_coef = router_aux_coef
        self.model_accepts_loss_kwargs = False  # the loss is a mean: let the Trainer scale it for accumulation
        self._init_metrics()

    def pair_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Warm-up loss of one batch and its metrics (accuracy and margins per segment, router aux)."""
        out = model(**inputs, output_router_logits=True)
        num_segments = len(self.segments)
        scores = out.scores.view(-1, num_segments, 2)  # (pairs, segments, teacher/student)
        teacher = {name: scores[:, j, 0] for j, name in enumerate(self.segments)}
        student = {name: scores[:, j, 1] for j, name in enumerate(self.segments)}
        valid = torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device)
        bt_sum, metrics = discriminator_loss(teacher, student, valid, score_reg_coef=0.0)
        loss = bt_sum / num_segments
        metrics = {k: v for k, v in metrics.items() if k not in ("loss", "score_reg", "num_pairs")}
        metrics["bt_loss"] = float(loss.detach())
        if out.aux_loss is not None:
            metrics["router_aux_loss"] = float(out.aux_loss.detach())
            loss = loss + self.router_aux_coef * out.aux_loss.to(loss.dtype)
        return loss, metrics

    def compute_loss(
        self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None
    ):
        loss, metrics = self.pair_loss(model, inputs)
        self.record_metrics("train" if model.training else "eval", metrics)
        return (loss, None) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save in the dtype the discriminator was loaded in (it trains with float32 master weights)."""
        from prism_plugin.discriminator.loading import save_discriminator

        output_dir = output_dir or self.args.output_dir
        save_discriminator(self.model, output_dir, self.processing_class, state_dict)
        torch.save(self.args, f"{output_dir}/training_args.bin")

    def save_resume_state(self, directory: str) -> None:
        """A discriminator saved in a lower precision than it trains in (bf16 weights, float32 master weights)
        keeps its float32 weights in the checkpoint too, so a resumed run continues from them exactly."""
        if self.args.should_save and not self.is_deepspeed_enabled and self._keeps_master_weights():
            state = {key: value.detach().cpu() for key, value in self.model.state_dict().items()}
            torch.save(state, os.path.join(directory, MASTER_WEIGHTS_FILE))

    def _keeps_master_weights(self) -> bool:
        dtype = getattr(self.model, "checkpoint_dtype", None)
        return dtype is not None and dtype != next(self.model.parameters()).dtype

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """The checkpoint's weights through the discriminator's own loader (its saved expert layout is not the
        in-memory one, so the Trainer's plain ``load_state_dict`` cannot read it), then its master weights."""
        from prism_plugin.discriminator.loading import load_discriminator

        path = os.path.join(resume_from_checkpoint, MASTER_WEIGHTS_FILE)
        if os.path.isfile(path):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            state = load_discriminator(resume_from_checkpoint, dtype=next(self.model.parameters()).dtype).state_dict()
        (model or self.model).load_state_dict(state)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
