"""A small W3C WebDriver client (tests only): headless Chromium through ``chromedriver``'s HTTP API, with the
few commands the browser tests use — no Selenium dependency."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C element reference key
KEYS = {"enter": "\ue007", "tab": "\ue004", "ctrl": "\ue009", "backspace": "\ue003"}


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` seconds pass (an error)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the page may be mid-update
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}" + (f" (last error: {last_error!r})" if last_error else ""))


class Browser:
    """One headless Chromium session (``--no-sandbox``) driven by a chromedriver it starts on a loopback port."""

    def __init__(self, chromedriver: str, chromium: str, workdir: Path, width: int = 1400, height: int = 1800):
        self.port = free_port()
        self.log = (workdir / "chromedriver.log").open("w")
        self.driver = subprocess.Popen([chromedriver, f"--port={self.port}"], stdout=self.log,
                                       stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        wait_for(lambda: self._request("GET", "/status")["value"]["ready"], 30, "chromedriver")
        options = {"binary": chromium, "args": [
            "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
            f"--window-size={width},{height}", f"--user-data-dir={workdir / 'chromium-profile'}",
        ]}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}
        self.session = self._request("POST", "/session", caps)["value"]["sessionId"]

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"webdriver {method} {path}: {exc.read().decode(errors='replace')[:500]}") from None

    def command(self, method: str, path: str, body: dict | None = None) -> Any:
        return self._request(method, f"/session/{self.session}{path}", body)["value"]

    def get(self, url: str) -> None:
        self.command("POST", "/url", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body; ``arguments[i]``) in the page and return its value."""
        return self.command("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> dict:
        return self.command("POST", "/element", {"using": "css selector", "value": css})

    def click(self, element: dict) -> None:
        self.command("POST", f"/element/{element[ELEMENT]}/click", {})

    def type(self, element: dict, text: str) -> None:
        self.command("POST", f"/element/{element[ELEMENT]}/value", {"text": text})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.command("GET", "/screenshot")))
        return path

    def quit(self) -> None:
        try:
            self._request("DELETE", f"/session/{self.session}")
        finally:
            self.driver.terminate()
            self.driver.wait(timeout=30)
            self.log.close()
