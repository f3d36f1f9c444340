"""A real headless Chromium (Debian's `chromium`) driven over the DevTools protocol on a pipe, for page tests.

`--remote-debugging-pipe` makes Chromium read protocol messages from fd 3 and write its answers and events to fd 4,
each a JSON text ended by a NUL byte: no port, no websocket library. The page's console errors, uncaught
exceptions, log entries and every network request (with its failure or status) are recorded as events, so a test
can assert that a page loads cleanly and reaches nothing outside its folder.

    with Browser() as browser:
        page = browser.open(Path("report.html").resolve().as_uri())
        page.evaluate("document.title")
        page.errors(), page.requests(), page.failed_requests()
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe", "--window-size=1400,1000", "about:blank")


def find_chromium() -> str | None:
    """The Chromium executable on PATH, or None."""
    return next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)


class Browser:
    """One headless Chromium process with a fresh profile; `open` gives a `Page`.

    Args:
        executable: the Chromium binary (default: `find_chromium()`).
        timeout: seconds to wait for any one answer or event before failing.
    """

    def __init__(self, executable: str | None = None, timeout: float = 60.0) -> None:
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise RuntimeError("chromium is not installed")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="hnp-chromium-")
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Browser:
        to_child, self._write_fd = os.pipe()
        self._read_fd, from_child = os.pipe()

        def pipes_at_3_and_4() -> None:  # where --remote-debugging-pipe looks for them
            # copies first: a pipe may already be fd 3 or 4, and dup2 onto itself would keep it close-on-exec
            reading, writing = os.dup(to_child), os.dup(from_child)
            os.dup2(reading, 3)
            os.dup2(writing, 4)

        self.process = subprocess.Popen(
            [self.executable, *FLAGS[:-1], f"--user-data-dir={self.profile}", FLAGS[-1]],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=pipes_at_3_and_4, close_fds=False,
        )
        os.close(to_child)
        os.close(from_child)
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._write_fd)
        os.close(self._read_fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send one protocol command and wait for its answer (events arriving meanwhile are recorded)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        answer = self._wait(lambda m: m.get("id") == self._next_id)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def wait_event(self, method: str, session: str) -> dict[str, Any]:
        """The first recorded or arriving event `method` of `session`."""
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        return self._wait(lambda m: m.get("method") == method and m.get("sessionId") == session)

    def _wait(self, wanted: Any) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read_fd], [], [], left)[0]:
                raise RuntimeError(f"chromium did not answer within {self.timeout:.0f} s")
            chunk = os.read(self._read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the protocol pipe (it exited)")
            self._buffer += chunk

    def open(self, url: str) -> Page:
        """A new tab with console, log, network and page events on, navigated to `url` and loaded."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_event("Page.loadEventFired", session)
        return Page(self, session)


class Page:
    """One attached tab: evaluate script, read what happened, take a screenshot."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited), or an error with the page's message."""
        result = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": True}, session=self.session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _events(self, method: str) -> list[dict[str, Any]]:
        return [e["params"] for e in self.browser.events if e.get("method") == method
                and e.get("sessionId") == self.session]

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error-level log entries, as text."""
        found = [str(e.get("exceptionDetails", {}).get("text")) for e in self._events("Runtime.exceptionThrown")]
        found += [" ".join(str(a.get("value", a.get("description"))) for a in e["args"])
                  for e in self._events("Runtime.consoleAPICalled") if e["type"] in ("error", "assert")]
        found += [f"{e['entry'].get('url', '')}: {e['entry']['text']}" for e in self._events("Log.entryAdded")
                  if e["entry"]["level"] == "error"]
        return found

    def requests(self) -> list[str]:
        """The URL of every request the page made (the page itself included)."""
        return [e["request"]["url"] for e in self._events("Network.requestWillBeSent")]

    def failed_requests(self) -> list[str]:
        """Requests that failed to load, with the reason."""
        ids = {e["requestId"]: e["request"]["url"] for e in self._events("Network.requestWillBeSent")}
        return [f"{ids.get(e['requestId'], e['requestId'])}: {e['errorText']}"
                for e in self._events("Network.loadingFailed")]

    def screenshot(self, path: Path) -> Path:
        """The whole page (beyond the window) as a PNG."""
        data = self.browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                                 session=self.session)["data"]
        path.write_bytes(base64.b64decode(data))
        return path
