"""The live dashboard in a real headless Chromium, driven over the DevTools protocol.

No Playwright and no browser download: Debian's ``/usr/bin/chromium`` is started
with ``--remote-debugging-port=0``; the DevTools websocket address is read from
its stderr, and aiohttp's websocket client sends ``Target``/``Page``/``Runtime``
commands over one flattened session per tab. A missing Chromium fails the test
(install it with ``apt-get install -y chromium``); it is never skipped.

The screenshot is saved under the test's tmp dir and as ``build/dashboard.png``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loadwarden.policy import OutlierSettings
from loadwarden.sdk import AsyncClient
from loadwarden.server import (
    AdminSettings,
    HealthCheckSettings,
    OperationSettings,
    PoolSettings,
    PoolSpec,
    RunningService,
    ServerSpec,
)

from ._harness import REPO

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("LOADWARDEN_CHROMIUM", "/usr/bin/chromium")
TOKEN = "t0ken-for-the-dashboard-test"  # the service requires admin tokens of 16+ characters
WAIT_S = 15.0


class CdpError(Exception):
    pass


class Browser:
    """Headless Chromium and one DevTools websocket; each tab is a flattened session."""

    def __init__(self, proc: subprocess.Popen[bytes], ws: aiohttp.ClientWebSocketResponse, stderr: Path) -> None:
        self.proc, self.ws, self.stderr = proc, ws, stderr
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self.events.append(data)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CdpError(f"DevTools connection closed; chromium stderr:\n{self.log_tail()}"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        msg_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self.ws.send_str(json.dumps(message))
        answer = await asyncio.wait_for(future, WAIT_S)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def new_tab(self) -> Tab:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        tab = Tab(self, attached["sessionId"])
        for domain in ("Page", "Runtime", "Log"):
            await tab.send(f"{domain}.enable")
        await tab.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )
        return tab

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    def log_tail(self) -> str:
        return "\n".join(self.stderr.read_text(errors="replace").splitlines()[-20:])


class Tab:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, self.session)

    async def navigate(self, url: str) -> None:
        answer = await self.send("Page.navigate", {"url": url})
        assert not answer.get("errorText"), f"navigating to {url}: {answer['errorText']}"

    async def evaluate(self, expression: str) -> Any:
        """The value of a JS expression (promises awaited)."""
        answer = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in answer:
            raise CdpError(
                f"{expression}: {answer['exceptionDetails'].get('text')} "
                f"{answer['exceptionDetails'].get('exception', {}).get('description', '')}"
            )
        return answer["result"].get("value")

    async def wait_for(self, expression: str, what: str) -> Any:
        """Polls ``expression`` until it is truthy; fails naming ``what`` and the page text."""
        deadline = time.monotonic() + WAIT_S
        value: Any = None
        probe = f"(() => {{ const v = ({expression}); return v instanceof Node ? true : v; }})()"
        while time.monotonic() < deadline:
            with contextlib.suppress(CdpError):  # the page may be between documents
                value = await self.evaluate(probe)
                if value:
                    return value
            await asyncio.sleep(0.1)
        text = await self.evaluate("document.body ? document.body.innerText : ''")
        pytest.fail(f"the page never showed {what} within {WAIT_S} s (last value {value!r}); page text:\n{text[:3000]}")

    def session_events(self, method: str) -> list[dict[str, Any]]:
        return [e for e in self.browser.events if e.get("sessionId") == self.session and e["method"] == method]

    async def screenshot(self, *paths: Path) -> bytes:
        height = int(await self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1400, "height": max(600, min(height, 6000)), "deviceScaleFactor": 1, "mobile": False},
        )
        await asyncio.sleep(0.3)  # a layout pass, and the charts redraw at the new size on the next poll
        png = base64.b64decode((await self.send("Page.captureScreenshot", {"format": "png"}))["data"])
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
        return png


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[Browser]:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        pytest.fail(
            f"Chromium is needed at {CHROMIUM} for the dashboard browser test "
            f"({'found ' + found + ', set LOADWARDEN_CHROMIUM' if found else 'not installed'}); "
            "install it with: apt-get install -y chromium"
        )
    profile = tmp_path / "chromium-profile"
    stderr = tmp_path / "chromium.stderr"
    args = [
        CHROMIUM,
        "--headless",
        "--remote-debugging-port=0",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    with stderr.open("wb") as err:  # a file, not a pipe: chromium never blocks on a full pipe
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    session = aiohttp.ClientSession()
    browser: Browser | None = None
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None:
            match = re.search(r"DevTools listening on (ws://\S+)", stderr.read_text(errors="replace"))
            url = match.group(1) if match else None
            if url is None and (proc.poll() is not None or time.monotonic() > deadline):
                pytest.fail(
                    f"chromium did not open DevTools (exit {proc.poll()}); stderr:\n{stderr.read_text()[-3000:]}"
                )
            await asyncio.sleep(0.05)
        ws = await session.ws_connect(url, max_msg_size=0)
        browser = Browser(proc, ws, stderr)
        yield browser
    finally:
        if browser is not None:
            await browser.close()
        await session.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def dashboard(
    start: Callable[..., Awaitable[RunningService]], tmp_path: Path
) -> AsyncIterator[tuple[RunningService, str]]:
    """A service (pools ``api`` round robin and ``learn`` q_learning, operation ``export``) with its
    admin port: the dashboard, /metrics, and a history sampled every 200 ms; yields (service, admin
    base URL)."""
    api = PoolSpec(
        PoolSettings(
            name="api", strategy="round_robin", max_concurrency=8, outlier=OutlierSettings(consecutive_failures=2)
        ),
        tuple(ServerSpec(f"api-{i}", f"127.0.0.1:900{i}") for i in (1, 2, 3)),
    )
    learn = PoolSpec(
        PoolSettings(name="learn", strategy="q_learning"),
        tuple(ServerSpec(f"learn-{i}", f"127.0.0.1:910{i}") for i in (1, 2)),
    )
    # Health-checked at addresses nothing listens on: both fail their first check (threshold 1).
    refused = [socket.socket() for _ in range(2)]
    for sock in refused:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in refused]
    for sock in refused:
        sock.close()
    checked = PoolSpec(
        PoolSettings(name="checked"),
        tuple(ServerSpec(f"chk-{i}", f"127.0.0.1:{port}") for i, port in enumerate(ports, 1)),
        HealthCheckSettings(interval_ms=100, timeout_ms=80, unhealthy_threshold=1),
    )
    export = OperationSettings(
        name="export", min_batch_size=10, max_batch_size=500, default_batch_size=100, load_source="pool", pool="api"
    )
    admin = AdminSettings(
        listen="127.0.0.1:0", token=TOKEN, history_path=str(tmp_path / "history.sqlite"), history_interval_ms=200
    )
    running = await start(api, learn, checked, operations=(export,), admin=admin)
    yield running, f"http://127.0.0.1:{running.admin_port}"


CPU_CELL = "(document.querySelector('tr[data-server=\"api/api-1\"] td.cpu') || {}).textContent"
REFUSED = (
    "!document.getElementById('login').hidden && document.getElementById('main').hidden "
    "&& document.getElementById('status').textContent === 'unauthorised' ? "
    "document.getElementById('login-reason').textContent : ''"
)


async def test_dashboard_shows_live_load_and_refuses_without_the_token(
    dashboard: tuple[RunningService, str], tmp_path: Path
) -> None:
    running, base = dashboard
    async with AsyncClient(running.target) as client, chromium(tmp_path) as browser:
        await client.report_load("api", "api-1", cpu_percent=37.5, memory_percent=52.0, active_requests=3)
        first = await client.batch_size("export")
        for _ in range(5):
            await client.select("learn")

        tab = await browser.new_tab()
        await tab.navigate(f"{base}/admin/load#token={TOKEN}")
        await tab.wait_for(
            "document.querySelector('tr[data-pool=\"api\"]') && document.querySelector('tr[data-pool=\"learn\"]')",
            "the pools",
        )
        await tab.wait_for(
            "['api-1','api-2','api-3','learn-1','learn-2'].every(id => document.body.innerText.includes(id))",
            "the server ids",
        )
        assert await tab.wait_for(f"{CPU_CELL} === '37.5 %'", "api-1 at 37.5 % CPU")
        assert await tab.evaluate("location.hash") == ""  # the token left the address bar at once
        assert await tab.evaluate("sessionStorage.getItem('loadwarden.admin-token')") == TOKEN
        assert (
            await tab.evaluate("document.querySelector('tr[data-server=\"api/api-2\"] td.cpu').textContent")
            == "unknown"
        )
        assert await tab.evaluate("document.querySelector('tr[data-server=\"api/api-1\"]').dataset.state") == "SERVING"
        await tab.wait_for("document.querySelector('tr[data-agent=\"learn\"]')", "the learning agent of pool learn")
        unhealthy = "document.querySelector('tr[data-server=\"checked/chk-1\"]')"
        await tab.wait_for(f"{unhealthy} && {unhealthy}.dataset.state === 'UNHEALTHY'", "chk-1 unhealthy")
        problem = await tab.evaluate(f"{unhealthy}.querySelector('[data-check=problem]').textContent")
        assert problem == "connection refused"
        await tab.wait_for("document.querySelector('tr[data-operation=\"export\"]')", "the batch operation")
        # Capacity planning is off on this service: the panel says so and shows nothing else.
        await tab.wait_for(
            "document.getElementById('planning-status').textContent === 'capacity planning is off on this service'",
            "the planning panel saying planning is off",
        )
        shown = "['planning-controls', 'planning-body'].map(id => document.getElementById(id).hidden)"
        assert await tab.evaluate(shown) == [True, True]
        assert await tab.evaluate("document.querySelectorAll('#plan-charts canvas, #plans tbody tr').length") == 0

        # change the load: the page follows without a reload
        marker = await tab.evaluate("window.__same_document = 1")
        await client.report_load("api", "api-1", cpu_percent=91.5, memory_percent=60.0, active_requests=7)
        await tab.wait_for(f"{CPU_CELL} === '91.5 %'", "api-1's new CPU, 91.5 %")
        second = await client.batch_size("export")
        assert second.size != first.size
        await tab.wait_for(
            f"document.querySelector('tr[data-operation=\"export\"] .batch-size').textContent === '{second.size}'",
            f"export's new batch size {second.size}",
        )
        assert await tab.evaluate("window.__same_document") == marker  # no reload happened
        # Traffic from /metrics: decisions, shares, an ejection (two failed outcomes of api-3).
        picks = [await client.select("api") for _ in range(6)]
        for pick in picks:
            client.report_outcome(pick.decision_id, success=pick.server_id != "api-3", latency_ms=4.0)
        await client.flush_outcomes(5.0)
        await tab.wait_for("document.querySelector('tr[data-ejection=\"api/api-3\"]')", "api-3's ejection")
        await tab.wait_for(
            "/scrapes/.test(document.getElementById('traffic-status').textContent) && "
            "document.querySelectorAll('#traffic-charts canvas').length === 5",
            "the traffic charts",
        )
        titles = await tab.evaluate("[...document.querySelectorAll('#traffic-charts h3')].map(h => h.textContent)")
        assert titles == [
            "Decisions (/s)",
            "Traffic share, by server (%)",
            "Denials and rate-limit rejections (/s)",
            "p99 decision handler time, by method (ms)",
            "p99 queue wait, by pool (ms)",
        ]
        legend = await tab.evaluate("document.querySelector('#traffic-charts .chart:nth-child(2) .legend').textContent")
        assert "api/api-1" in legend and "learn/learn-1" in legend
        capacity = await tab.evaluate("document.querySelector('[data-card=capacity]').innerText")
        assert "0 %" in capacity and "0 of 8 slots (pools with a limit)" in capacity, capacity
        await tab.wait_for(
            "/^[1-9]\\d* samples/.test(document.getElementById('history-status').textContent) && "
            "document.querySelectorAll('#charts canvas').length >= 5",
            "history charts",
        )
        await asyncio.sleep(0.5)  # a history sample or two after the new load
        samples = await tab.evaluate("document.getElementById('history-status').textContent")
        await tab.evaluate("document.getElementById('range').dispatchEvent(new Event('change'))")  # refresh now
        await tab.wait_for(
            f"document.getElementById('history-status').textContent !== {json.dumps(samples)}", "refreshed history"
        )
        errors = tab.session_events("Runtime.exceptionThrown")
        errors += [
            e
            for e in tab.session_events("Log.entryAdded")
            if e["params"]["entry"]["level"] == "error"
            # the page itself arrives as a 401 (no token in a navigation): expected, not an error
            and not e["params"]["entry"].get("url", "").startswith(f"{base}/admin/load")
            # and /api/recommendations as a 404: it is how the page learns that planning is off
            and not (
                e["params"]["entry"].get("url", "").startswith(f"{base}/api/recommendations")
                and "404" in e["params"]["entry"].get("text", "")
            )
        ]
        assert not errors, f"the page logged errors (CSP violations appear here too): {errors}"
        leases_legend = await tab.evaluate(
            "[...document.querySelectorAll('#charts .chart')].find(c => c.querySelector('h3').textContent"
            ".startsWith('Active leases')).querySelector('.legend').textContent"
        )
        assert "api limit" in leases_legend and "learn limit" not in leases_legend, leases_legend
        await tab.wait_for(  # a few intervals drawn, for the screenshot (docs/dashboard.png is a copy)
            "/ [4-9] scrapes| \\d\\d+ scrapes/.test(document.getElementById('traffic-status').textContent)",
            "four scrapes of /metrics",
        )
        png = await tab.screenshot(tmp_path / "dashboard.png", REPO / "build" / "dashboard.png")
        assert png.startswith(b"\x89PNG") and len(png) > 10_000

        # no token: the shell loads, its data request is refused, the page says so
        bare = await browser.new_tab()
        await bare.navigate(f"{base}/admin/load")
        reason = await bare.wait_for(REFUSED, "'unauthorised' without a token")
        assert "401" in reason
        assert await bare.evaluate("document.querySelectorAll('tr[data-server]').length") == 0
        assert await bare.evaluate("fetch('/api/load-status', {credentials: 'omit'}).then(r => r.status)") == 401
        assert await bare.evaluate("fetch('/api/history', {credentials: 'omit'}).then(r => r.status)") == 401

        # a wrong token: refused with 403, dropped from the tab
        wrong = await browser.new_tab()
        await wrong.navigate(f"{base}/admin/load#token=not-the-token")
        reason = await wrong.wait_for(REFUSED, "'unauthorised' with a wrong token")
        assert "403" in reason
        assert await wrong.evaluate("sessionStorage.getItem('loadwarden.admin-token')") is None
        assert (
            await wrong.evaluate(
                "fetch('/api/load-status', {headers: {Authorization: 'Bearer not-the-token'}}).then(r => r.status)"
            )
            == 403
        )

        # the form: the right token opens the dashboard in that tab
        await wrong.evaluate(
            f"document.getElementById('token-input').value = {json.dumps(TOKEN)}; "
            "document.getElementById('login-form').requestSubmit()"
        )
        await wrong.wait_for(f"{CPU_CELL} === '91.5 %'", "the dashboard after signing in with the form")
