"""Rank helpers: the one home of what the PRISM stages compute across data-parallel ranks.

Every helper is also correct in a single process (it returns the local value), so callers never branch on
whether a run is distributed. Each is a collective: every rank must call it, in the same order.
"""

from __future__ import annotations

from typing import Any

import torch


def is_distributed() -> bool:
    """Whether a process group is up (several ranks, or torchrun with one)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def all_ranks_sum(values: list[float], device: torch.device | str) -> list[float]:
    """``values`` summed over every rank (float64, on ``device``: the backend's device, e.g. CUDA for NCCL)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flag: bool, device: torch.device | str) -> bool:
    """Whether ``flag`` holds on some rank: how ranks agree to skip a step or stop together."""
    (count,) = all_ranks_sum([float(flag)], device)
    return count > 0


def all_gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered
