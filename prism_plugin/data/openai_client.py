"""A minimal client of an OpenAI-compatible chat-completions endpoint (standard library only).

One call, :meth:`ChatClient.complete`, sends ``POST {api_base}/chat/completions`` and returns the first
choice's text and finish reason. Transient failures (connection errors, time-outs, HTTP 429 and 5xx)
are retried with exponential backoff and jitter, honouring ``Retry-After``; any other HTTP error is
final. Requests go to the given base URL only: environment proxies are not used and redirects are
not followed (a redirect is a final error naming where it pointed).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from prism_plugin.errors import UserError

MAX_RETRY_AFTER_S = 600.0
"""The longest ``Retry-After`` honoured; a longer one waits this long."""


@dataclass(frozen=True)
class Completion:
    """The first choice of a chat completion, and what it took to get it."""

    text: str
    finish_reason: str | None
    attempts: int
    usage: dict[str, Any] | None = None


class RequestFailed(Exception):
    """A request that failed for good: after its retries, or at once for a non-transient error.
    ``status`` is the HTTP status (None for connection errors and time-outs)."""

    def __init__(self, message: str, status: int | None, attempts: int) -> None:
        super().__init__(message)
        self.message, self.status, self.attempts = message, status, attempts


def chat_endpoint(api_base: str) -> str:
    """``{api_base}/chat/completions``; a base that is not an ``http(s)://host…`` URL is a :class:`UserError`."""
    parsed = urlparse(api_base)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserError(f"--api-base must be an http:// or https:// URL with a host, got {api_base!r}")
    if parsed.username or parsed.password:
        raise UserError("--api-base must not carry credentials; name the key's variable with --api-key-env")
    if parsed.query or parsed.fragment:
        raise UserError(f"--api-base must not carry a query or fragment, got {api_base!r}")
    return api_base.rstrip("/") + "/chat/completions"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header as seconds to wait (delta-seconds or an HTTP date), None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_seconds(retry: int, base: float, cap: float, retry_after: float | None = None,
                    rng: random.Random | None = None) -> float:
    """The wait before retry number ``retry`` (1-based): ``base * 2**(retry-1)`` capped at ``cap``, with
    "equal jitter" (a uniform draw from its upper half) so parallel clients spread out; at least
    ``retry_after`` when the server sent one (capped at :data:`MAX_RETRY_AFTER_S`)."""
    step = min(cap, base * 2 ** (retry - 1))
    delay = step / 2 + (rng or random).uniform(0, step / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
    return delay


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turn every redirect into an HTTP error: requests go to the configured base URL only."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        return None


class ChatClient:
    """POSTs chat-completion requests to one endpoint; thread-safe (one opener, no shared mutable state
    but the retry counter)."""

    def __init__(self, api_base: str, model: str, *, api_key: str | None = None, timeout: float = 120.0,
                 max_retries: int = 5, backoff_base: float = 1.0, backoff_cap: float = 60.0,
                 on_retry: Callable[[str], None] | None = None) -> None:
        if timeout <= 0 or max_retries < 0 or backoff_base < 0 or backoff_cap < 0:
            raise ValueError("timeout must be > 0; max_retries, backoff_base and backoff_cap >= 0")
        self.endpoint = chat_endpoint(api_base)
        self.model, self.timeout, self.max_retries = model, timeout, max_retries
        self.backoff_base, self.backoff_cap, self.on_retry = backoff_base, backoff_cap, on_retry
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        self._lock = threading.Lock()
        self.retries = 0
        self.attempts = 0

    def __repr__(self) -> str:  # never shows the key
        return f"ChatClient({self.endpoint!r}, model={self.model!r})"

    def complete(self, messages: list[dict[str, Any]], **params: Any) -> Completion:
        """The first choice for ``messages``; ``params`` (``max_tokens``, ``temperature`` …) go into the body
        when not None. Raises :class:`RequestFailed` when the request fails for good."""
        body = {"model": self.model, "messages": messages, **{k: v for k, v in params.items() if v is not None}}
        data = json.dumps(body).encode("utf-8")
        attempt = 0
        while True:
            attempt += 1
            with self._lock:
                self.attempts += 1
            try:
                return self._parse(self._post(data), attempt)
            except RequestFailed as err:
                err.attempts = attempt
                raise
            except _Transient as err:
                if attempt > self.max_retries:
                    raise RequestFailed(f"{err.message} (gave up after {attempt} attempts)", err.status,
                                        attempt) from None
                with self._lock:
                    self.retries += 1
                if self.on_retry is not None:
                    self.on_retry(err.message)
                time.sleep(backoff_seconds(attempt, self.backoff_base, self.backoff_cap, err.retry_after))

    def _post(self, data: bytes) -> bytes:
        request = urllib.request.Request(self.endpoint, data=data, headers=self._headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            message = _error_message(err)
            if err.code == 429 or err.code >= 500:
                raise _Transient(message, err.code, retry_after_seconds(err.headers.get("Retry-After"))) from None
            if 300 <= err.code < 400:
                message += f" (redirected to {err.headers.get('Location')!r}; give that URL as --api-base)"
            raise RequestFailed(message, err.code, 0) from None
        except (OSError, http.client.HTTPException) as err:  # URLError, refused/reset connections, time-outs
            reason = err.reason if isinstance(err, urllib.error.URLError) else err
            text = "timed out" if isinstance(reason, TimeoutError) else str(reason)
            raise _Transient(f"{type(reason).__name__}: {text}" if text else type(reason).__name__, None,
                             None) from None

    def _parse(self, raw: bytes, attempt: int) -> Completion:
        try:
            payload = json.loads(raw)
            choice = payload["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            excerpt = raw[:200].decode("utf-8", "replace")
            raise RequestFailed(f"not a chat completion: {excerpt!r}", 200, attempt) from None
        content = message.get("content")
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else None
        return Completion(content if isinstance(content, str) else "", choice.get("finish_reason"), attempt, usage)


class _Transient(Exception):
    def __init__(self, message: str, status: int | None, retry_after: float | None) -> None:
        super().__init__(message)
        self.message, self.status, self.retry_after = message, status, retry_after


def _error_message(err: urllib.error.HTTPError) -> str:
    """``HTTP 404 Not Found: <the server's message>`` (an OpenAI-style ``error.message``/``detail`` if present)."""
    try:
        raw = err.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    detail = raw[:500].decode("utf-8", "replace").strip()
    try:
        payload = json.loads(raw)
        if isinstance(payload, dict):
            inner = payload.get("error", payload.get("detail", detail))
            detail = str(inner.get("message", inner) if isinstance(inner, dict) else inner)
    except ValueError:
        pass
    return f"HTTP {err.code} {err.reason}" + (f": {detail[:300]}" if detail else "")
