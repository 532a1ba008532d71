"""Absolute paths of the files EasyR1 must be given by path (reward, format prompt, presets).

EasyR1 reads its reward function and format prompt only from file paths, so the installed copies
are named here; ``prism://NAME[:suffix]`` references (accepted by the launcher) resolve to them.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SCHEME = "prism://"

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


def resolve_reference(value: str) -> str:
    """``prism://NAME[:suffix]`` -> ``/abs/path[:suffix]``; any other string is returned unchanged."""
    if not value.startswith(SCHEME):
        return value
    name, sep, suffix = value[len(SCHEME):].partition(":")
    return f"{path_of(name)}{sep}{suffix}"
