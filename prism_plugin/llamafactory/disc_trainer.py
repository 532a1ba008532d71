"""``PrismDiscTrainer``: the discriminator warm-up (Stage 2a) on a transformers ``Trainer``.

Per pair and segment: ``−log σ(s_teacher − s_student)``, averaged over the comparisons, plus
``router_aux_coef ×`` the router load-balancing loss. Optimiser, scheduler, gradient
accumulation, DeepSpeed, logging and checkpoints are the Trainer's own.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from prism_plugin.llamafactory.metrics import MetricsLogMixin
from prism_plugin.losses import discriminator_loss
from prism_plugin.portable import make_portable


class PrismDiscTrainer(MetricsLogMixin, Trainer):
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

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's save (checkpoints too), made readable by transformers 4.57 as well (:func:`make_portable`)."""
        super().save_model(output_dir, _internal_call)
        if self.is_world_process_zero():
            make_portable(output_dir or self.args.output_dir)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
