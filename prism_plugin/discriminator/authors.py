"""The PRISM authors' released discriminator format (Wang et al. 2026; github XIAO4579/PRISM, ``moe/``).

Their discriminator is a ``qwen3_vl_moe`` checkpoint (``Qwen3VLMoeForConditionalGeneration`` weights under
``model.*``, an unused ``lm_head``) plus a score head ``v_head.1.weight`` [1, hidden] (index 0 of their
``v_head`` is the Dropout(0.1)) — in the safetensors, or in a ``value_head.pt`` beside them as
``v_head.summary.weight``. Its config says nothing about the head. It was warmed up with each segment
rendered as a whole assistant turn under their own system prompt, and read at the turn's last token (the
newline after ``<|im_end|>``), with the model's M-RoPE positions.

:func:`is_authors_discriminator` recognises the format by its head; :func:`load_authors_discriminator`
wraps it as a :class:`~prism_plugin.discriminator.modeling.PrismDiscriminator` whose config keeps that
rendering (``segment_format: turn``, their ``system_prompt``), so it scores as their code does. Their
alignment-time critic scores differently (see the README); prism-plugin does not replicate that.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from prism_plugin.layout import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    CAPTION_CLOSE,
    CAPTION_OPEN,
    SEGMENT_NAMES,
    THINK_CLOSE,
    THINK_OPEN,
)

HEAD_KEY = "v_head.1.weight"
VALUE_HEAD_FILE = "value_head.pt"
VALUE_HEAD_KEY = "v_head.summary.weight"

# The system prompt of the authors' discriminator warm-up (their moe/train_moe_vl_warmup_fast.py): a
# prompt string, kept verbatim so their discriminator sees the prompts it was trained on.
AUTHORS_SYSTEM_PROMPT = (
    "You are a helpful scientific assistant.\nAnswer the user's question based on the image provided.\n\n"
    f"Your output must strictly follow this XML format:\n\n{CAPTION_OPEN}\n- [Briefly describe the image style, "
    f"key objects, and text using bullet points]\n{CAPTION_CLOSE}\n{THINK_OPEN}\n[Reason step-by-step to solve the "
    f"problem]\n{THINK_CLOSE}\n{ANSWER_OPEN}\n[Final answer ONLY]\n{ANSWER_CLOSE}\n"
)


def _weight_keys(directory: Path) -> set[str]:
    """Tensor names of the checkpoint in ``directory`` (single safetensors file or a sharded index)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    single = directory / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(single, framework="pt") as handle:
            return set(handle.keys())
    return set()


def is_authors_discriminator(directory: str | Path) -> bool:
    """The one detection rule: a checkpoint with the authors' score head (``v_head.1.weight`` in its
    safetensors or index, or a ``value_head.pt``)."""
    directory = Path(directory)
    return (directory / VALUE_HEAD_FILE).is_file() or HEAD_KEY in _weight_keys(directory)


def _head_weight(directory: Path) -> torch.Tensor:
    """The [1, hidden] score head, from the safetensors (or their index) or from ``value_head.pt``."""
    if HEAD_KEY in _weight_keys(directory):
        index = directory / "model.safetensors.index.json"
        name = (json.loads(index.read_text())["weight_map"][HEAD_KEY] if index.is_file() else "model.safetensors")
        from safetensors import safe_open

        with safe_open(directory / name, framework="pt") as handle:
            return handle.get_tensor(HEAD_KEY)
    state = torch.load(directory / VALUE_HEAD_FILE, map_location="cpu", weights_only=True)
    return state[VALUE_HEAD_KEY]


def load_authors_discriminator(directory: str | Path, dtype: torch.dtype | None = None) -> Any:
    """A :class:`PrismDiscriminator` holding the authors' discriminator in ``directory`` (its backbone loaded
    by transformers, which reads their fused expert layout in either major version; its head copied)."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    from prism_plugin.discriminator.config import PrismDiscriminatorConfig
    from prism_plugin.discriminator.modeling import PrismDiscriminator

    directory = Path(directory)
    backbone_config = AutoConfig.from_pretrained(directory)
    text = backbone_config.get_text_config()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # lm_head and v_head are not backbone weights: expected to be left out
    try:
        backbone = AutoModel.from_pretrained(directory, dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
    config = PrismDiscriminatorConfig(
        backbone_config=backbone_config, segments=list(SEGMENT_NAMES), expert_mode="shared",
        head_dropout=0.1, router_aux_loss_coef=float(getattr(text, "router_aux_loss_coef", 0.01) or 0.01),
        segment_format="turn", system_prompt=AUTHORS_SYSTEM_PROMPT,
    )
    model = PrismDiscriminator.from_backbone(config, backbone)
    with torch.no_grad():
        head = next(iter(model.heads.values()))
        head.weight.copy_(_head_weight(directory).to(head.weight.dtype))
    model.config.name_or_path = str(directory)
    return model
