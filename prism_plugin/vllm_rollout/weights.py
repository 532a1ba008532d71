"""The policy's weights as vLLM loads them: checkpoint names, whole blocks, buckets.

vLLM's ``load_weights`` takes a model's *checkpoint* names (it maps them to its own fused layers, e.g.
``q_proj``/``k_proj``/``v_proj`` into one ``qkv_proj``). In memory a policy may carry other names: a PEFT
wrapper adds ``base_model.model.`` and ``.base_layer``, and ``modules_to_save`` its own copies
(:func:`checkpoint_name` undoes them, trl's renaming); transformers 4.57's Qwen-VL classes rename checkpoint
keys on load (``_checkpoint_conversion_mapping``, reversed here as ``save_pretrained`` does).

Weights travel in blocks — a decoder layer, a vision block, the embeddings, the head — because vLLM
fuses a block's projections and processes a fused layer only once all its parts arrived. After the first
push only the blocks that can change are pushed again: those with a trainable parameter, or with a LoRA
adapter (their merged base weights). A frozen vision tower is pushed once.

LoRA: the adapter is merged into the base weights, the merged weights pushed, and the adapter unmerged
(trl's scheme; vLLM's own LoRA path is not used). Under DeepSpeed ZeRO-3 each bucket's parameters are
gathered while they are pushed (a LoRA policy: all of them, for the merge).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch

PEFT_PREFIX = "base_model.model."
Bucket = list[tuple[str, torch.Tensor]]


def checkpoint_name(name: str, conversion: dict[str, str] | None = None) -> str | None:
    """The checkpoint name of in-memory parameter ``name``; None for a LoRA adapter's own tensors (and the
    original copy PEFT keeps of a ``modules_to_save`` module)."""
    parts = name.split(".")
    if any(part.startswith("lora_") for part in parts) or "original_module" in parts:
        return None
    name = name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
    for key_pattern, loaded_as in (conversion or {}).items():  # load-time renames, reversed as save_pretrained does
        name, replaced = re.subn(loaded_as, re.sub(r"\(.*\)", "", key_pattern.lstrip("^")), name)
        if replaced:
            break
    return name


def conversion_mapping(model: torch.nn.Module) -> dict[str, str]:
    """The model's load-time key renames (transformers 4.57's ``_checkpoint_conversion_mapping``), if any."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return dict(getattr(inner, "_checkpoint_conversion_mapping", None) or {})


def block_of(name: str) -> str:
    """The block a checkpoint name belongs to: up to its first numeric part (``model.layers.3``), else
    its module (``lm_head``, ``model.norm``)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or name


def _adapted_weight(name: str) -> str:
    """For a LoRA tensor (``….q_proj.lora_A.default.weight``), the name of the weight it adapts
    (``….q_proj.weight``); any other name unchanged."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("lora_"):
            return ".".join([*parts[:i], "weight"])
    return name


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "merge_adapter") and hasattr(model, "unmerge_adapter")


def blocks(model: torch.nn.Module, changing_only: bool) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """Checkpoint name → parameter, grouped by block, in the model's order; ``changing_only`` keeps the
    blocks holding a trainable parameter or a LoRA-wrapped one."""
    conversion = conversion_mapping(model)
    grouped: dict[str, list[tuple[str, torch.nn.Parameter]]] = {}
    changing: set[str] = set()
    for name, param in model.named_parameters():
        target = checkpoint_name(name, conversion)
        block = block_of(target) if target is not None else None
        if param.requires_grad or ".base_layer." in name:
            changing.add(block_of(checkpoint_name(_adapted_weight(name), conversion) or name))
        if target is not None:
            grouped.setdefault(block, []).append((target, param))
    if changing_only:
        grouped = {block: params for block, params in grouped.items() if block in changing}
    return grouped


def buckets(grouped: dict[str, list[tuple[str, torch.nn.Parameter]]], bucket_bytes: int
            ) -> Iterator[list[tuple[str, torch.nn.Parameter]]]:
    """Whole blocks, packed in order into buckets of about ``bucket_bytes`` (a larger block is one bucket)."""
    bucket: list[tuple[str, torch.nn.Parameter]] = []
    size = 0
    for params in grouped.values():
        block_bytes = sum(_numel(p) * p.element_size() for _, p in params)
        if bucket and size + block_bytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket += params
        size += block_bytes
    if bucket:
        yield bucket


def _numel(param: torch.nn.Parameter) -> int:
    return int(getattr(param, "ds_numel", param.numel()))  # ZeRO-3 keeps a placeholder of size 0


def _zero3(params: list[torch.nn.Parameter]) -> bool:
    return any(hasattr(p, "ds_id") for p in params)


@contextlib.contextmanager
def gathered(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """ZeRO-3: the full ``params`` inside the block (every rank takes part); otherwise nothing to do."""
    if not _zero3(params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


@contextlib.contextmanager
def merged_adapter(model: torch.nn.Module) -> Iterator[None]:
    """A PEFT policy with its adapter merged into the base weights inside the block (unmerged after)."""
    if not is_peft(model):
        yield
        return
    params = list(model.parameters())
    with gathered(params):
        model.merge_adapter()
        try:
            yield
        finally:
            model.unmerge_adapter()


def push_weights(model: torch.nn.Module, load: Callable[[Bucket], Any], *, changing_only: bool,
                 bucket_bytes: int) -> int:
    """Hand ``model``'s weights to ``load`` bucket by bucket (checkpoint names, the tensors themselves);
    returns the number of tensors pushed. See the module docstring for which."""
    pushed = 0
    with torch.no_grad(), merged_adapter(model):
        for bucket in buckets(blocks(model, changing_only), bucket_bytes):
            with gathered([p for _, p in bucket]):
                load([(name, param.data) for name, param in bucket])
            pushed += len(bucket)
    return pushed
