"""Group-normalised, multi-segment advantages with format gating (Wang et al. 2026, §3).

``A_i = Σ_s w_s · GN(s̃)_i − λ·F_i`` where ``s̃`` replaces the score of an invalid rollout
by (min over the valid members of its group) − 1, GN normalises within each group of
rollouts of one prompt, and ``F_i`` flags an invalid format. One segment named
``response`` with weight 1 is GAD; ``caption`` + ``reasoning`` with 0.5 each is PRISM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

FORMAT_PENALTY = 1.5  # λ: the paper's penalty on a rollout outside the layout


def group_ids(group_index: torch.Tensor | list) -> tuple[torch.Tensor, int]:
    """Dense group ids 0…n−1 (one per sample) for any group labels, and n."""
    index = torch.as_tensor(group_index)
    _, inverse = torch.unique(index, return_inverse=True)
    return inverse, int(inverse.max().item()) + 1 if inverse.numel() else 0


def group_normalize(
    values: torch.Tensor, group_index: torch.Tensor | list, eps: float = 1e-6, scale: bool = True
) -> torch.Tensor:
    """``(z − mean_g z) / (std_g z + eps)`` per group, unbiased std; a group of one uses mean 0, std 1.

    ``group_index`` holds any hashable-as-tensor group ids (one per sample), like verl's ``index``.
    ``scale=False`` only centres (``z − mean_g z``, Dr. GRPO): score differences keep their size
    instead of being blown up to unit variance when a group's scores barely differ.
    """
    values = values.float()
    groups, num_groups = group_ids(group_index)
    counts = torch.bincount(groups, minlength=num_groups).to(values.dtype)
    sums = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, groups, values)
    means = sums / counts
    squares = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, groups, (values - means[groups]) ** 2)
    stds = torch.sqrt(squares / (counts - 1).clamp(min=1))
    singleton = counts == 1
    means = torch.where(singleton, torch.zeros_like(means), means)
    stds = torch.where(singleton, torch.ones_like(stds), stds)
    centred = values - means[groups]
    return centred / (stds[groups] + eps) if scale else centred


def fill_invalid_scores(
    scores: torch.Tensor, valid: torch.Tensor, group_index: torch.Tensor | list
) -> torch.Tensor:
    """Replace each invalid rollout's score by (min over its group's valid scores, 0 if none) − 1."""
    scores = scores.float()
    valid = valid.bool()
    groups, num_groups = group_ids(group_index)
    masked = torch.where(valid, scores, torch.full_like(scores, float("inf")))
    group_min = torch.full((num_groups,), float("inf"), dtype=scores.dtype)
    group_min = group_min.scatter_reduce(0, groups, masked, reduce="amin", include_self=True)
    group_min = torch.where(torch.isinf(group_min), torch.zeros_like(group_min), group_min)
    return torch.where(valid, scores, group_min[groups] - 1.0)


def segment_advantage(
    scores: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    valid: torch.Tensor,
    group_index: torch.Tensor | list,
    format_penalty: float = FORMAT_PENALTY,
    eps: float = 1e-6,
    scale: bool = True,
) -> torch.Tensor:
    """Per-rollout advantage ``Σ_s w_s·GN(s̃)_i − λ·F_i``, as the authors' ``grpo_multi_reward`` computes it.

    ``scores`` and ``weights`` share their segment names; ``valid`` is a bool tensor (B,). Scores of
    invalid rollouts are ignored (they may be anything, NaN included): their filled score is the
    group's valid minimum − 1 (−1 with no valid member). So a group of ≥ 2 with no valid member gets
    ``−λ`` (equal filled scores normalise to 0), and a group of one invalid rollout gets
    ``−Σ_s w_s − λ`` (its filled −1 with mean 0, std 1: −2.5 with PRISM's weights). ``scale=False``
    centres each segment's scores per group without dividing by their std (see :func:`group_normalize`).
    """
    if set(scores) != set(weights):
        raise ValueError(
            f"scores and weights must name the same segments; got {sorted(scores)} and {sorted(weights)}"
        )
    if not scores:
        raise ValueError("segment_advantage needs at least one segment")
    valid = torch.as_tensor(valid).bool()
    groups, _ = group_ids(group_index)
    advantage = torch.zeros(valid.shape[0], dtype=torch.float32)
    for name, weight in weights.items():
        filled = fill_invalid_scores(scores[name], valid, groups)
        advantage = advantage + weight * group_normalize(filled, groups, eps=eps, scale=scale)
    return advantage - format_penalty * (~valid).float()


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
