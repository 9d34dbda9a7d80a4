"""The dashboard on the admin HTTP app of a real in-process service: page, history, auth."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from google.protobuf import json_format

from loadwarden.observability._admin_http import AdminHttp, build_admin_app, start_admin_http
from loadwarden.observability._dashboard import add_dashboard_routes
from loadwarden.observability._history import History
from loadwarden.sdk import AsyncClient
from loadwarden.server import RunningService
from loadwarden.server.rpc import _convert as convert

from ..conftest import three_server_pool

TOKEN = "dashboard-test-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Admin:
    running: RunningService
    http: AdminHttp
    history: History
    session: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return self.http.url + path

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, str]:
        async with self.session.get(self.url(path), headers=AUTH if headers is None else headers) as resp:
            text = await resp.text()
            body = await resp.json(content_type=None) if "json" in resp.content_type else None
            return resp.status, body, text


@pytest.fixture
async def admin(start: Callable[..., Awaitable[RunningService]], tmp_path: Path) -> AsyncIterator[Admin]:
    """A service with pool ``api``, its admin app with the dashboard, and history sampled every 50 ms."""
    running = await start(three_server_pool("api"))

    def snapshot() -> dict[str, Any]:
        return json_format.MessageToDict(convert.load_status(running.core, ""), preserving_proto_field_name=True)

    history = History(str(tmp_path / "history.sqlite"), retention_s=3600)
    app = build_admin_app(
        token=TOKEN,
        snapshot_json=snapshot,
        extra_routes=functools.partial(add_dashboard_routes, history=history),
    )
    http = await start_admin_http(app, "127.0.0.1:0")
    recorder = asyncio.create_task(history.run(snapshot, interval_s=0.05))
    session = aiohttp.ClientSession()
    try:
        yield Admin(running, http, history, session)
    finally:
        await session.close()
        recorder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recorder
        await http.stop()
        history.close()


async def test_page_is_self_contained_html_without_external_urls(admin: Admin) -> None:
    for headers in ({}, AUTH):  # without the token the shell is the 401's body (it holds no data)
        status, _, html = await admin.get("/admin/load", headers=headers)
        assert status == (200 if headers else 401)
        assert html.lstrip().lower().startswith("<!doctype html>")
    sources = re.findall(r"""(?:src|href|action)\s*=\s*["']([^"']*)["']""", html, flags=re.I)
    assert all(not s.lower().startswith(("http:", "https:", "//")) for s in sources), sources
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"@import|url\(\s*['\"]?(?:https?:)?//", html), "external CSS resource"
    async with admin.session.get(admin.url("/admin/load")) as resp:
        csp = resp.headers["Content-Security-Policy"]
        assert resp.headers["Content-Type"].startswith("text/html")
        assert resp.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp


async def test_only_the_page_shell_is_public(admin: Admin) -> None:
    for path in ("/api/load-status", "/api/history", "/admin/load/other", "/metrics"):
        status, body, _ = await admin.get(path, headers={})
        assert status == 401, path
        assert body["error"] == "unauthenticated"
        status, body, _ = await admin.get(path, headers={"Authorization": "Bearer not-the-token"})
        assert status == 403, path
    async with admin.session.post(admin.url("/admin/load")) as resp:
        assert resp.status == 401  # only GET/HEAD of the shell skip the token check


async def test_history_returns_recorded_points(admin: Admin) -> None:
    async with AsyncClient(admin.running.target) as client:
        await client.report_load("api", "s1", cpu_percent=73.0, memory_percent=41.0)
    # wait for at least two samples taken after the report (50 ms interval)
    body: dict[str, Any] = {}
    for _ in range(200):
        status, body, _ = await admin.get("/api/history")
        assert status == 200, body
        cpu = body["pools"].get("api", {}).get("servers", {}).get("s1", {}).get("cpu_percent", [])
        if cpu.count(73.0) >= 2:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail(f"no recorded history with the reported CPU: {body}")
    times = body["times"]
    assert times == sorted(times) and len(times) >= 3
    api = body["pools"]["api"]
    assert api["total_servers"][-1] == 3
    assert set(api["servers"]) == {"s1", "s2", "s3"}
    assert api["servers"]["s2"]["cpu_percent"][-1] is None  # never reported: unknown
    assert api["servers"]["s1"]["state"][-1] == "SERVING"

    since, until = times[1], times[-1]
    status, window, _ = await admin.get(f"/api/history?since={since}&until={until}&pool=api&limit=2")
    assert status == 200
    assert len(window["times"]) <= 2 and window["times"][-1] == until and window["times"][0] >= since
    assert window["downsampled"] is (len(times) - 1 > 2)
    status, other, _ = await admin.get(f"/api/history?since={since}&until={until}&pool=nope")
    assert status == 200 and other["pools"] == {}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("since=10&until=5", "is before since"),
        ("since=nan&until=5", "since must be a finite number"),
        ("since=0&until=inf", "until must be a finite number"),
        ("since=-5&until=5", "since must not be negative"),
        ("since=0&until=99999999", "the range spans"),
        ("since=yesterday", "since must be seconds since the epoch"),
        ("since=0&until=5&limit=0", "limit must be an integer in"),
        ("since=0&until=5&limit=lots", "limit must be an integer"),
        ("pool=" + "p" * 129, "pool must be at most 128"),
    ],
)
async def test_bad_history_ranges_get_400_with_a_message(admin: Admin, query: str, message: str) -> None:
    status, body, _ = await admin.get(f"/api/history?{query}")
    assert status == 400
    assert body["error"] == "invalid_argument"
    assert message in body["message"]


async def test_history_off_answers_404(start: Callable[..., Awaitable[RunningService]]) -> None:
    app = build_admin_app(
        token=TOKEN, snapshot_json=dict, extra_routes=functools.partial(add_dashboard_routes, history=None)
    )
    http = await start_admin_http(app, "127.0.0.1:0")
    try:
        async with aiohttp.ClientSession() as session, session.get(http.url + "/api/history", headers=AUTH) as resp:
            assert resp.status == 404
            assert "history is off" in (await resp.json())["message"]
    finally:
        await http.stop()


async def test_service_admin_port_serves_the_dashboard_and_history_survives_a_restart(
    start: Callable[..., Awaitable[RunningService]], tmp_path: Path
) -> None:
    from loadwarden.server import AdminSettings

    settings = AdminSettings(
        listen="127.0.0.1:0", token=TOKEN, history_path=str(tmp_path / "h.sqlite"), history_interval_ms=100
    )

    async def points(running: RunningService, session: aiohttp.ClientSession) -> list[float]:
        url = f"http://127.0.0.1:{running.admin_port}/api/history?since={time.time() - 3600:.0f}"
        async with session.get(url, headers=AUTH) as resp:
            assert resp.status == 200
            return list((await resp.json())["times"])

    async with aiohttp.ClientSession() as session:
        first = await start(three_server_pool("api"), admin=settings)
        async with session.get(f"http://127.0.0.1:{first.admin_port}/admin/load") as page:
            assert page.status == 401 and "<html" in (await page.text()).lower()  # the shell, as the refusal
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(before := await points(first, session)) < 2:
            assert loop.time() < deadline, "no history samples recorded"
            await asyncio.sleep(0.05)
        await first.stop(0)
        second = await start(three_server_pool("api"), admin=settings)
        after = await points(second, session)
        assert set(before) <= set(after)  # the samples from before the restart are still there
