"""A minimal headless-Chromium driver over the DevTools protocol (websocket-client, no downloads).

    python -m kdbench.browser screenshot report.html out.png --width 1400
"""

import argparse
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import List, Optional

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MAX_SCREENSHOT_HEIGHT = 16384          # Chromium's largest capture; a longer page is cut there


def find_chromium() -> Optional[str]:
    """The path of a Chromium or Chrome binary on PATH, or None."""
    return next((p for p in map(shutil.which, BINARIES) if p), None)


class Browser:
    """One headless Chromium page; as a context manager it always kills the browser and removes its profile."""

    def __init__(self, binary: Optional[str] = None, width: int = 1280, height: int = 800, timeout: float = 20.0):
        self.binary, self.width, self.height, self.timeout = binary or find_chromium(), width, height, timeout
        if self.binary is None:
            raise RuntimeError(f"no Chromium found (looked for {', '.join(BINARIES)} on PATH)")
        self._ids, self._events, self.proc, self.ws, self.profile = itertools.count(1), [], None, None, None

    def __enter__(self) -> "Browser":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _start(self):
        import websocket      # deferred: websocket-client is the test extra, needed only to drive Chromium
        self.profile = tempfile.mkdtemp(prefix="kdbench-chromium-")
        args = [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}", "--hide-scrollbars", f"--window-size={self.width},{self.height}"]
        # A session of its own, so that close() ends the browser's helper processes by its group id.
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file, deadline = Path(self.profile) / "DevToolsActivePort", time.monotonic() + self.timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.binary} did not open its DevTools port")
            time.sleep(0.05)
        new = f"http://127.0.0.1:{int(port_file.read_text().split()[0])}/json/new"
        with urllib.request.urlopen(urllib.request.Request(new, method="PUT"), timeout=self.timeout) as r:
            page = json.load(r)
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=self.timeout, suppress_origin=True)
        self.call("Page.enable")

    def call(self, method: str, **params) -> dict:
        """Send one DevTools command and return its result; events that arrive meanwhile are kept."""
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._events.append(msg)

    def goto(self, url: str):
        """Navigate to `url` (a local path becomes a file:// URL) and wait for its load event."""
        url = url if "://" in url else Path(url).resolve().as_uri()
        self._events = []
        if self.call("Page.navigate", url=url).get("errorText"):
            raise RuntimeError(f"cannot open {url}")
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            self._events.append(json.loads(self.ws.recv()))        # raises after `timeout` s of silence

    def evaluate(self, js: str):
        """The value of the JavaScript expression `js` (JSON-serialisable; a promise is awaited)."""
        result = self.call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def click(self, selector: str):
        """Click the centre of the first element matching CSS `selector` with real mouse events."""
        center = self.evaluate(f"""(() => {{const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: 'center', inline: 'center'}});
            const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2];}})()""")
        if center is None:
            raise LookupError(f"no element matches {selector!r}")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=center[0], y=center[1], button="left", clickCount=1)

    def screenshot(self, path, width: Optional[int] = None, height: Optional[int] = None) -> bytes:
        """Write (and return) a PNG `width` CSS pixels wide (default: the window's) of the page's top `height`
        pixels (default: the whole page)."""
        self.width = width or self.width            # at device scale 1: the PNG is `width` pixels wide
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1, mobile=False)
        if height is None:
            page = self.call("Page.getLayoutMetrics").get("cssContentSize", {}).get("height", self.height)
            height = min(MAX_SCREENSHOT_HEIGHT, max(1, round(page)))
        clip = {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1}
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png", clip=clip,
                                          captureBeyondViewport=True)["data"])
        Path(path).write_bytes(data)
        return data

    def close(self):
        """Kill the browser and its helpers and remove the profile directory; safe to call twice."""
        if self.ws is not None:
            self.ws.shutdown()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)           # a throwaway profile: nothing to save
            self.proc.wait(10)
        if self.profile is not None:
            shutil.rmtree(self.profile, ignore_errors=True)
        self.proc = self.ws = self.profile = None


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m kdbench.browser screenshot PAGE.html OUT.png [--width W] [--height H]`."""
    ap = argparse.ArgumentParser(prog="python -m kdbench.browser", description="Headless-Chromium helpers.")
    shot = ap.add_subparsers(dest="command", required=True).add_parser("screenshot", help="a PNG of a local page")
    for name, kw in (("page", {}), ("out", {}), ("--width", {"type": int, "default": 1400}), ("--height", {"type": int})):
        shot.add_argument(name, **kw)
    args = ap.parse_args(argv)
    try:
        with Browser(width=args.width) as b:
            b.goto(args.page)
            b.screenshot(args.out, args.width, args.height)
    except RuntimeError as e:           # no Chromium, or it could not start or open the page
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
