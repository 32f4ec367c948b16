"""Headless Chromium driven over the DevTools protocol, for tests that look at real web UIs.

Debian's `chromium` package (`.ci/run` installs it) and aiohttp's websocket client (a Ray
dependency) are all it takes: no WebDriver, nothing downloaded. The page is read the way a user
sees it: the rendered text of the DOM (`document.body.innerText`) after the app has drawn it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    return next((p for name in CHROMIUM_NAMES if (p := shutil.which(name))), None)


class Browser:
    """One headless Chromium with one page.

    Args:
        profile: an empty folder for the browser's profile (it is thrown away with it).
        width, height: the window size screenshots have.
    """

    def __init__(self, profile: Path, width: int = 1600, height: int = 1000) -> None:
        executable = chromium_path()
        if executable is None:
            raise RuntimeError("no chromium on PATH")
        profile.mkdir(parents=True, exist_ok=True)
        self.log = open(profile.parent / f"{profile.name}.log", "wb")
        self.process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not start; see {self.log.name}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            pages = [t for t in json.load(reply) if t["type"] == "page"]
        self._loop = asyncio.new_event_loop()
        self._ids = iter(range(1, 1 << 30))
        self._session = None
        self._socket = self._run(self._connect(pages[0]["webSocketDebuggerUrl"]))
        self.call("Page.enable")
        self.call("Runtime.enable")

    # ---- the protocol -------------------------------------------------------------------------
    def _run(self, coroutine):
        return self._loop.run_until_complete(coroutine)

    async def _connect(self, url: str):
        import aiohttp

        self._session = aiohttp.ClientSession()
        return await self._session.ws_connect(url, max_msg_size=0)

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        ident = next(self._ids)
        await self._socket.send_str(json.dumps({"id": ident, "method": method,
                                                "params": params}))
        while True:  # events arrive in between; the answer carries our id
            message = json.loads((await self._socket.receive()).data)
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self._run(self._call(method, params))

    # ---- what tests use -----------------------------------------------------------------------
    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *needles: str, timeout: float = 120.0) -> str:
        """The page's text once it holds every needle; an AssertionError with what it holds
        after `timeout` seconds (a React app draws after its data arrives)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            missing = [n for n in needles if n not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"page never showed {missing}; it shows:\n{text[:3000]}")
            time.sleep(0.5)

    def click_text(self, text: str, selector: str = "a, button, [role=button], [role=tab]"
                   ) -> bool:
        """Click the first element matching `selector` whose text is `text`."""
        return bool(self.evaluate(
            f"(() => {{ const el = [...document.querySelectorAll({json.dumps(selector)})]"
            f".find(e => e.innerText && e.innerText.trim() === {json.dumps(text)});"
            f" if (el) {{ el.click(); return true; }} return false; }})()"))

    def type_into(self, selector: str, text: str, enter: bool = True) -> None:
        """Focus the element, select what it holds, type `text` as keystrokes would, and
        press Enter (React sees real input events)."""
        found = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                              " if (!e) return false; e.focus(); e.select && e.select();"
                              " return true; })()")
        if not found:
            raise AssertionError(f"no element {selector!r} on the page")
        self.call("Input.insertText", text=text)
        if enter:
            for kind in ("keyDown", "keyUp"):
                self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                          windowsVirtualKeyCode=13, nativeVirtualKeyCode=13,
                          **({"text": "\r"} if kind == "keyDown" else {}))

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if getattr(self, "_session", None) is not None:
                self._run(self._socket.close())
                self._run(self._session.close())
        finally:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=20)
            if getattr(self, "_loop", None) is not None:
                self._loop.close()
            self.log.close()
