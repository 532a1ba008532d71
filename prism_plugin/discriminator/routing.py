"""Per-call router-logit masking for transformers' MoE blocks (the ``dedicated`` expert mode).

Two router designs are handled (the Qwen3-MoE / Qwen3-VL-MoE blocks of the two transformers lines):

- a top-k router module (``*TopKRouter``, transformers 5.x) computes ``logits -> softmax -> top-k ->
  renormalise`` in one ``forward`` and returns ``(router_logits, routing_weights, selected_experts)``;
- a plain linear gate (``mlp.gate``, an ``nn.Linear``, transformers 4.57) returns the logits, and its MoE
  block does the softmax / top-k / renormalisation itself.

:class:`RouterControl` puts one forward hook on every router. With no mask active the hook only
(optionally) records the logits and leaves the output untouched, so ``shared`` mode runs the stock
routers bit for bit. Inside ``with control.restrict(allowed)`` the hook adds ``-inf`` to the logits of
the experts a row may not use: a linear gate returns the masked logits (its block then routes them as
usual); a top-k router's output is recomputed from the masked logits (same softmax / top-k /
renormalisation as the stock router). Either way masked experts get probability 0 and are never selected.

``allowed`` is a ``(batch, num_experts)`` bool tensor, one row per sequence of the call: the
router sees the MoE block's input flattened as ``(batch * seq_len, hidden)``, row-major, so
sequence ``b`` owns tokens ``b*L .. (b+1)*L - 1``. A segment type can thus route differently
from the next row in the same batched call.

Gradient checkpointing re-runs each decoder layer during backward, outside any ``with`` block.
So the model passes the mask to the backbone as a keyword argument (:data:`MASK_KWARG`), which
transformers forwards to every decoder layer (and keeps for the recomputation); a pre-hook on
each layer that holds a router takes it out of the kwargs and activates it for that layer call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MASK_KWARG = "prism_expert_allowed"


def is_topk_router(module: nn.Module) -> bool:
    """True for a router module that routes itself (transformers 5.x ``*TopKRouter``: logits, weights, ids)."""
    return (
        type(module).__name__.endswith("TopKRouter")
        and isinstance(getattr(module, "weight", None), torch.Tensor)
        and hasattr(module, "top_k")
        and hasattr(module, "num_experts")
    )


def _linear_gate(module: nn.Module) -> nn.Linear | None:
    """The ``gate`` of an MoE block that routes its gate's logits itself (transformers 4.57), else None."""
    gate = getattr(module, "gate", None)
    if isinstance(gate, nn.Linear) and hasattr(module, "experts") and hasattr(module, "top_k"):
        return gate
    return None


def find_routers(model: nn.Module) -> list[nn.Module]:
    """Every MoE router in ``model`` (top-k router modules or linear gates), in layer order."""
    routers = []
    for module in model.modules():
        if is_topk_router(module):
            routers.append(module)
        elif (gate := _linear_gate(module)) is not None:
            routers.append(gate)
    return routers


def routing_from_logits(logits: torch.Tensor, top_k: int, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k weights, top-k expert ids) from router logits, as transformers' top-k routers compute them."""
    probs = F.softmax(logits, dtype=torch.float, dim=-1)
    top_value, top_index = torch.topk(probs, top_k, dim=-1)
    if normalize:
        top_value = top_value / top_value.sum(dim=-1, keepdim=True)
    return top_value.to(logits.dtype), top_index


def _router_layers(backbone: nn.Module, routers: list[nn.Module]) -> list[nn.Module]:
    """The decoder layers (direct children of a ``layers`` ModuleList) that contain a router."""
    ids = {id(r) for r in routers}
    layers = []
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList):
            layers += [child for child in module if any(id(m) in ids for m in child.modules())]
    return layers


class RouterControl:
    """Hooks on a backbone's routers: per-call expert masks and router-logit recording."""

    def __init__(self, backbone: nn.Module) -> None:
        self.routers = find_routers(backbone)
        self.num_experts = int(self.routers[0].weight.shape[0]) if self.routers else 0
        self._bias: torch.Tensor | None = None  # (B, E) additive mask: 0 or -inf
        self._records: list[torch.Tensor] | None = None
        self._handles = [r.register_forward_hook(self._hook) for r in self.routers]
        self._layer_bias: list[torch.Tensor | None] = []  # masks handed to the running decoder layer(s)
        for layer in _router_layers(backbone, self.routers):
            self._handles.append(layer.register_forward_pre_hook(self._enter_layer, with_kwargs=True))
            self._handles.append(layer.register_forward_hook(self._exit_layer, always_call=True))

    def __bool__(self) -> bool:
        return bool(self.routers)

    def bias(self, allowed: torch.Tensor | None) -> torch.Tensor | None:
        """The additive router-logit mask (0 / -inf, float32, (B, E)) for ``allowed``; None masks nothing."""
        if allowed is None or bool(allowed.all()):
            return None
        allowed = allowed.reshape(-1, self.num_experts).bool()
        if not bool(allowed.any(dim=-1).all()):
            raise ValueError("every row must allow at least one expert")
        bias = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
        return bias.masked_fill(~allowed, float("-inf"))

    @contextmanager
    def restrict(self, allowed: torch.Tensor | None) -> Iterator[None]:
        """Within the block, sequence ``b`` may only route to experts ``e`` with ``allowed[b, e]``.

        ``allowed`` is ``(batch, num_experts)`` (or ``(num_experts,)`` for every row); None masks nothing.
        For calls that may be recomputed (gradient checkpointing), pass ``{MASK_KWARG: allowed}`` to the
        backbone instead, as ``PrismDiscriminator.encode`` does.
        """
        previous = self._bias
        self._bias = self.bias(allowed)
        try:
            yield
        finally:
            self._bias = previous

    def _enter_layer(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = dict(kwargs)
        allowed = kwargs.pop(MASK_KWARG, None)
        self._layer_bias.append(self.bias(allowed) if allowed is not None else None)
        return args, kwargs

    def _exit_layer(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._layer_bias:
            self._layer_bias.pop()

    @contextmanager
    def record(self) -> Iterator[list[torch.Tensor]]:
        """Collect the (masked) router logits of every MoE layer run inside the block, in call order."""
        previous = self._records
        self._records = records = []
        try:
            yield records
        finally:
            self._records = previous

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        topk = isinstance(output, tuple)  # a top-k router's (logits, weights, ids); a linear gate's logits
        logits = output[0] if topk else output
        changed = None
        active = self._layer_bias[-1] if self._layer_bias and self._layer_bias[-1] is not None else self._bias
        if active is not None:
            bias = active.to(logits.device)
            tokens = logits.shape[0]
            if bias.shape[0] != 1:
                if tokens % bias.shape[0]:
                    raise RuntimeError(f"router saw {tokens} tokens, not a multiple of the mask's {bias.shape[0]} rows")
                bias = bias.repeat_interleave(tokens // bias.shape[0], dim=0)
            logits = logits + bias.to(logits.dtype)
            if topk:
                weights, index = routing_from_logits(logits, int(module.top_k), getattr(module, "norm_topk_prob", True))
                changed = (logits, weights, index)
            else:
                changed = logits
        if self._records is not None:
            self._records.append(logits)
        return changed
