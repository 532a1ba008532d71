"""Absolute paths of the files EasyR1 must be given by path (reward, format prompt, presets).

EasyR1 reads its reward function and format prompt only from file paths, so the installed copies
are named here. The launcher resolves two spellings of a reference to them:

- ``prism://NAME[:suffix]``, a whole value (``config=prism://preset-gspo`` on the command line);
- ``${prism:NAME}`` anywhere in a value (``"${prism:reward}:compute_score"``), the spelling the
  presets use: to plain EasyR1 it is an OmegaConf interpolation with no resolver, so EasyR1 stops
  while loading its config, naming the key, instead of printing "not found" and training without
  the format prompt (or failing at the first reward call).
"""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SCHEME = "prism://"
INTERPOLATION = re.compile(r"\$\{prism:([^}]*)\}")
"""``${prism:NAME}`` inside a config value."""

_PACKAGED = {
    "reward": "reward.py",
    "format-prompt": "prism_format.jinja",
}
_PRESETS = {"preset-grpo": "rlvr_grpo.yaml", "preset-dapo": "rlvr_dapo.yaml", "preset-gspo": "rlvr_gspo.yaml"}


def _preset_path(file_name: str) -> Path:
    # Wheels carry the presets inside the package (force-include); a source checkout keeps them in yaml/.
    packaged = PACKAGE_DIR / "presets" / file_name
    return packaged if packaged.is_file() else PACKAGE_DIR.parents[1] / "yaml" / file_name


def names() -> list[str]:
    """Every name ``path_of`` knows."""
    return [*_PACKAGED, *_PRESETS]


def path_of(name: str) -> Path:
    """The absolute path of the installed file ``name`` (``reward``, ``format-prompt``, ``preset-…``)."""
    if name in _PACKAGED:
        path = PACKAGE_DIR / _PACKAGED[name]
    elif name in _PRESETS:
        path = _preset_path(_PRESETS[name])
    else:
        raise KeyError(f"unknown prism-plugin file {name!r}; known: {', '.join(names())}")
    if not path.is_file():
        raise FileNotFoundError(f"prism-plugin file {name!r} is missing from this install: {path}")
    return path


def has_reference(value: str) -> bool:
    """Does ``value`` hold a ``prism://`` or ``${prism:…}`` reference?"""
    return value.startswith(SCHEME) or INTERPOLATION.search(value) is not None


def resolve_reference(value: str) -> str:
    """``prism://NAME[:suffix]`` -> ``/abs/path[:suffix]``; each ``${prism:NAME}`` -> ``/abs/path``;
    a string without references is returned unchanged."""
    if value.startswith(SCHEME):
        name, sep, suffix = value[len(SCHEME):].partition(":")
        return f"{path_of(name)}{sep}{suffix}"
    return INTERPOLATION.sub(lambda match: str(path_of(match.group(1))), value)
