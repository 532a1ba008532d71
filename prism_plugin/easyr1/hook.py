"""Ray ``worker_process_setup_hook``: patch EasyR1's ``compute_policy_loss`` in a worker process.

EasyR1 trains in Ray worker processes, so a patch made in the launching process never reaches
them; Ray runs this hook in every worker it starts (``runtime_env["worker_process_setup_hook"]``)
before any task or actor code. It replaces ``verl.trainer.core_algos.compute_policy_loss`` with a
dispatcher (:func:`prism_plugin.easyr1.loss_plugin.make_dispatcher`); ``dp_actor`` binds the name
on import, so a later import gets the dispatcher and an already imported ``dp_actor`` is patched
in place. A failure raises, which makes Ray fail the worker loudly instead of training with
EasyR1's silent PPO fall-back.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from .loss_plugin import make_dispatcher, selected_loss

HOOK = "prism_plugin.easyr1.hook.setup"
"""The importable path Ray is given as ``worker_process_setup_hook``."""
CORE_ALGOS = "verl.trainer.core_algos"
DP_ACTOR = "verl.workers.actor.dp_actor"


def _is_patched(fn: Any) -> bool:
    return bool(getattr(fn, "prism_dispatcher", False))


def setup() -> None:
    """Patch ``compute_policy_loss`` in EasyR1's ``core_algos`` (and ``dp_actor`` if imported); idempotent."""
    selected_loss()  # an unknown $PRISM_EASYR1_LOSS fails here, at worker start
    core_algos = importlib.import_module(CORE_ALGOS)
    original = core_algos.compute_policy_loss
    if not _is_patched(original):
        core_algos.compute_policy_loss = make_dispatcher(original)
    dp_actor = sys.modules.get(DP_ACTOR)
    if dp_actor is not None and not _is_patched(getattr(dp_actor, "compute_policy_loss", None)):
        dp_actor.compute_policy_loss = core_algos.compute_policy_loss
    status = patch_status()
    if not status["active"]:
        raise RuntimeError(f"prism-plugin: patching EasyR1's compute_policy_loss failed: {status}")


def patch_status() -> dict[str, Any]:
    """Is the dispatcher in place in this process? ``active`` needs core_algos patched and dp_actor
    patched or not yet imported; ``loss`` is the prism loss the dispatcher would run."""
    core_algos = sys.modules.get(CORE_ALGOS)
    dp_actor = sys.modules.get(DP_ACTOR)
    core_ok = core_algos is not None and _is_patched(getattr(core_algos, "compute_policy_loss", None))
    actor_ok = None if dp_actor is None else _is_patched(getattr(dp_actor, "compute_policy_loss", None))
    return {
        "active": core_ok and actor_ok is not False,
        "core_algos": core_ok,
        "dp_actor": actor_ok,
        "loss": selected_loss(),
        "core_algos_file": getattr(core_algos, "__file__", None),
    }
