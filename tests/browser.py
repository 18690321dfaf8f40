"""Headless Chromium for the browser test, driven over the DevTools protocol on a pipe.

No Selenium and no driver binary: Chromium is started with `--remote-debugging-pipe` and speaks
CDP (JSON messages separated by NUL bytes) on file descriptors 3 (commands in) and 4 (replies and
events out). Only the Python standard library is used, so nothing beyond the Debian `chromium`
package is needed; `ensure_chromium` installs it with apt-get when it is missing.

`render(html, png)` opens a local file, waits for the load event and every <img>, writes a
full-page screenshot, and returns what each <img> did and every error the page produced
(console errors, uncaught exceptions, failed requests, browser log errors).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--disable-extensions")
MAX_SCREENSHOT_PX = 16000  # Chromium's capture limit is near 16k px per side


def find_chromium() -> str | None:
    return next((p for p in CHROMIUM_CANDIDATES if Path(p).is_file()), None) or shutil.which("chromium")


def ensure_chromium() -> str:
    """Path of a Chromium binary, installing Debian's `chromium` with apt-get if missing.

    Raises RuntimeError with the reason when that is impossible (no apt-get, not root, offline).
    """
    found = find_chromium()
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise RuntimeError("chromium is not installed and apt-get is not available")
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "-n", "apt-get"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["update", "-qq"], ["install", "-y", "-qq", "--no-install-recommends", "chromium"]):
        try:
            proc = subprocess.run(apt + args, capture_output=True, text=True, env=env, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise RuntimeError(f"{' '.join(apt + args)} failed: {err}") from err
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(apt + args)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    found = find_chromium()
    if not found:
        raise RuntimeError("chromium still missing after apt-get install chromium")
    return found


@dataclass
class Rendered:
    screenshot: Path
    height: int  # CSS px of the whole document
    images: list[dict] = field(default_factory=list)  # {id, complete, width, height, shown_width} per <img>
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    expanded_screenshot: Path | None = None
    overflow: list[str] = field(default_factory=list)  # elements wider than the page (horizontal scroll)

    def broken_images(self) -> list[dict]:
        return [i for i in self.images if not i["complete"] or i["width"] == 0 or i["height"] == 0]


class CDPError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium process and one page, spoken to over the DevTools pipe."""

    def __init__(self, binary: str, width: int = 1400, height: int = 1000) -> None:
        self.profile = tempfile.mkdtemp(prefix="lp-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def map_fds() -> None:  # in the child: its fd 3 reads our commands, its fd 4 carries replies
            a, b = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=map_fds, close_fds=False)  # noqa: PLW1509 - single-threaded at this point
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._inbox: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)

    # -- transport ----------------------------------------------------------------------------

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = os.read(self._from_browser, 1 << 20)
            except OSError:
                data = b""
            if not data:
                self._inbox.put(None)
                return
            buffer += data
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._inbox.put(json.loads(message))

    def _pump(self, timeout: float) -> bool:
        """Move one message from the reader to replies/events; False on timeout."""
        try:
            message = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return False
        if message is None:
            stderr = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.poll() is not None else ""
            raise CDPError(f"Chromium closed the DevTools pipe (exit {self.proc.poll()}): {stderr}")
        if "id" in message:
            self._replies[message["id"]] = message
        else:
            self.events.append(message)
        return True

    def call(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60.0) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while self._next_id not in self._replies:
            if time.monotonic() > deadline:
                raise CDPError(f"{method}: no reply within {timeout:g} s")
            self._pump(0.2)
        reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 60.0, after: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[after:]:
                if event.get("method") == method:
                    return event
            if time.monotonic() > deadline:
                raise CDPError(f"no {method} within {timeout:g} s")
            self._pump(0.2)

    def drain(self, seconds: float = 0.3) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._pump(0.05)

    # -- page helpers -------------------------------------------------------------------------

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=True)
        if "exceptionDetails" in result:
            raise CDPError(f"evaluate failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, timeout: float = 60.0) -> None:
        mark = len(self.events)
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_event("Page.loadEventFired", timeout, after=mark)
        self.wait_images(timeout)

    def wait_images(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate("Array.from(document.images).every(i => i.complete)"):
            if time.monotonic() > deadline:
                return  # the caller sees the incomplete images in `images()`
            self.drain(0.2)

    def images(self) -> list[dict]:
        return self.evaluate(
            "Array.from(document.images).map(i => ({id: i.id || i.alt || i.src.slice(0, 60), complete: i.complete,"
            " width: i.naturalWidth, height: i.naturalHeight, shown_width: i.getBoundingClientRect().width}))")

    def screenshot(self, path: Path) -> int:
        """Full-page PNG (not just the viewport); returns the document height in CSS px."""
        metrics = self.call("Page.getLayoutMetrics", session=True)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        width, height = int(size["width"]), int(size["height"])
        shot = self.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": min(height, MAX_SCREENSHOT_PX), "scale": 1}},
            session=True, timeout=120)
        Path(path).write_bytes(base64.b64decode(shot["data"]))
        return height

    def errors(self) -> list[str]:
        """Everything a person would see in the DevTools console as an error."""
        out = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                values = (str(a.get("value", a.get("description", ""))) for a in params["args"])
                out.append("console: " + " ".join(values))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                out.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                out.append(f"network: {params.get('errorText')} ({params.get('type')})")
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except CDPError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


OVERFLOW_JS = ("Array.from(document.querySelectorAll('main *')).filter(e => e.getBoundingClientRect().right > "
               "document.documentElement.clientWidth + 1 && !e.closest('.scroll')).map(e => e.tagName + "
               "(e.id ? '#' + e.id : '')).slice(0, 10)")


def render(html: Path, screenshot: Path, width: int = 1400, expanded: Path | None = None) -> Rendered:
    """Open `html` in headless Chromium; screenshot as first shown, then (optionally) again with
    every <details> opened. Image load state and errors are read with everything opened."""
    with Chromium(ensure_chromium(), width) as browser:
        browser.open(Path(html).resolve().as_uri())
        height = browser.screenshot(screenshot)
        browser.evaluate("document.querySelectorAll('details').forEach(d => d.open = true); true")
        browser.wait_images()
        browser.drain(0.3)
        if expanded is not None:
            browser.screenshot(expanded)
        return Rendered(screenshot, height, browser.images(), browser.errors(), expanded,
                        browser.evaluate(OVERFLOW_JS))
