"""``python -m prism_plugin.easyr1 config=… key=value …``: EasyR1's trainer with PRISM's loss plugins.

What it does before delegating to ``verl.trainer.main.main`` (EasyR1's own entry point):

1. resolves ``prism://NAME[:fn]`` and ``${prism:NAME}`` references (reward, format prompt, presets) to
   installed paths (:mod:`prism_plugin.easyr1.paths`);
2. takes ``worker.actor.loss_type=prism_*`` (command line or config file) out of EasyR1's config:
   it becomes the nearest native value (``prism_gspo`` -> ``gspo``, ``prism_dapo`` -> ``default`` …),
   or is dropped on EasyR1 builds without ``loss_type`` (v0.3.2), and the prism name travels in
   ``$PRISM_EASYR1_LOSS`` instead;
3. patches ``compute_policy_loss`` in this process and wraps ``ray.init`` so the runtime_env EasyR1
   starts Ray with also carries ``worker_process_setup_hook`` (the patch) and ``PRISM_EASYR1_LOSS``
   to every worker, keeping EasyR1's own ``env_vars``;
4. right after Ray starts, runs a probe task in a worker and stops with a clear error unless the
   patch is active there and names the requested loss (EasyR1 would otherwise train plain PPO).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import hook
from .loss_plugin import ENV_LOSS, PREFIX, check_loss_name, native_loss_type
from .paths import has_reference, resolve_reference

LOSS_KEY = "worker.actor.loss_type"
ENV_ALLOW_OMEGACONF = "PRISM_EASYR1_ALLOW_OMEGACONF"


class LaunchError(RuntimeError):
    """The run cannot start as asked (missing EasyR1, inactive patch, conflicting settings)."""


@dataclass
class LaunchPlan:
    """EasyR1's command-line arguments after rewriting, and what the rewriting decided."""

    args: list[str]
    loss: str | None = None
    config_path: str | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- argument rewriting


def _resolve_tree(node: Any) -> tuple[Any, bool]:
    """Resolve every prism reference in a nested dict/list; report whether anything changed."""
    if isinstance(node, str) and has_reference(node):
        return resolve_reference(node), True
    if isinstance(node, dict):
        changed = False
        for key, value in node.items():
            node[key], hit = _resolve_tree(value)
            changed |= hit
        return node, changed
    if isinstance(node, list):
        changed = False
        for i, value in enumerate(node):
            node[i], hit = _resolve_tree(value)
            changed |= hit
        return node, changed
    return node, False


def _rewrite_loss(value: str | None, has_loss_type: bool, where: str) -> tuple[str | None, str | None]:
    """(prism loss or None, the value EasyR1 should see; None drops the key)."""
    if value is None:
        return None, None
    if value.startswith(PREFIX):
        loss = check_loss_name(value)
        return loss, native_loss_type(loss) if has_loss_type else None
    if not has_loss_type:
        raise LaunchError(
            f"{where}: {LOSS_KEY}={value} but this EasyR1 has no loss_type option (v0.3.2 or older); "
            f"use {LOSS_KEY}=prism_{value} through this launcher, or EasyR1 commit fd9a5d9 or later"
        )
    return None, value


