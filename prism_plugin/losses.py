"""Losses: the discriminator's Bradley–Terry loss and a registry of policy losses.

Policy losses share one signature, ``fn(log_probs, old_log_probs, advantages, mask, **options)
-> (loss, metrics)``, and one aggregation helper, :func:`aggregate_loss`; add a variant by
registering a function (``@register_policy_loss("name")``), not by editing an if/else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
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
) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley–Terry (teacher ≻ student) per segment over valid pairs, plus an L2 score regulariser.

    ``L = Σ_s Σ_i v_i·[−log σ(t_s,i − s_s,i)] / n + coef · mean(t², s²)`` with ``n = Σ v_i``; the
    regulariser averages the squared teacher and student scores of every segment over the valid
    pairs. With no valid pair the loss is a graph-connected zero and ``num_pairs`` is 0, so a
    caller can skip the optimizer step while distributed ranks stay in lock-step. ``accuracy``
    counts a tie (a student segment identical to the teacher's) as one half, the AUC convention.
    """
    if set(teacher) != set(student):
        raise ValueError(f"teacher and student must name the same segments; got {sorted(teacher)}, {sorted(student)}")
    valid = torch.as_tensor(valid).bool()
    n = int(valid.sum().item())
    connected_zero = sum((teacher[s].sum() + student[s].sum()) for s in teacher) * 0.0
    metrics: dict[str, float] = {"num_pairs": float(n)}
    if n == 0:
        return connected_zero, metrics
    v = valid.float()
    bt_total = connected_zero
    squares = []
    correct = []
    for name in teacher:
        t, s = teacher[name].float(), student[name].float()
        margin = t - s
        bt = (-F.logsigmoid(margin) * v).sum() / n
        bt_total = bt_total + bt
        squares += [t[valid] ** 2, s[valid] ** 2]
        won = pairwise_wins(t[valid], s[valid])
        correct.append(won)
        metrics[f"{name}/bt_loss"] = bt.item()
        metrics[f"{name}/accuracy"] = won.mean().item()
        metrics[f"{name}/teacher_score"] = t[valid].mean().item()
        metrics[f"{name}/student_score"] = s[valid].mean().item()
        metrics[f"{name}/score_gap"] = margin[valid].mean().item()
    regulariser = torch.cat(squares).mean()
    loss = bt_total + score_reg_coef * regulariser
    metrics["accuracy"] = torch.cat(correct).mean().item()
    metrics["score_reg"] = regulariser.item()
    metrics["loss"] = loss.item()
    return loss, metrics


# --------------------------------------------------------------------------- aggregation


def aggregate_loss(loss_mat: torch.Tensor, mask: torch.Tensor, mode: AggMode = "token-mean") -> torch.Tensor:
    """Reduce a (B, T) per-token loss over the response ``mask``.

    ``token-mean``: over every response token of the batch; ``seq-mean-token-mean``: per sequence,
    then over sequences; ``seq-mean-token-sum``: sum per sequence, mean over sequences;
    ``seq-mean-token-sum-norm``: sum per sequence divided by T (Dr. GRPO), mean over sequences.
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
        return (masked.sum(-1) / loss_mat.shape[-1]).mean()
    raise ValueError(
        f"unknown loss aggregation {mode!r}; expected token-mean, seq-mean-token-mean, "
        "seq-mean-token-sum or seq-mean-token-sum-norm"
    )


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


def get_policy_loss(name: str) -> PolicyLoss:
    """The registered policy loss ``name``; a clear error lists the known ones."""
    try:
        return _POLICY_LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown policy loss {name!r}; registered: {', '.join(sorted(_POLICY_LOSSES))}") from None


def policy_loss_names() -> list[str]:
    return sorted(_POLICY_LOSSES)


def _clipped_surrogate(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    agg_mode: AggMode,
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
    return aggregate_loss(loss_mat, mask, agg_mode), metrics


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
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip with a per-token ratio (symmetric clip unless ``clip_high`` is given)."""
    clip_high = clip_low if clip_high is None else clip_high
    loss, metrics = _clipped_surrogate(
        log_probs - old_log_probs, advantages, mask, clip_low, clip_high, dual_clip, agg_mode
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
) -> tuple[torch.Tensor, dict[str, float]]:
    """DAPO: decoupled clip-higher (0.2 / 0.28) with token-level aggregation."""
    return grpo_loss(
        log_probs, old_log_probs, advantages, mask,
        clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, agg_mode=agg_mode,
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
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO: one ratio per sequence, ``s_i = exp(mean_t(log π − log π_old))``, clipped 3e-4 / 4e-4."""
    seq_log_ratio = _sequence_log_ratio(log_probs, old_log_probs, mask)
    log_ratio = seq_log_ratio.unsqueeze(-1).expand_as(log_probs)
    loss, metrics = _clipped_surrogate(log_ratio, advantages, mask, clip_low, clip_high, None, agg_mode)
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
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO-token: ``s_i,t = sg[s_i] · π_t / sg[π_t]`` — same value as GSPO, per-token advantages allowed."""
    seq_log_ratio = _sequence_log_ratio(log_probs, old_log_probs, mask).detach()
    log_ratio = seq_log_ratio.unsqueeze(-1) + log_probs - log_probs.detach()
    loss, metrics = _clipped_surrogate(log_ratio, advantages, mask, clip_low, clip_high, None, agg_mode)
    metrics["approx_kl"] = _approx_kl(log_probs, old_log_probs, mask)
    return loss, metrics


# --------------------------------------------------------------------------- DAPO helpers


def dynamic_sampling_mask(metric: torch.Tensor, group_index: torch.Tensor | list, tol: float = 0.0) -> torch.Tensor:
    """DAPO dynamic sampling: keep the rollouts of groups whose ``metric`` (e.g. accuracy) varies.

    A group whose members all share one value (all right or all wrong) carries no gradient
    under group normalisation and is dropped; a group of one is dropped too.
    """
    metric = torch.as_tensor(metric, dtype=torch.float64)
    index = torch.as_tensor(group_index)
    _, groups = torch.unique(index, return_inverse=True)
    num_groups = int(groups.max().item()) + 1 if groups.numel() else 0
    high = torch.full((num_groups,), -math.inf, dtype=metric.dtype).scatter_reduce(0, groups, metric, "amax")
    low = torch.full((num_groups,), math.inf, dtype=metric.dtype).scatter_reduce(0, groups, metric, "amin")
    return ((high - low) > tol)[groups]


def overlong_penalty(
    response_length: torch.Tensor | int,
    max_length: int = 8192,
    buffer: int = 4096,
    factor: float = 1.0,
) -> torch.Tensor:
    """DAPO soft overlong punishment: 0 up to ``max_length − buffer``, then linear down to ``−factor``.

    ``−factor·(ℓ − (max_length − buffer))/buffer`` inside the buffer, ``−factor`` at or past ``max_length``.
    """
    if buffer <= 0 or buffer > max_length:
        raise ValueError(f"overlong buffer must be in (0, max_length]; got buffer={buffer}, max_length={max_length}")
    length = torch.as_tensor(response_length, dtype=torch.float32)
    expected = max_length - buffer
    penalty = -factor * (length - expected) / buffer
    return penalty.clamp(min=-factor, max=0.0)
