"""Open an HTML report in headless Chromium, record every request the page makes, and save a
PNG screenshot (the whole page, or its top HEIGHT pixels).

    .venv/bin/python scripts/screenshot_report.py report.html report.png [--width 1280] [--height 2400]

Prints one JSON object: ``requests`` (every URL the page asked for other than its own file and
``data:`` URIs — empty for a page that needs no network), ``images`` / ``broken_images``,
``scripts`` (script elements in the DOM after load), ``sections``, ``page`` (its full size in
CSS pixels) and ``png``. Drives Chromium over the DevTools protocol (a pipe-free WebSocket on
127.0.0.1 with aiohttp), so the requests are the page's own, not the browser's background
traffic. Needs Debian's ``chromium`` (``apt-get install -y chromium``).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAX_HEIGHT = 16000  # Chromium's largest capture
PROBE = """JSON.stringify({scripts: document.scripts.length, sections: document.querySelectorAll('section').length,
images: document.images.length, broken_images: [...document.images].filter(i => !i.complete || !i.naturalWidth).length,
width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight})"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def screenshot(html: Path, png: Path, width: int = 1280, height: int | None = None, timeout: float = 60.0) -> dict:
    chrome = find_chromium()
    if chrome is None:
        raise RuntimeError("no chromium on PATH; install Debian's package: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="report-chromium-", ignore_cleanup_errors=True) as profile:
        cmd = [chrome, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--mute-audio",
               "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
               f"--window-size={width},900", "about:blank"]
        if os.geteuid() == 0:
            cmd.insert(2, "--no-sandbox")  # Chromium's sandbox refuses to run as root
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            ws = _devtools_address(Path(profile) / "DevToolsActivePort", proc, timeout)
            result = asyncio.run(asyncio.wait_for(_drive(ws, html.resolve().as_uri(), png, width, height), timeout))
        finally:
            _stop_group(proc)
    return result


def _stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop Chromium and every helper process it forked (its own session), and wait until none is
    left: a renderer still writing into the profile would make removing the profile fail."""
    import signal

    def alive() -> bool:
        try:
            os.killpg(proc.pid, 0)
            return True
        except ProcessLookupError:
            return False

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not alive():
                return
            time.sleep(0.05)


def _devtools_address(path: Path, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with code {proc.returncode} before DevTools was up")
        lines = path.read_text().split() if path.exists() else []
        if len(lines) == 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        time.sleep(0.05)
    raise TimeoutError("chromium did not open its DevTools port")


class _Cdp:
    """The DevTools protocol over one WebSocket: calls by id, events kept."""

    def __init__(self, ws) -> None:
        self.ws, self.ids, self.pending, self.events = ws, itertools.count(1), {}, []
        self.loaded = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif data.get("method"):
                self.events.append(data)
                if data["method"] == "Page.loadEventFired":
                    self.loaded.set()

    async def call(self, method: str, session: str | None = None, **params) -> dict:
        i = next(self.ids)
        fut = self.pending[i] = asyncio.get_running_loop().create_future()
        msg = {"id": i, "method": method, "params": params}
        await self.ws.send_json({**msg, "sessionId": session} if session else msg)
        reply = await fut
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]


async def _drive(ws_url: str, url: str, png: Path, width: int, height: int | None) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        cdp = _Cdp(ws)
        target = (await cdp.call("Target.createTarget", url="about:blank"))["targetId"]
        session = (await cdp.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
        await cdp.call("Network.enable", session)
        await cdp.call("Page.enable", session)
        await cdp.call("Page.navigate", session, url=url)
        await cdp.loaded.wait()
        probe = json.loads((await cdp.call("Runtime.evaluate", session, expression=PROBE,
                                           returnByValue=True))["result"]["value"])
        shot_h = min(height or probe["height"], MAX_HEIGHT)
        await cdp.call("Emulation.setDeviceMetricsOverride", session, width=width, height=shot_h,
                       deviceScaleFactor=1, mobile=False)
        data = (await cdp.call("Page.captureScreenshot", session, format="png"))["data"]
        png.write_bytes(base64.b64decode(data))
        cdp.reader.cancel()
    asked = [e["params"]["request"]["url"] for e in cdp.events if e["method"] == "Network.requestWillBeSent"
             and e.get("sessionId") == session]
    return {"requests": [u for u in asked if u != url and not u.startswith(("data:", "about:"))],
            "scripts": probe["scripts"], "sections": probe["sections"], "images": probe["images"],
            "broken_images": probe["broken_images"], "page": [probe["width"], probe["height"]], "png": str(png)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("html", type=Path)
    p.add_argument("png", type=Path)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, help="only the top HEIGHT pixels (default: the whole page)")
    args = p.parse_args(argv)
    print(json.dumps(screenshot(args.html, args.png, args.width, args.height), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
