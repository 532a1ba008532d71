"""PRISM policy losses behind EasyR1's ``compute_policy_loss`` keyword interface.

EasyR1's actor calls ``compute_policy_loss(old_log_probs=…, log_probs=…, advantages=…, response_mask=…,
clip_ratio_low=…, clip_ratio_high=…, clip_ratio_dual=…, [tau_positive=…, tau_negative=…, loss_type=…,]
loss_avg_mode=…)`` (the bracketed keywords exist from commit cf41904 on; v0.3.2 lacks them). The
functions here take that keyword set, run a loss from :mod:`prism_plugin.losses`, and return
EasyR1's metric names plus ``prism/loss_plugin`` (always 1.0), which proves in the training logs
(``actor/prism/loss_plugin``) that the plugin, not EasyR1's built-in branch, computed the loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from prism_plugin.losses import aggregate_loss, get_policy_loss

PREFIX = "prism_"
ENV_LOSS = "PRISM_EASYR1_LOSS"
"""Environment variable naming the prism loss the patched ``compute_policy_loss`` runs."""

# prism loss type -> (registry name, takes EasyR1's dual clip, nearest native EasyR1 loss_type)
LOSSES: dict[str, tuple[str, bool, str]] = {
    "prism_grpo": ("grpo", True, "default"),
    "prism_dapo": ("dapo", True, "default"),
    "prism_gspo": ("gspo", False, "gspo"),
    "prism_gspo_token": ("gspo_token", False, "gspo_token"),
}
_AGG_MODES = {"token": "token-mean", "seq": "seq-mean-token-mean"}


def native_loss_type(prism_loss: str) -> str:
    """The EasyR1 ``loss_type`` closest to ``prism_loss`` (what the launcher writes into the config)."""
    return LOSSES[check_loss_name(prism_loss)][2]


def check_loss_name(name: str) -> str:
    """``name`` if it is a known prism loss type, else a ValueError listing them."""
    if name not in LOSSES:
        raise ValueError(f"unknown prism loss type {name!r}; known: {', '.join(LOSSES)}")
    return name


def prism_policy_loss(
    name: str,
    *,
    old_log_probs: torch.Tensor,
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_dual: float,
    loss_avg_mode: str,
    tau_positive: float | None = None,
    tau_negative: float | None = None,
    loss_type: str | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Run prism loss ``name`` on EasyR1's keyword set; ``(loss, metrics)`` as EasyR1 expects.

    ``loss_avg_mode`` token/seq maps to token-mean/seq-mean-token-mean. The PPO-style losses take
    EasyR1's dual clip (``clip_ratio_dual``) on negative advantages as EasyR1 does; the GSPO losses
    do not (EasyR1's own gspo applies it, which only differs once a sequence ratio exceeds it).
    ``tau_*`` (SAPO) and ``loss_type`` are accepted and ignored.
    """
    registry_name, uses_dual_clip, _ = LOSSES[check_loss_name(name)]
    if loss_avg_mode not in _AGG_MODES:
        raise ValueError(f"unknown loss_avg_mode {loss_avg_mode!r}; expected token or seq")
    agg_mode = _AGG_MODES[loss_avg_mode]
    options: dict[str, Any] = {"clip_low": clip_ratio_low, "clip_high": clip_ratio_high, "agg_mode": agg_mode}
    if uses_dual_clip:
        options["dual_clip"] = clip_ratio_dual
    loss, ours = get_policy_loss(registry_name)(log_probs, old_log_probs, advantages, response_mask, **options)
    metrics = {
        "ppo_kl": ours["approx_kl"],
        "entropy_loss": aggregate_loss(-log_probs.detach(), response_mask, agg_mode).item(),
        "pg_clipfrac_higher": ours["clip_frac"],
        "pg_clipfrac_lower": ours.get("dual_clip_frac", 0.0),
        "prism/loss_plugin": 1.0,
    }
    metrics.update({f"prism/{key}": value for key, value in ours.items() if key not in ("approx_kl", "clip_frac")})
    return loss, metrics


def _plugin(name: str) -> Callable[..., tuple[torch.Tensor, dict[str, float]]]:
    def loss_fn(**kwargs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return prism_policy_loss(name, **kwargs)

    loss_fn.__name__ = name
    loss_fn.__doc__ = f"``{name}`` with EasyR1's ``compute_policy_loss`` keywords (see :func:`prism_policy_loss`)."
    return loss_fn


prism_grpo = _plugin("prism_grpo")
prism_dapo = _plugin("prism_dapo")
prism_gspo = _plugin("prism_gspo")
prism_gspo_token = _plugin("prism_gspo_token")


def selected_loss(loss_type: str | None = None) -> str | None:
    """The prism loss to run: a ``prism_*`` ``loss_type`` wins, else ``$PRISM_EASYR1_LOSS``, else None."""
    if loss_type and loss_type.startswith(PREFIX):
        return check_loss_name(loss_type)
    env = os.environ.get(ENV_LOSS, "").strip()
    return check_loss_name(env) if env else None


def make_dispatcher(original: Callable[..., Any]) -> Callable[..., Any]:
    """A drop-in for EasyR1's ``compute_policy_loss``: the selected prism loss, else ``original``.

    The selection is read per call (cheap), so a worker whose environment names no prism loss keeps
    EasyR1's behaviour exactly.
    """

    def compute_policy_loss(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        name = selected_loss(kwargs.get("loss_type"))
        if name is None:
            return original(*args, **kwargs)
        if args:
            raise TypeError("prism compute_policy_loss takes keyword arguments only (as EasyR1's actor passes them)")
        return prism_policy_loss(name, **kwargs)

    compute_policy_loss.__doc__ = "EasyR1 compute_policy_loss patched by prism-plugin (see prism_plugin.easyr1)."
    compute_policy_loss.__wrapped__ = original  # type: ignore[attr-defined]
    compute_policy_loss.prism_dispatcher = True  # type: ignore[attr-defined]
    return compute_policy_loss
