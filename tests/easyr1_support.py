"""EasyR1 (``EASYR1_SRC``) on a CPU machine: its config classes and reward manager without vllm/ray.

``verl.workers.rollout`` imports vllm and ``verl.workers.reward`` imports ``verl.protocol`` (ray,
tensordict) in their package ``__init__``; both are registered here as plain namespace-like packages
that expose only their config class, so the real ``config.py`` / ``function.py`` files load
unchanged. Nothing of EasyR1 is copied.

Isolation: importing ``verl`` registers a global PyYAML float representer (``verl.utils.py_functional``,
rounding 3e-4 to 0.0), which the loaders here undo; :func:`fresh_loss_modules` gives a test its own
``core_algos`` to patch; :func:`no_global_changes` fails a test that leaves the environment,
``sys.argv``, PyYAML's representers, a patched ``compute_policy_loss`` or a wrapped ``ray.init`` behind.
Supported checkouts: b44b311 (HEAD at the time of writing) and v0.3.2, whose ``compute_policy_loss``
has no ``tau_*`` / ``loss_type`` keywords (PPO only): :func:`policy_loss_keywords`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import yaml
from prism_plugin.easyr1 import hook, loss_plugin

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


@contextmanager
def _yaml_representers_kept() -> Iterator[None]:
    """Undo what an import adds to ``yaml.Dumper``'s representers (``verl`` adds a rounding float one)."""
    own = "yaml_representers" in yaml.Dumper.__dict__
    saved = dict(yaml.Dumper.yaml_representers)
    try:
        yield
    finally:
        if own:
            yaml.Dumper.yaml_representers.clear()
            yaml.Dumper.yaml_representers.update(saved)
        elif "yaml_representers" in yaml.Dumper.__dict__:
            del yaml.Dumper.yaml_representers


def import_easyr1(name: str, root: Path) -> types.ModuleType:
    """Import EasyR1 module ``name`` from the checkout ``root`` without its global PyYAML side effect."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    with _yaml_representers_kept():
        verl = importlib.import_module("verl")
        if not Path(verl.__file__).resolve().is_relative_to(root):
            raise ImportError(f"another 'verl' is imported ({verl.__file__})")
        return importlib.import_module(name)


def load_easyr1(root: Path) -> Any:
    """EasyR1's ``verl.trainer.config`` module from ``root`` (light packages registered first)."""
    import_easyr1("verl", root)
    with _yaml_representers_kept():
        for name, export in LIGHT_PACKAGES.items():
            _light_package(name, root, export)
    return import_easyr1("verl.trainer.config", root)


def easyr1_reward_manager(root: Path) -> Any:
    """EasyR1's ``verl.workers.reward.function`` module (the reward loader and batch managers)."""
    load_easyr1(root)
    with _yaml_representers_kept():
        _protocol_stub()
    return import_easyr1("verl.workers.reward.function", root)


def batch_reward_manager(function: Any) -> type:
    """The class EasyR1's trainer builds for a ``REWARD_TYPE = "batch"`` file: ``AutoRewardManager`` (b44b311,
    reads the type from the file) or, on v0.3.2, ``BatchFunctionRewardManager`` (``reward_type: batch``)."""
    return getattr(function, "AutoRewardManager", None) or function.BatchFunctionRewardManager


# --------------------------------------------------------------------------- compute_policy_loss versions

POLICY_LOSS_KEYWORDS = {
    "b44b311": ("old_log_probs", "log_probs", "advantages", "response_mask", "clip_ratio_low", "clip_ratio_high",
                "clip_ratio_dual", "tau_positive", "tau_negative", "loss_type", "loss_avg_mode"),
    "v0.3.2": ("old_log_probs", "log_probs", "advantages", "response_mask", "clip_ratio_low", "clip_ratio_high",
               "clip_ratio_dual", "loss_avg_mode"),
}
"""``compute_policy_loss``'s named keywords per supported EasyR1 (``loss_type`` and ``tau_*``: cf41904 on)."""


def policy_loss_keywords(core_algos: types.ModuleType) -> tuple[str, ...]:
    """The named keywords of this EasyR1's ``compute_policy_loss``: one of :data:`POLICY_LOSS_KEYWORDS`."""
    fn = inspect.unwrap(core_algos.compute_policy_loss)
    names = tuple(name for name, p in inspect.signature(fn).parameters.items() if p.kind is not p.VAR_KEYWORD)
    if names not in POLICY_LOSS_KEYWORDS.values():
        raise AssertionError(f"unknown EasyR1 compute_policy_loss keywords {names} ({core_algos.__file__})")
    return names


