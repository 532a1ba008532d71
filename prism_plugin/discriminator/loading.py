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
    from prism_plugin.discriminator.authors import is_authors_discriminator, load_authors_discriminator

    directory = Path(path)
    if not (directory / "config.json").is_file():
        what = "has no config.json" if directory.is_dir() else "not found"
        raise FileNotFoundError(f"discriminator directory {what}: {directory}")
    config = AutoConfig.from_pretrained(directory)
    if config.model_type == "prism_discriminator":
        model = AutoModel.from_pretrained(directory, dtype=dtype)
    elif is_authors_discriminator(directory):
        model = load_authors_discriminator(directory, dtype)
    else:
        raise NotADiscriminatorError(
            f"a PRISM discriminator is needed; {directory} is a {config.model_type!r} model (a policy?) — "
            "create one with `prism-plugin upcycle DENSE_DIR OUT_DIR`"
        )
    model.checkpoint_dtype = checkpoint_dtype(config)
    return model


def checkpoint_dtype(config: Any) -> torch.dtype:
    """The dtype a checkpoint's config says its weights are stored in (float32 when it does not say)."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    backbone = getattr(config, "backbone_config", None)
    if value is None and backbone is not None:
        value = getattr(backbone, "dtype", None) or getattr(backbone, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else torch.float32
