"""A real headless Chromium driven over the DevTools protocol on a pipe (no driver, no extra package).

Chromium's `--remote-debugging-pipe` reads NUL-terminated JSON commands on file
descriptor 3 and writes replies and events on 4, the transport Puppeteer uses.
Only the standard library is needed, and the browser is the system's
(`apt-get install chromium`), so nothing is downloaded at test time.
"""

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium():
    """The browser's path ($CHROMIUM, else the first candidate on PATH), or None."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class BrowserError(RuntimeError):
    pass


class Chromium:
    """`with Chromium(path) as browser: page = browser.open(url)`; one tab is enough here."""

    def __init__(self, executable, width=900, height=700, timeout=60):
        self.executable, self.size, self.timeout = executable, (width, height), timeout
        self.next_id, self.buffer, self.events = 0, b"", []

    def __enter__(self):
        self.profile = tempfile.mkdtemp(prefix="keras-vitbn-chromium-")
        self.log = open(os.path.join(self.profile, "stderr.log"), "w+b")  # a file: a full pipe would stall chromium
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        # A tiny Python trampoline moves the pipe ends onto 3 and 4 and execs chromium
        # (no preexec_fn: forking a threaded JAX or torch process is unsafe; dash cannot name fd 10).
        high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)  # above 4: no clobbering while renumbering
        high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--mute-audio",
            f"--user-data-dir={self.profile}",
            f"--window-size={self.size[0]},{self.size[1]}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        trampoline = (
            f"import os, sys; os.dup2({high_r}, 3); os.dup2({high_w}, 4); "
            f"os.close({high_r}); os.close({high_w}); os.execv(sys.argv[1], sys.argv[1:])"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", trampoline, self.executable, *flags],
            pass_fds=(high_r, high_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        for fd in (to_browser_r, from_browser_w, high_r, high_w):
            os.close(fd)
        return self

    def __exit__(self, *exc):
        try:
            self.send("Browser.close", timeout=5)
        except (BrowserError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self.to_browser, self.from_browser):
            os.close(fd)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read_message(self, deadline):
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("chromium did not answer in time")
            ready, _, _ = select.select([self.from_browser], [], [], left)
            if ready:
                chunk = os.read(self.from_browser, 1 << 20)
                if not chunk:
                    self.log.seek(0)
                    err = self.log.read().decode(errors="replace")[-2000:]
                    raise BrowserError(f"chromium closed its pipe (exit {self.process.poll()}): {err}")
                self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method, params=None, session=None, timeout=None):
        """One DevTools command; returns its result or raises BrowserError with the protocol's message."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def open(self, url):
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.send("Page.enable")
        page.send("Runtime.enable")
        page.send("Page.navigate", {"url": url})
        page.wait_for("document.readyState === 'complete'")
        return page


class Page:
    def __init__(self, browser, session):
        self.browser, self.session = browser, session

    def send(self, method, params=None):
        return self.browser.send(method, params, session=self.session)

    def evaluate(self, expression):
        """The value of a JavaScript expression (JSON-serialisable), awaiting promises."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise BrowserError(f"timed out waiting for {expression}")

    def drag(self, points):
        """A left-button mouse stroke through viewport points: press, moves, release."""
        (x, y), rest = points[0], points[1:]
        mouse = lambda kind, x, y, buttons: self.send(  # noqa: E731
            "Input.dispatchMouseEvent",
            {"type": kind, "x": x, "y": y, "button": "left", "buttons": buttons, "clickCount": 1},
        )
        mouse("mouseMoved", x, y, 0)
        mouse("mousePressed", x, y, 1)
        for x, y in rest:
            mouse("mouseMoved", x, y, 1)
        mouse("mouseReleased", x, y, 0)

    def screenshot(self, path):
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path