def xfail_without_loss_type(request: pytest.FixtureRequest, keywords: tuple[str, ...], loss_type: str) -> None:
    """A strict expected failure where this EasyR1 cannot run native ``loss_type`` (v0.3.2 has only its PPO
    loss): the comparison still runs, against EasyR1's PPO loss, and must fail — a pass would mean the case no
    longer tests what it claims."""
    if loss_type != "default" and "loss_type" not in keywords:
        request.applymarker(pytest.mark.xfail(
            strict=True, reason=f"EasyR1 without loss_type (v0.3.2 or older) has no native {loss_type!r} loss"))


# --------------------------------------------------------------------------- isolation

LOSS_MODULES = (hook.CORE_ALGOS, hook.DP_ACTOR)
"""The EasyR1 modules whose ``compute_policy_loss`` the setup hook patches."""
ENV_NOT_OURS = {
    "PYTEST_CURRENT_TEST": "pytest sets it for each test phase",
    "TORCHINDUCTOR_CACHE_DIR": "torch._inductor writes its default cache dir there on first use",
    "RAY_CLIENT_MODE": "import ray sets it to 0",
}
"""Environment variables :func:`global_changes` ignores: process-wide state that other code owns."""
_ABSENT = object()


def _package_attr(name: str) -> Any:
    package, _, child = name.rpartition(".")
    return getattr(sys.modules.get(package), child, _ABSENT)


@contextmanager
def fresh_loss_modules() -> Iterator[types.ModuleType]:
    """A freshly imported ``core_algos`` (no ``dp_actor``, no ``$PRISM_EASYR1_LOSS``) for a test to patch.

    Afterwards ``sys.modules``, the ``verl.trainer`` / ``verl.workers.actor`` package attributes and
    ``$PRISM_EASYR1_LOSS`` are as they were, so the patch stays with the discarded module.
    """
    modules = {name: sys.modules.pop(name, None) for name in LOSS_MODULES}
    attrs = {name: _package_attr(name) for name in LOSS_MODULES}
    env = os.environ.pop(loss_plugin.ENV_LOSS, None)
    try:
        with _yaml_representers_kept():
            core_algos = importlib.import_module(hook.CORE_ALGOS)
        yield core_algos
    finally:
        for name in LOSS_MODULES:
            if modules[name] is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = modules[name]
            package, _, child = name.rpartition(".")
            if package in sys.modules:
                if attrs[name] is _ABSENT:
                    sys.modules[package].__dict__.pop(child, None)
                else:
                    setattr(sys.modules[package], child, attrs[name])
        if env is None:
            os.environ.pop(loss_plugin.ENV_LOSS, None)
        else:
            os.environ[loss_plugin.ENV_LOSS] = env


@contextmanager
def kept_environ() -> Iterator[None]:
    """Undo every ``os.environ`` change made in the block (``ray.init`` sets PYTHONBREAKPOINT, RAY_* …)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def global_state() -> dict[str, Any]:
    """What :func:`global_changes` compares: environment, ``sys.argv``, PyYAML's representers, loss modules."""
    return {
        "os.environ": dict(os.environ),
        "sys.argv": list(sys.argv),
        "yaml.Dumper representers": dict(yaml.Dumper.yaml_representers),
        **{f"sys.modules[{name!r}]": sys.modules.get(name) for name in LOSS_MODULES},
    }


def global_changes(before: dict[str, Any]) -> list[str]:
    """What a test left behind since ``before`` (a :func:`global_state`): changed environment variables
    (bar :data:`ENV_NOT_OURS`), ``sys.argv``, PyYAML representers, a replaced loss module, a patched
    ``compute_policy_loss``, a package attribute that is not the module in ``sys.modules``, a wrapped
    ``ray.init``. Importing a loss module for the first time is not a change."""
    after = global_state()
    env_before, env_after = before["os.environ"], after["os.environ"]
    problems = [f"os.environ[{key!r}]" for key in sorted(env_before.keys() | env_after.keys())
                if env_before.get(key) != env_after.get(key) and key not in ENV_NOT_OURS]
    for key, value in before.items():
        if key != "os.environ" and value != after[key] and not (key.startswith("sys.modules") and value is None):
            problems.append(key)
    for name in LOSS_MODULES:
        module = sys.modules.get(name)
        if module is None:
            continue
        if getattr(getattr(module, "compute_policy_loss", None), "prism_dispatcher", False):
            problems.append(f"{name}.compute_policy_loss patched")
        if _package_attr(name) not in (_ABSENT, module):
            problems.append(f"package attribute {name} is not sys.modules[{name!r}]")
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray.init, "prism_wrapped", False):
        problems.append("ray.init wrapped")
    return problems


@contextmanager
def no_global_changes() -> Iterator[None]:
    """Fail unless the block leaves the process as it found it (see :func:`global_changes`)."""
    before = global_state()
    yield
    problems = global_changes(before)
    assert not problems, f"test left global state modified: {problems}"


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
