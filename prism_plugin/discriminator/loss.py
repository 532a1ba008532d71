"""The discriminator's loss: Bradley–Terry (teacher ≻ student) per segment, a score regulariser, the router's
load-balancing term — and :class:`DiscriminatorLoss`, the settings that turn a batch's scores into it, shared by
the alignment step's update and ``align-preview``'s dry run of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def pairwise_wins(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Per pair, 1 where the teacher scores above the student, 0.5 on a tie (AUC convention), else 0."""
    return (teacher > student).float() + 0.5 * (teacher == student).float()


def discriminator_loss(
    teacher: Mapping[str, torch.Tensor],
    student: Mapping[str, torch.Tensor],
    valid: torch.Tensor,
    score_reg_coef: float = 0.001,
    *,
    clip: float | None = None,
    reg_rows: str = "all",
    no_valid_pair: str = "teacher",
    no_valid_coef: float = 0.01,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The discriminator's Bradley–Terry loss (teacher ≻ student) per segment, plus an L2 score regulariser.

    With every score first clamped to ``±clip`` (the authors' ``update_critic``: a score past the clip
    gets no gradient) and ``n = Σ v_i`` valid pairs::

        L = Σ_s Σ_i v_i·[−log σ(t_s,i − s_s,i)] / n  +  coef · mean(t², s² of every segment)

    ``reg_rows="all"`` takes the regulariser's mean over every row, invalid ones included (the authors';
    the caller scores an invalid rollout too), ``"valid"`` over the valid rows only. With no valid pair,
    ``no_valid_pair="teacher"`` gives ``no_valid_coef · Σ_s −log σ(mean_i t_s,i)`` + the regulariser (the
    authors': the teacher's scores still rise while the policy writes nothing valid); ``"skip"`` gives a
    graph-connected zero. ``num_pairs`` counts the valid pairs. Scores of rows the loss does not use may
    be anything (NaN included). ``accuracy`` counts a tie as one half (the AUC convention).
    """
    if set(teacher) != set(student):
        raise ValueError(f"teacher and student must name the same segments; got {sorted(teacher)}, {sorted(student)}")
    if reg_rows not in ("all", "valid") or no_valid_pair not in ("teacher", "skip"):
        raise ValueError(f"reg_rows must be all|valid and no_valid_pair teacher|skip; got {reg_rows!r}, "
                         f"{no_valid_pair!r}")
    valid = torch.as_tensor(valid).bool()
    n = int(valid.sum().item())
    used = torch.ones_like(valid) if reg_rows == "all" else valid
    teacher = {s: _clamped(teacher[s], clip, used) for s in teacher}
    student = {s: _clamped(student[s], clip, used) for s in student}
    connected_zero = sum((teacher[s].sum() + student[s].sum()) for s in teacher) * 0.0
    metrics: dict[str, float] = {"num_pairs": float(n)}
    main = connected_zero
    if n:
        correct = []
        for name in teacher:
            t, s = teacher[name][valid], student[name][valid]
            margin = t - s
            bt = -F.logsigmoid(margin).sum() / n
            main = main + bt
            won = pairwise_wins(t, s)
            correct.append(won)
            metrics[f"{name}/bt_loss"] = bt.item()
            metrics[f"{name}/accuracy"] = won.mean().item()
            metrics[f"{name}/teacher_score"] = t.mean().item()
            metrics[f"{name}/student_score"] = s.mean().item()
            metrics[f"{name}/score_gap"] = margin.mean().item()
        metrics["accuracy"] = torch.cat(correct).mean().item()
    elif no_valid_pair == "teacher" and valid.numel():
        for name in teacher:
            main = main + no_valid_coef * -F.logsigmoid(teacher[name].mean())
    elif no_valid_pair == "skip" or not valid.numel():
        return connected_zero, metrics
    squares = [x[used] ** 2 for name in teacher for x in (teacher[name], student[name])]
    regulariser = torch.cat(squares).mean() if used.any() else connected_zero
    loss = main + score_reg_coef * regulariser
    metrics["score_reg"] = float(regulariser.detach())
    metrics["loss"] = loss.item()
    return loss, metrics


def _clamped(scores: torch.Tensor, clip: float | None, used: torch.Tensor) -> torch.Tensor:
    """``scores`` in at least float32, clamped to ±clip; rows outside ``used`` zeroed so a NaN there stays out."""
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    scores = torch.where(used.to(scores.device), scores, torch.zeros_like(scores))
    return scores if clip is None else scores.clamp(-clip, clip)



@dataclass(frozen=True)
class DiscriminatorLoss:
    """What a batch's scores train the discriminator on: :func:`discriminator_loss` with these settings, plus
    ``router_aux_coef ×`` the router load-balancing loss. ``clip`` also bounds the scores the advantages see."""

    reg_coef: float
    clip: float | None
    reg_rows: str
    no_valid_pair: str
    router_aux_coef: float

    @classmethod
    def from_args(cls, args: Any, config: Any) -> DiscriminatorLoss:
        """From the ``prism_*`` keys (:class:`~prism_plugin.arguments.DiscriminatorArguments`); an
        unset clip or router coefficient is the discriminator config's own."""
        clip = args.prism_score_clip if args.prism_score_clip is not None else config.score_clip
        aux = args.prism_router_aux_coef if args.prism_router_aux_coef is not None else config.router_aux_loss_coef
        return cls(args.prism_score_reg_coef, clip, args.prism_score_reg_rows, args.prism_no_valid_pair, aux)

    def __call__(self, teacher: Mapping[str, torch.Tensor], student: Mapping[str, torch.Tensor],
                 valid: torch.Tensor, aux: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss and its ``disc/*`` metrics (``disc/loss`` absent when no valid pair trains)."""
        loss, metrics = discriminator_loss(teacher, student, valid, self.reg_coef, clip=self.clip,
                                           reg_rows=self.reg_rows, no_valid_pair=self.no_valid_pair)
        out = {f"disc/{k}": v for k, v in metrics.items() if k != "num_pairs"}
        if aux is not None:
            loss = loss + self.router_aux_coef * aux
            out["disc/router_aux_loss"] = float(aux.detach())
        return loss, out
