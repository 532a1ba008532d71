"""Deterministic fault injection for the kill tests: ``PRISM_KILL_AT=POINT[,POINT…]`` makes a process SIGKILL
itself the moment it reaches a named point, as a preempted or crashed job would die there;
``PRISM_TERM_AT=POINT[,…]`` sends it SIGTERM there instead (a scheduler's notice before a kill).

Points are named where they are passed: ``step`` at the start of each optimiser step, and in a checkpoint's
save ``save:model``, ``save:discriminator``, ``save:staged``, ``save:renamed``; ``POINT@N`` matches at
optimiser step N only. Unset (every real run), a point costs two environment look-ups.
"""

from __future__ import annotations

import os
import signal
import sys

KILL_AT_ENV = "PRISM_KILL_AT"
TERM_AT_ENV = "PRISM_TERM_AT"


def _named(spec: str | None, name: str, step: int | None) -> bool:
    if not spec:
        return False
    wanted = {point.strip() for point in spec.split(",")}
    return name in wanted or (step is not None and f"{name}@{step}" in wanted)


def kill_point(name: str, step: int | None = None) -> None:
    """SIGKILL this process if ``PRISM_KILL_AT`` names ``name`` (or ``name@step``); SIGTERM it if
    ``PRISM_TERM_AT`` does."""
    for env, signum in ((KILL_AT_ENV, signal.SIGKILL), (TERM_AT_ENV, signal.SIGTERM)):
        if _named(os.environ.get(env), name, step):
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signum)
