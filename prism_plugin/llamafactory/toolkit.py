"""What prism-plugin knows of the installed LLaMA-Factory: the versions its patches are written against (and the
one line for any other), and its argument parser's complaint about unknown keys, made one clear line."""

from __future__ import annotations

import dataclasses

SUPPORTED_LLAMAFACTORY = ("0.9.5",)


class UnsupportedLlamaFactoryError(RuntimeError):
    """LLaMA-Factory's internals differ from the versions prism-plugin was written against."""


def supported_versions() -> str:
    """The supported LLaMA-Factory versions as a requirement (``llamafactory==0.9.5``)."""
    return f"llamafactory=={' / '.join(SUPPORTED_LLAMAFACTORY)}"


def llamafactory_version() -> str:
    """The installed LLaMA-Factory's version (``unknown`` where it does not say)."""
    try:
        from llamafactory.extras.env import VERSION
    except Exception:  # another layout of LLaMA-Factory's package
        return "unknown"
    return str(VERSION)


def untested_version_note() -> str | None:
    """One line for an installed LLaMA-Factory that is not a supported version (its patches did apply)."""
    version = llamafactory_version()
    if version in SUPPORTED_LLAMAFACTORY:
        return None
    return (f"prism-plugin: LLaMA-Factory {version} is untested; prism-plugin supports {supported_versions()} "
            "(the PRISM stages may fail; LlamaBoard offers them only on a supported version)")


def unknown_keys_message(listed: str) -> str:
    """``keys not known to LLaMA-Factory or prism-plugin: 'x' (did you mean 'y'?)`` for the parser's list."""
    import ast

    from llamafactory.hparams.parser import _TRAIN_ARGS

    from prism_plugin.errors import did_you_mean

    known = [f.name for cls in _TRAIN_ARGS for f in dataclasses.fields(cls)]
    keys = ast.literal_eval(listed) if listed.startswith("[") else [listed]
    return "unknown keys: " + ", ".join(f"{key!r}{did_you_mean(str(key), known)}" for key in keys)
