"""Hard wall-clock limit for one function call, via a persistent killable child process.

Signal-based timeouts cannot interrupt long C-level work (a huge big-integer power inside
sympy) and only work in the main thread; a thread cannot be killed at all. So the call is
sent to a long-lived worker process (``python -m prism_plugin.rewards.timeout``); when it
does not answer within the limit it is killed, a fresh one starts in the background, and
the caller gets the default.
"""

from __future__ import annotations

import importlib
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

_HEADER = struct.Struct("<I")
_READY = "ready"


def _write(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) != n:
        raise EOFError("worker closed the pipe")
    return data


def _read(stream: BinaryIO) -> Any:
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    return pickle.loads(_read_exact(stream, size))


def _serve(warmup: str) -> None:
    """Child loop: optional warm-up ``module:function``, then answer (fn, args) requests."""
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints of the called code must not corrupt the reply stream
    if warmup:
        module, _, name = warmup.partition(":")
        try:
            getattr(importlib.import_module(module), name)()
        except Exception:  # noqa: BLE001 - failures surface through the calls
            pass
    _write(replies, _READY)
    while True:
        try:
            request = _read(requests)
        except (EOFError, OSError):
            return
        if request is None:
            return
        fn, args = request
        try:
            _write(replies, (True, fn(*args)))
        except Exception as exc:  # noqa: BLE001
            _write(replies, (False, repr(exc)))


class TimeoutWorker:
    """Runs picklable module-level functions in a child process under a hard time limit.

    ``call`` never blocks longer than ``timeout`` (plus IPC), except the very first start,
    which waits up to ``startup_timeout`` for the child's imports. Thread-safe: calls are
    serialised, and a call that cannot get the worker within its own budget gives up.
    ``warmup`` is a ``"module:function"`` the child runs once at start (its imports).
    """

    def __init__(self, warmup: str = "", startup_timeout: float = 60.0) -> None:
        self._warmup = warmup
        self._startup_timeout = startup_timeout
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._started_once = False
        self.timeouts = 0

    def _spawn(self) -> None:
        env = dict(os.environ)
        paths = [p for p in sys.path if p] + [env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "prism_plugin.rewards.timeout", self._warmup],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        self._ready = False

    def _kill(self) -> None:
        process, self._process, self._ready = self._process, None, False
        if process is not None:
            process.kill()
            try:
                process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()

    def _poll(self, budget: float) -> bool:
        assert self._process is not None and self._process.stdout is not None
        readable, _, _ = select.select([self._process.stdout], [], [], max(0.0, budget))
        return bool(readable)

    def _ensure_ready(self, budget: float) -> bool:
        if self._process is None or self._process.poll() is not None:
            self._kill()
            self._spawn()
        if not self._ready:
            if not self._poll(budget):
                return False
            try:
                self._ready = _read(self._process.stdout) == _READY  # type: ignore[arg-type]
            except (EOFError, OSError, pickle.UnpicklingError):
                self._kill()
                return False
            self._started_once = self._ready
        return self._ready

    def start(self) -> bool:
        """Start the worker now and wait for its warm-up (optional; ``call`` does it lazily)."""
        with self._lock:
            return self._ensure_ready(self._startup_timeout)

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float, default: Any = None) -> Any:
        """``fn(*args)`` in the worker; ``default`` on time-out, error or a dead worker."""
        first = not self._started_once
        if not self._lock.acquire(timeout=self._startup_timeout if first else timeout):
            return default
        try:
            if first and not self._ensure_ready(self._startup_timeout):
                return default
            deadline = time.monotonic() + timeout  # counted after the one-off first start
            if not self._ensure_ready(timeout):
                return default
            process = self._process
            assert process is not None and process.stdin is not None and process.stdout is not None
            try:
                _write(process.stdin, (fn, args))
                if self._poll(deadline - time.monotonic()):
                    ok, result = _read(process.stdout)
                    return result if ok else default
            except (EOFError, OSError, pickle.PicklingError, pickle.UnpicklingError):
                self._kill()
                return default
            self.timeouts += 1
            self._kill()
            self._spawn()  # warms up in the background for the next call
            return default
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop the worker process."""
        with self._lock:
            self._kill()


if __name__ == "__main__":
    _serve(sys.argv[1] if len(sys.argv) > 1 else "")
