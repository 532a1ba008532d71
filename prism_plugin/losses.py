"""Policy losses, in a registry (the discriminator's Bradley–Terry loss is
:mod:`prism_plugin.discriminator.loss`; DAPO's group filter is :func:`prism_plugin.advantage.dynamic_sampling_mask`).

Policy losses share one signature, ``fn(log_probs, old_log_probs, advantages, mask, *, clip_low,
clip_high, agg_mode, horizon, …) -> (loss, metrics)``, whose keyword defaults are the loss's own
settings (:func:`policy_loss_defaults`), and one aggregation helper, :func:`aggregate_loss`; add a
variant by registering a function (``@register_policy_loss("name")``), not by editing an if/else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
PolicyLoss = Callable[..., tuple[torch.Tensor, dict[str, float]]]

_POLICY_LOSSES: dict[str, PolicyLoss] = {}


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