def plan_launch(argv: Sequence[str], *, has_loss_type: bool, out_dir: str | Path | None = None) -> LaunchPlan:
    """Rewrite EasyR1 ``key=value`` arguments (see the module docstring); pure apart from writing a
    rewritten copy of the config file into ``out_dir`` (a fresh temp dir by default) when needed."""
    from omegaconf import OmegaConf

    plan = LaunchPlan(args=[])
    cli_loss_index, config_index = None, None
    for token in argv:
        key, sep, value = token.partition("=")
        if sep and has_reference(value):
            value = resolve_reference(value)
            token = f"{key}={value}"
        if sep and key.lstrip("+") == "config":
            config_index, plan.config_path = len(plan.args), value
        if sep and key == LOSS_KEY:
            cli_loss_index = len(plan.args)
        plan.args.append(token)

    cli_loss = plan.args[cli_loss_index].partition("=")[2] if cli_loss_index is not None else None
    loss, cli_value = _rewrite_loss(cli_loss, has_loss_type, "command line")

    if plan.config_path is not None:
        tree = OmegaConf.to_container(OmegaConf.load(plan.config_path), resolve=False)
        tree, changed = _resolve_tree(tree)
        actor = (tree.get("worker") or {}).get("actor") or {}
        if "loss_type" in actor:
            if cli_loss is None:
                loss, file_value = _rewrite_loss(str(actor["loss_type"]), has_loss_type, plan.config_path)
                if loss is not None:
                    changed = True
                    if file_value is None:
                        del actor["loss_type"]
                    else:
                        actor["loss_type"] = file_value
            elif not has_loss_type:  # the command line wins; EasyR1 would reject the file's key
                del actor["loss_type"]
                changed = True
        if changed:
            target_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="prism-easyr1-"))
            target_dir.mkdir(parents=True, exist_ok=True)
            target = target_dir / Path(plan.config_path).name
            # JSON is YAML: no PyYAML dumper involved (EasyR1 registers a global float representer that
            # rounds 3e-4 to 0.0), and the file is read back to prove nothing changed on the way.
            target.write_text(json.dumps(tree, indent=1) + "\n", encoding="utf-8")
            if OmegaConf.to_container(OmegaConf.load(target), resolve=False) != tree:
                raise LaunchError(f"rewritten config {target} does not read back as written")
            plan.notes.append(f"config {plan.config_path} rewritten to {target}")
            plan.config_path = str(target)
            plan.args[config_index] = f"{plan.args[config_index].partition('=')[0]}={target}"

    if cli_loss_index is not None:
        if cli_value is None:
            plan.args.pop(cli_loss_index)
        else:
            plan.args[cli_loss_index] = f"{LOSS_KEY}={cli_value}"
    plan.loss = loss
    if loss is not None:
        shown = native_loss_type(loss) if has_loss_type else "(not set: this EasyR1 has none)"
        plan.notes.append(f"loss {loss}: EasyR1 loss_type {shown}, ${ENV_LOSS}={loss} selects the plugin")
    return plan


# --------------------------------------------------------------------------- EasyR1 and Ray


def easyr1_has_loss_type() -> bool:
    """Does the installed EasyR1's ``ActorConfig`` have a ``loss_type`` field (commit cf41904+)?"""
    import dataclasses

    config = importlib.import_module("verl.workers.actor.config")
    return "loss_type" in {f.name for f in dataclasses.fields(config.ActorConfig)}


def check_easyr1() -> None:
    """Fail clearly unless ``verl`` is EasyR1 and its omegaconf can parse EasyR1's config."""
    try:
        core_algos = importlib.import_module(hook.CORE_ALGOS)
    except ImportError as exc:
        raise LaunchError(f"EasyR1 (package 'verl', from its source checkout) is not importable: {exc}") from exc
    params = inspect.signature(core_algos.compute_policy_loss).parameters
    if "clip_ratio_dual" not in params or "response_mask" not in params:
        raise LaunchError(
            f"'verl' at {core_algos.__file__} is not EasyR1 (no EasyR1 compute_policy_loss); "
            "volcengine verl shares the package name: install one or the other"
        )
    import omegaconf

    major, minor = (int(x) for x in omegaconf.__version__.split(".")[:2])
    if (major, minor) >= (2, 4) and not os.environ.get(ENV_ALLOW_OMEGACONF):
        raise LaunchError(
            f"omegaconf {omegaconf.__version__} cannot parse EasyR1's config (trainer.logger is a Tuple[str]); "
            f"pip install omegaconf==2.3.0 (or set {ENV_ALLOW_OMEGACONF}=1 to try anyway)"
        )


