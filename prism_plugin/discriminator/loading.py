"""Loading a discriminator from a directory: the one place that decides what a directory holds.

Every place that takes a discriminator (``prism_discriminator``, ``prism-plugin score``,
``align-preview``, the drift monitor, ``prism_disc``'s ``model_name_or_path``) loads it here, so a
wrong path or a policy given as a discriminator gets the same clear error everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prism_plugin.errors import UserError


class NotADiscriminatorError(UserError, ValueError):
    """A directory that holds something other than a PRISM discriminator."""


def load_discriminator(path: str | Path, **kwargs: Any) -> Any:
    """The PRISM discriminator saved in directory ``path``; a clear error for a missing directory or for any
    other kind of model."""
    from transformers import AutoConfig, AutoModel

    import prism_plugin.discriminator  # noqa: F401  (registers the Auto classes)

    directory = Path(path)
    if not (directory / "config.json").is_file():
        what = "has no config.json" if directory.is_dir() else "not found"
        raise FileNotFoundError(f"discriminator directory {what}: {directory}")
    config = AutoConfig.from_pretrained(directory)
    if config.model_type != "prism_discriminator":
        raise NotADiscriminatorError(
            f"a PRISM discriminator is needed; {directory} is a {config.model_type!r} model (a policy?) — "
            "create one with `prism-plugin upcycle DENSE_DIR OUT_DIR`"
        )
    return AutoModel.from_pretrained(directory, **kwargs)
