"""Reference implementations the tests (and benchmarks) compare our fast paths against."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prism_plugin.discriminator import experts, routing
from prism_plugin.layout import LAYOUT_PATTERN, caption_match

_LAYOUT_RE = re.compile(LAYOUT_PATTERN, re.DOTALL)


def layout_parts_reference(text: str) -> tuple[str, str, str] | None:
    """The layout check as the method defines it: ``LAYOUT_PATTERN`` as one lazy regex."""
    match = _LAYOUT_RE.match(text)
    return None if match is None else match.groups()


def reference_boundary(ids: Sequence[int], tokenizer: Any) -> int:
    """The authors' O(L^2) caption boundary: decode every prefix until it holds the caption match."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    match = caption_match(text)
    if match is None:
        return 0
    for k in range(1, len(ids) + 1):
        if match.group(0) in tokenizer.decode(list(ids[:k]), skip_special_tokens=True):
            return k
    return len(ids)


def read_experts(state: dict[str, torch.Tensor], prefix: str, hidden: int, inter: int) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """Canonical ``gate_up`` (E, 2I, H) and ``down`` (E, H, I) of the experts of the MoE block ``prefix`` in
    ``state`` (a state dict or a loaded checkpoint), whatever layout it holds them in."""
    fused = state.get(f"{prefix}.{experts.FUSED_GATE_UP}")
    if fused is None:
        num = 0
        while f"{prefix}.experts.{num}.gate_proj.weight" in state:
            num += 1
        if not num:
            raise KeyError(f"no experts under {prefix}")
        gate_up = torch.stack([torch.cat([state[f"{prefix}.experts.{e}.gate_proj.weight"],
                                          state[f"{prefix}.experts.{e}.up_proj.weight"]]) for e in range(num)])
        down = torch.stack([state[f"{prefix}.experts.{e}.down_proj.weight"] for e in range(num)])
        return gate_up, down
    down = state[f"{prefix}.{experts.FUSED_DOWN}"]
    if experts.is_canonical(tuple(fused.shape[1:]), tuple(down.shape[1:]), hidden, inter, prefix):
        return fused, down
    return fused.transpose(1, 2), down.transpose(1, 2)


def router_top_k(model: nn.Module, router: nn.Module) -> int:
    """How many experts ``router`` (one of :func:`find_routers`'s) picks per token."""
    if routing.is_topk_router(router):
        return int(router.top_k)
    block = next(m for m in model.modules() if routing._linear_gate(m) is router)
    return int(block.top_k)
