"""Loading a discriminator from a directory: the one place that decides what a directory holds.

Every place that takes a discriminator (``prism_discriminator``, ``prism-plugin score``,
``align-preview``, the drift monitor, ``prism_disc``'s ``model_name_or_path``) loads it here, so a
wrong path or a policy given as a discriminator gets the same clear error everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prism_plugin.errors import UserError


class NotADiscriminatorError(UserError, ValueError):
    """A directory that holds something other than a PRISM discriminator."""


def load_discriminator(path: str | Path, dtype: torch.dtype | None = torch.float32) -> Any:
    """The discriminator saved in directory ``path``, as a :class:`PrismDiscriminator`: prism-plugin's own
    format, or the authors' released one (:mod:`prism_plugin.discriminator.authors`); a clear error for a
    missing directory or for any other kind of model. ``dtype`` is what the weights are loaded in (default
    float32; None keeps the checkpoint's); the checkpoint's own dtype is kept as ``model.checkpoint_dtype``."""
    from transformers import AutoConfig, AutoModel

    import prism_plugin.discriminator  # noqa: F401  (registers the Auto classes)
    from prism_plugin.discriminator.authors import load_authors_discriminator

    directory = Path(path)
    kind = discriminator_kind(directory)
    config = AutoConfig.from_pretrained(directory)
    if kind == "prism":
        model = AutoModel.from_pretrained(directory, dtype=dtype)
    else:
        model = load_authors_discriminator(directory, dtype)
    model.checkpoint_dtype = checkpoint_dtype(config)
    return model


def discriminator_kind(path: str | Path) -> str:
    """``prism`` (prism-plugin's format) or ``authors`` (the authors' release) for a discriminator directory,
    judged from its ``config.json`` and weight headers without loading it; the errors of
    :func:`load_discriminator` for a missing directory or any other kind of model."""
    import json

    from prism_plugin.discriminator.authors import is_authors_discriminator

    directory = Path(path)
    if not (directory / "config.json").is_file():
        what = "has no config.json" if directory.is_dir() else "not found"
        raise FileNotFoundError(f"discriminator directory {what}: {directory}")
    model_type = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type == "prism_discriminator":
        return "prism"
    if is_authors_discriminator(directory):
        return "authors"
    raise NotADiscriminatorError(
        f"a PRISM discriminator is needed; {directory} is a {model_type!r} model (a policy?) — "
        "create one with `prism-plugin upcycle DENSE_DIR OUT_DIR`"
    )


def checkpoint_dtype(config: Any) -> torch.dtype:
    """The dtype a checkpoint's config says its weights are stored in (float32 when it does not say)."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    backbone = getattr(config, "backbone_config", None)
    if value is None and backbone is not None:
        value = getattr(backbone, "dtype", None) or getattr(backbone, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else torch.float32


def save_discriminator(model: Any, directory: str | Path, processor: Any = None,
                       state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Save ``model`` (with its processor) in the dtype it was loaded in (``model.checkpoint_dtype``), whatever
    dtype it trains in: a bf16 discriminator trained with fp32 master weights is saved bf16 again. The folder
    reads the same under transformers 4.57 and 5.x (:func:`prism_plugin.portable.make_portable`)."""
    from prism_plugin.portable import make_portable

    dtype = getattr(model, "checkpoint_dtype", None)
    state = state_dict if state_dict is not None else model.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.save_pretrained(directory, state_dict=state)
    if dtype is not None:  # save_pretrained records the in-memory dtype; the tensors on disk are ``dtype``
        in_memory = model.config.dtype
        model.config.dtype = str(dtype).removeprefix("torch.")
        model.config.save_pretrained(directory)
        model.config.dtype = in_memory
    if processor is not None:
        processor.save_pretrained(directory)
    make_portable(directory)
