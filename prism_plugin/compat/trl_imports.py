"""Make trl 0.24 importable under transformers 5.

trl 0.24 computes its optional-package flags (``trl.import_utils._<pkg>_available``) with a
transformers helper whose return type changed in transformers 5: the flags become
``(bool, version)`` tuples, which are always truthy, so ``trl.trainer.callbacks`` imports
absent packages such as ``mergekit``. :func:`fix_trl_import_flags` resets every flag to the
package's real availability; call it before importing ``trl.trainer``.
"""

from __future__ import annotations

import importlib
import importlib.util

_SUFFIX = "_available"


def fix_trl_import_flags() -> dict[str, bool]:
    """Normalise ``trl.import_utils._*_available`` to real availability; returns the flags changed."""
    import_utils = importlib.import_module("trl.import_utils")
    changed: dict[str, bool] = {}
    for name in dir(import_utils):
        if not (name.startswith("_") and name.endswith(_SUFFIX)) or name.startswith("__"):
            continue
        value = getattr(import_utils, name)
        if callable(value):
            continue
        package = name[1 : -len(_SUFFIX)]
        available = importlib.util.find_spec(package) is not None
        if value is not available:
            setattr(import_utils, name, available)
            changed[name] = available
    return changed
