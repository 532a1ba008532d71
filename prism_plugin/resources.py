"""The configs and example scripts that ship with the package, and copying them into a working folder.

A wheel carries ``yaml/`` and ``examples/`` inside the package (``prism_plugin/shipped/``); a source checkout
keeps them at the repository root. :func:`shipped_root` finds whichever is there, so ``prism-plugin paths``
and ``prism-plugin init`` work from a wheel and from a clone alike.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED = ("yaml", "examples")


def shipped_root() -> Path:
    """The folder holding ``yaml/`` and ``examples/``: inside the installed wheel, else the source checkout."""
    packaged = PACKAGE_DIR / "shipped"
    return packaged if (packaged / "yaml").is_dir() else PACKAGE_DIR.parent


def init_folder(target: str | Path, force: bool = False) -> list[str]:
    """Copy ``yaml/`` and ``examples/`` into ``target`` (created), so the configs' relative paths and the
    tiny pipeline run from there (``cd target && bash examples/tiny_pipeline.sh``); returns what was
    copied. Existing files are kept unless ``force``."""
    from prism_plugin.errors import UserError

    target = Path(target)
    clashes = [name for name in SHIPPED if (target / name).exists()]
    if clashes and not force:
        raise UserError(f"{target} already has {', '.join(clashes)}; use --force to overwrite")
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in SHIPPED:
        shutil.copytree(shipped_root() / name, target / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
        copied.append(str(target / name))
    return copied
