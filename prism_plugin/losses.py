"""Losses: the discriminator's Bradley–Terry loss and a registry of policy losses.

Policy losses share one signature, ``fn(log_probs, old_log_probs, advantages, mask, *, clip_low,
clip_high, agg_mode, horizon, …) -> (loss, metrics)``, whose keyword defaults are the loss's own
settings (:func:`policy_loss_defaults`), and one aggregation helper, :func:`aggregate_loss`; add a
variant by registering a function (``@register_policy_loss("name")``), not by editing an if/else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F

from prism_plugin.advantage import group_ids

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
PolicyLoss = Callable[..., tuple[torch.Tensor, dict[str, float]]]

_POLICY_LOSSES: dict[str, PolicyLoss] = {}


# --------------------------------------------------------------------------- discriminator


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


# --------------------------------------------------------------------------- aggregation


def aggregate_loss(
    loss_mat: torch.Tensor, mask: torch.Tensor, mode: AggMode = "token-mean", horizon: int | None = None
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss over the response ``mask``.

    ``token-mean``: over every response token of the batch; ``seq-mean-token-mean``: per sequence,
    then over sequences; ``seq-mean-token-sum``: sum per sequence, mean over sequences;
    ``seq-mean-token-sum-norm`` (Dr. GRPO): sum per sequence divided by the constant ``horizon`` (the
    generation budget, so the scale does not change with a batch's padded width), mean over sequences.
    """
    mask = mask.to(loss_mat.dtype)
    masked = loss_mat * mask
    if mode == "token-mean":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if mode == "seq-mean-token-sum":
        return masked.sum(-1).mean()
    if mode == "seq-mean-token-sum-norm":
        if not horizon:
            raise ValueError("seq-mean-token-sum-norm divides by the generation budget: pass horizon")
        return (masked.sum(-1) / horizon).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {', '.join(AGG_MODES)}")


def aggregation_unit(mode: str) -> str:
    """What a mode averages over: ``tokens`` (token-mean) or ``sequences`` (the seq-mean modes); a caller
    normalising over ranks or micro-batches counts this unit."""
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {', '.join(AGG_MODES)}")
    return "tokens" if mode == "token-mean" else "sequences"


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    mask = mask.to(values.dtype)
    return ((values * mask).sum() / mask.sum().clamp(min=1.0)).item()


# --------------------------------------------------------------------------- policy-loss registry


def register_policy_loss(name: str) -> Callable[[PolicyLoss], PolicyLoss]:
    """Decorator: make ``fn`` available as ``get_policy_loss(name)``."""

    def decorator(fn: PolicyLoss) -> PolicyLoss:
        if name in _POLICY_LOSSES and _POLICY_LOSSES[name] is not fn:
            raise ValueError(f"policy loss {name!r} is already registered")
        _POLICY_LOSSES[name] = fn
        return fn

    return decorator


def unregister_policy_loss(name: str) -> None:
    """Remove ``name`` from the registry (a KeyError if it is not there)."""
    del _POLICY_LOSSES[name]


def get_policy_loss(name: str) -> PolicyLoss:
    """The registered policy loss ``name``; a clear error lists the known ones."""
    try:
        return _POLICY_LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown policy loss {name!r}; registered: {', '.join(sorted(_POLICY_LOSSES))}") from None


def policy_loss_names() -> list[str]:
    return sorted(_POLICY_LOSSES)


def policy_loss_defaults(name: str) -> dict[str, object]:
    """The keyword defaults of policy loss ``name`` (its own clip range and ``agg_mode``): a caller that
    overrides only what the user set reads the rest from here."""
    import inspect

    parameters = inspect.signature(get_policy_loss(name)).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}


