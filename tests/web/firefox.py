"""Headless Firefox for the browser tests, driven over WebDriver BiDi, with a PulseAudio mic.

Playwright drives only its own patched Firefox, which it downloads; Debian's ``firefox-esr``
speaks WebDriver BiDi itself (``--remote-debugging-port``), so a small client over one
WebSocket is all the test needs: no driver binary, no network.

Firefox has no fake-microphone-from-a-file switch, and without an audio server its
AudioContext never leaves ``suspended``. So each browser gets a private PulseAudio daemon with
two null sinks: ``speaker`` (the default sink: the page's playback goes there) and ``mic``,
whose monitor is the default source: what ``paplay --device=mic`` plays is what the page's
``getUserMedia`` captures, through Firefox's real capture path (cubeb, its WebRTC audio
processing).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.web import find_browser

FIREFOX_NAMES = ("firefox-esr", "firefox")
START_S = 30.0  # Firefox and PulseAudio start within a few seconds; a loaded CI box is slower
COMMAND_S = 60.0

# Only what the test needs on top of the prefs Firefox's remote agent sets for automation.
PREFS = {
    "media.navigator.permission.disabled": True,  # getUserMedia without a prompt
    "media.autoplay.default": 0,  # allow audible playback without a gesture
    "media.autoplay.block-webaudio": False,
}


def find_firefox() -> str | None:
    return find_browser("PARLEY_FIREFOX", FIREFOX_NAMES)


def missing() -> str | None:
    """Why the Firefox test cannot run here, or None."""
    if find_firefox() is None:
        return "no Firefox found (apt-get install firefox-esr, or set PARLEY_FIREFOX)"
    if not (shutil.which("pulseaudio") and shutil.which("pactl") and shutil.which("paplay")):
        return "no PulseAudio (apt-get install pulseaudio pulseaudio-utils)"
    return None


async def _until(check: Any, what: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while (value := check()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        await asyncio.sleep(0.1)
    return value


class PulseAudio:
    """A private PulseAudio daemon: null sinks ``speaker`` (default) and ``mic`` (whose monitor
    is the default source)."""

    def __init__(self, runtime_dir: Path) -> None:
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir), "HOME": str(runtime_dir)}
        self.env["PULSE_SERVER"] = f"unix:{runtime_dir}/pulse/native"
        runtime_dir.chmod(0o700)
        self.proc = subprocess.Popen(
            ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no",
             "--disallow-exit", "-L", "module-native-protocol-unix",
             "-L", "module-null-sink sink_name=speaker", "-L", "module-null-sink sink_name=mic"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    async def ready(self) -> None:
        def up() -> bool | None:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"pulseaudio exited: {err[-2000:]}")
            ok = subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode
            return True if ok == 0 else None

        await _until(up, "PulseAudio start", START_S)
        for args in (("set-default-sink", "speaker"), ("set-default-source", "mic.monitor")):
            subprocess.run(["pactl", *args], env=self.env, check=True, capture_output=True)

    async def speak(self, wav: Path) -> None:
        """Play ``wav`` into the microphone, in real time; returns when it has been played."""
        proc = await asyncio.create_subprocess_exec(
            "paplay", "--device=mic", str(wav), env=self.env, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"paplay failed: {err.decode(errors='replace')}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class BidiPage:
    """The one tab of a headless Firefox, over a WebDriver BiDi session.

    ``problems`` collects uncaught exceptions and console errors, as the Chromium page does.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.problems: list[str] = []
        self.context = ""
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            fut = self._waiting.pop(data.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(data)
            elif data.get("method") == "log.entryAdded":
                entry = data["params"]
                if entry.get("type") == "javascript":
                    self.problems.append(f"uncaught: {entry.get('text')}")
                elif entry.get("level") == "error":
                    self.problems.append(f"console: {entry.get('text')}")
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("the WebDriver BiDi connection closed"))

    async def command(self, method: str, **params: Any) -> dict[str, Any]:
        cid = next(self._ids)
        fut = self._waiting[cid] = asyncio.get_running_loop().create_future()
        await self.ws.send_json({"id": cid, "method": method, "params": params})
        reply = await asyncio.wait_for(fut, COMMAND_S)
        if reply.get("type") == "error":
            raise RuntimeError(f"{method}: {reply.get('error')}: {reply.get('message')}")
        return reply["result"]

    async def start(self) -> None:
        await self.command("session.new", capabilities={})
        await self.command("session.subscribe", events=["log.entryAdded"])
        tree = await self.command("browsingContext.getTree")
        self.context = tree["contexts"][0]["context"]

    async def goto(self, url: str) -> None:
        await self.command(
            "browsingContext.navigate", context=self.context, url=url, wait="complete"
        )

    async def evaluate(self, expression: str) -> Any:
        """The value of a JS expression (awaited if a promise), through JSON."""
        result = await self.command(
            "script.evaluate",
            expression=f"(async () => JSON.stringify(await ({expression})))()",
            target={"context": self.context},
            awaitPromise=True,
            userActivation=True,  # a click's handler may start audio
        )
        if result["type"] == "exception":
            raise RuntimeError(f"page script failed: {result['exceptionDetails']['text']}")
        value = result["result"].get("value")
        return None if value is None else json.loads(value)

    async def click(self, selector: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.command("session.end"), 5)
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


@contextlib.asynccontextmanager
async def firefox_page() -> AsyncIterator[tuple[BidiPage, PulseAudio]]:
    """A headless Firefox tab whose microphone and speaker are a private PulseAudio's."""
    firefox = find_firefox()
    assert firefox is not None
    with tempfile.TemporaryDirectory(prefix="parley-firefox-") as tmp:
        profile, runtime = Path(tmp, "profile"), Path(tmp, "run")
        profile.mkdir()
        runtime.mkdir()
        prefs = "".join(f'user_pref("{k}", {json.dumps(v)});\n' for k, v in PREFS.items())
        (profile / "user.js").write_text(prefs)
        pulse = PulseAudio(runtime)
        browser: subprocess.Popen[bytes] | None = None
        try:
            await pulse.ready()
            log = Path(tmp, "firefox.log")
            with log.open("wb") as out:  # the child keeps its own copy of the descriptor
                browser = subprocess.Popen(
                    [firefox, "--headless", "--no-remote", "--profile", str(profile),
                     "--remote-debugging-port=0", "about:blank"],
                    env=pulse.env, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            port_file = profile / "WebDriverBiDiServer.json"  # where port 0 became a port

            def port() -> int | None:
                assert browser is not None
                if browser.poll() is not None:
                    code = browser.returncode
                    raise RuntimeError(f"Firefox exited with {code}:\n{log_tail(log)}")
                with contextlib.suppress(OSError, ValueError, KeyError):
                    return int(json.loads(port_file.read_text())["ws_port"])
                return None

            try:
                url = f"ws://127.0.0.1:{await _until(port, 'Firefox start', START_S)}/session"
            except TimeoutError as err:
                raise TimeoutError(f"{err}; its log:\n{log_tail(log)}") from err
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(url, max_msg_size=0)
                page = BidiPage(ws)
                try:
                    await page.start()
                    yield page, pulse
                finally:
                    await page.close()
        finally:
            if browser is not None:
                browser.terminate()
                try:
                    browser.wait(15)
                except subprocess.TimeoutExpired:
                    browser.kill()
                    browser.wait()
            pulse.close()