def merge_runtime_env(runtime_env: dict[str, Any] | None, loss: str) -> dict[str, Any]:
    """``runtime_env`` plus the setup hook and ``PRISM_EASYR1_LOSS``; EasyR1's own entries are kept."""
    merged = dict(runtime_env or {})
    existing = merged.get("worker_process_setup_hook")
    if existing not in (None, hook.HOOK):
        raise LaunchError(f"runtime_env already has worker_process_setup_hook={existing!r}; cannot add {hook.HOOK}")
    merged["worker_process_setup_hook"] = hook.HOOK
    merged["env_vars"] = {**(merged.get("env_vars") or {}), ENV_LOSS: loss}
    return merged


def worker_patch_status() -> dict[str, Any]:
    """Run inside a Ray worker by the probe: the worker's :func:`hook.patch_status`."""
    return {**hook.patch_status(), "pid": os.getpid()}


def probe_worker(ray: Any, loss: str, timeout: float = 600.0) -> dict[str, Any]:
    """Ask a fresh Ray worker whether the patch is active there and selects ``loss``; raise if not."""
    status = ray.get(ray.remote(num_cpus=0)(worker_patch_status).remote(), timeout=timeout)
    if not status.get("active") or status.get("loss") != loss:
        raise LaunchError(
            f"prism loss plugin is not active in a Ray worker (expected {loss}): {status}. EasyR1 would silently "
            "train its built-in loss; check that prism-plugin is installed in the workers' environment"
        )
    return status


def wrap_ray_init(ray: Any, loss: str, *, probe: bool = True, log: Callable[[str], None] = print) -> None:
    """Replace ``ray.init`` so EasyR1's call carries our runtime_env and is followed by the probe."""
    if getattr(ray.init, "prism_wrapped", False):
        return
    if ray.is_initialized():
        raise LaunchError("Ray is already initialised in this process; the launcher must start it")
    original = ray.init

    def init(*args: Any, **kwargs: Any) -> Any:
        kwargs["runtime_env"] = merge_runtime_env(kwargs.get("runtime_env"), loss)
        context = original(*args, **kwargs)
        if probe:
            status = probe_worker(ray, loss)
            log(f"prism-plugin: {loss} active in Ray worker pid {status['pid']} ({status['core_algos_file']})")
        return context

    init.prism_wrapped = True  # type: ignore[attr-defined]
    init.__wrapped__ = original  # type: ignore[attr-defined]
    ray.init = init


def run(
    argv: Sequence[str],
    *,
    easyr1_main: Callable[[], Any] | None = None,
    ray: Any = None,
    has_loss_type: bool | None = None,
    log: Callable[[str], None] = print,
) -> Any:
    """Plan, patch, and call EasyR1's ``main`` with the rewritten ``sys.argv`` (injectable for tests)."""
    if easyr1_main is None:
        check_easyr1()
    if has_loss_type is None:
        has_loss_type = easyr1_has_loss_type()
    plan = plan_launch(argv, has_loss_type=has_loss_type)
    for note in plan.notes:
        log(f"prism-plugin: {note}")
    if plan.loss is not None:
        os.environ[ENV_LOSS] = plan.loss
        hook.setup()
        status = hook.patch_status()
        if not status["active"] or status["loss"] != plan.loss:
            raise LaunchError(f"prism loss plugin is not active in the launcher: {status}")
        if ray is None:
            import ray
        wrap_ray_init(ray, plan.loss, log=log)
    if easyr1_main is None:
        easyr1_main = importlib.import_module("verl.trainer.main").main
    sys.argv = [sys.argv[0] if sys.argv else "prism_plugin.easyr1", *plan.args]
    return easyr1_main()


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry: ``python -m prism_plugin.easyr1 config=… …``."""
    try:
        run(sys.argv[1:] if argv is None else argv)
    except LaunchError as exc:
        print(f"prism-plugin: {exc}", file=sys.stderr)
        return 2
    return 0