def _clipped_surrogate(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    agg_mode: AggMode,
    horizon: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate on a (B, T) log-ratio, with an optional dual clip for A < 0."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.expand_as(log_ratio).to(log_ratio.dtype)
    log_ratio = log_ratio.clamp(-20.0, 20.0)  # exp overflow guard: gives a finite grad
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * clipped
    loss_mat = torch.maximum(unclipped_loss, clipped_loss)
    metrics = {
        "clip_frac": _masked_mean((clipped_loss > unclipped_loss).float(), mask),
        "clip_frac_low": _masked_mean(((ratio < 1.0 - clip_low) & (advantages < 0)).float(), mask),
        "clip_frac_high": _masked_mean(((ratio > 1.0 + clip_high) & (advantages > 0)).float(), mask),
    }
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (got {dual_clip})")
        bound = -advantages * dual_clip
        dual = torch.minimum(loss_mat, bound)
        metrics["dual_clip_frac"] = _masked_mean(((loss_mat > bound) & (advantages < 0)).float(), mask)
        loss_mat = torch.where(advantages < 0, dual, loss_mat)
    m = mask.bool()
    metrics["ratio_mean"] = _masked_mean(ratio.detach(), mask)
    metrics["ratio_max"] = ratio.detach()[m].max().item() if m.any() else 1.0
    metrics["ratio_min"] = ratio.detach()[m].min().item() if m.any() else 1.0
    return aggregate_loss(loss_mat, mask, agg_mode, horizon), metrics


def _approx_kl(log_probs: torch.Tensor, old_log_probs: torch.Tensor, mask: torch.Tensor) -> float:
    return _masked_mean((old_log_probs - log_probs).detach(), mask)


@register_policy_loss("grpo")
def grpo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    dual_clip: float | None = None,
    agg_mode: AggMode = "token-mean",
    horizon: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip with a per-token ratio (symmetric clip unless ``clip_high`` is given)."""
    clip_high = clip_low if clip_high is None else clip_high
    loss, metrics = _clipped_surrogate(
        log_probs - old_log_probs, advantages, mask, clip_low, clip_high, dual_clip, agg_mode, horizon
    )
    metrics["approx_kl"] = _approx_kl(log_probs, old_log_probs, mask)
    return loss, metrics


@register_policy_loss("dapo")
def dapo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = None,
    agg_mode: AggMode = "token-mean",
    horizon: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DAPO: decoupled clip-higher (0.2 / 0.28) with token-level aggregation."""
    return grpo_loss(
        log_probs, old_log_probs, advantages, mask,
        clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, agg_mode=agg_mode, horizon=horizon,
    )


def _sequence_log_ratio(log_probs: torch.Tensor, old_log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(log_probs.dtype)
    return ((log_probs - old_log_probs) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


@register_policy_loss("gspo")
def gspo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    agg_mode: AggMode = "seq-mean-token-mean",
    horizon: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO: one ratio per sequence, ``s_i = exp(mean_t(log π − log π_old))``, clipped 3e-4 / 4e-4."""
    seq_log_ratio = _sequence_log_ratio(log_probs, old_log_probs, mask)
    log_ratio = seq_log_ratio.unsqueeze(-1).expand_as(log_probs)
    loss, metrics = _clipped_surrogate(log_ratio, advantages, mask, clip_low, clip_high, None, agg_mode, horizon)
    metrics["approx_kl"] = _approx_kl(log_probs, old_log_probs, mask)
    return loss, metrics


@register_policy_loss("gspo_token")
def gspo_token_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    agg_mode: AggMode = "seq-mean-token-mean",
    horizon: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO-token: ``s_i,t = sg[s_i] · π_t / sg[π_t]`` — same value as GSPO, per-token advantages allowed."""
    seq_log_ratio = _sequence_log_ratio(log_probs, old_log_probs, mask).detach()
    log_ratio = seq_log_ratio.unsqueeze(-1) + log_probs - log_probs.detach()
    loss, metrics = _clipped_surrogate(log_ratio, advantages, mask, clip_low, clip_high, None, agg_mode, horizon)
    metrics["approx_kl"] = _approx_kl(log_probs, old_log_probs, mask)
    return loss, metrics


# --------------------------------------------------------------------------- DAPO helpers


def dynamic_sampling_mask(metric: torch.Tensor, group_index: torch.Tensor | list, tol: float = 0.0) -> torch.Tensor:
    """DAPO dynamic sampling: keep the rollouts of groups whose ``metric`` (e.g. accuracy) varies.

    A group whose members all share one value (all right or all wrong) carries no gradient
    under group normalisation and is dropped; a group of one is dropped too.
    """
    metric = torch.as_tensor(metric, dtype=torch.float64)
    groups, num_groups = group_ids(group_index)
    high = torch.full((num_groups,), -math.inf, dtype=metric.dtype).scatter_reduce(0, groups, metric, "amax")
    low = torch.full((num_groups,), math.inf, dtype=metric.dtype).scatter_reduce(0, groups, metric, "amin")
    return ((high - low) > tol)[groups]
