"""EasyR1 (``EASYR1_SRC``) on a CPU machine: its config classes and reward manager without vllm/ray.

``verl.workers.rollout`` imports vllm and ``verl.workers.reward`` imports ``verl.protocol`` (ray,
tensordict) in their package ``__init__``; both are registered here as plain namespace-like packages
that expose only their config class, so the real ``config.py`` / ``function.py`` files load
unchanged. Nothing of EasyR1 is copied.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest

LIGHT_PACKAGES = {"verl.workers.rollout": "RolloutConfig", "verl.workers.reward": "RewardConfig"}


def easyr1_root(required: bool = True) -> Path | None:
    """The EasyR1 checkout named by ``EASYR1_SRC`` (on ``sys.path``), else skip (or None)."""
    src = os.environ.get("EASYR1_SRC")
    if not src:
        if required:
            pytest.skip("EASYR1_SRC is not set (path to an EasyR1 checkout)")
        return None
    root = Path(src).resolve()
    if not (root / "verl" / "trainer" / "config.py").is_file():
        raise FileNotFoundError(f"EASYR1_SRC={src} has no verl/trainer/config.py")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def _light_package(name: str, root: Path, export: str) -> None:
    module = sys.modules.get(name)
    if module is not None and hasattr(module, export):
        return
    package = types.ModuleType(name)
    package.__path__ = [str(root / Path(*name.split(".")))]
    sys.modules[name] = package
    setattr(package, export, getattr(importlib.import_module(f"{name}.config"), export))


def _protocol_stub() -> None:
    try:
        importlib.import_module("verl.protocol")
    except ImportError:  # ray / tensordict absent: the reward manager only type-hints DataProto
        stub = types.ModuleType("verl.protocol")
        stub.DataProto = object
        sys.modules["verl.protocol"] = stub


def load_easyr1(root: Path) -> Any:
    """EasyR1's ``verl.trainer.config`` module from ``root`` (light packages registered first)."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    verl = importlib.import_module("verl")
    if not Path(verl.__file__).resolve().is_relative_to(root):
        raise ImportError(f"another 'verl' is imported ({verl.__file__})")
    for name, export in LIGHT_PACKAGES.items():
        _light_package(name, root, export)
    return importlib.import_module("verl.trainer.config")


def easyr1_reward_manager(root: Path) -> Any:
    """EasyR1's ``verl.workers.reward.function`` module (the reward loader and batch manager)."""
    load_easyr1(root)
    _protocol_stub()
    return importlib.import_module("verl.workers.reward.function")


def config_keys(config_cls: type) -> dict[str, list[str]]:
    """Every settable dotted key of EasyR1's ``PPOConfig``: leaves, sections, and free dicts.

    Fields with ``init=False`` are EasyR1's "auto keys" (filled by post_init); they are listed apart.
    """
    leaves, sections, free_dicts, auto = [], [], [], []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if not f.init:
                auto.append(key)
            elif dataclasses.is_dataclass(default):
                sections.append(key)
                walk(type(default), f"{key}.")
            elif isinstance(default, dict):
                free_dicts.append(key)
            else:
                leaves.append(key)

    walk(config_cls, "")
    return {"keys": sorted(leaves), "sections": sorted(sections), "free_dicts": sorted(free_dicts),
            "auto_keys": sorted(auto)}
