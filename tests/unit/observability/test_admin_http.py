"""The admin HTTP app: token checks, JSON errors, /metrics and /api/load-status, and the metrics SDK setup.

The app is served by aiohttp's test server on 127.0.0.1 with an ephemeral port.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from loadwarden.observability._admin_http import build_admin_app, is_loopback, start_admin_http
from loadwarden.observability._metrics import configure_metrics, wants_exporters

TOKEN = "s3cret-admin-token-0123456789"
SNAPSHOT = {"generated_at": "2026-01-01T00:00:00Z", "pools": [{"name": "api", "queue_length": 2}]}
BEARER = {"Authorization": f"Bearer {TOKEN}"}

Client = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    clients: list[TestClient] = []

    async def _client(**kwargs: Any) -> TestClient:
        app = build_admin_app(**{"token": TOKEN, "snapshot_json": lambda: SNAPSHOT, **kwargs})
        test_client = TestClient(TestServer(app, host="127.0.0.1"))
        await test_client.start_server()
        clients.append(test_client)
        return test_client

    yield _client
    for test_client in clients:
        await test_client.close()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- authentication ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/metrics", "/api/load-status", "/no/such/path"])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Token abc"}, {"Authorization": "Basic !!!not-base64"}],
)
async def test_missing_credentials_get_401_with_a_bearer_challenge(
    client: Client, path: str, headers: dict[str, str]
) -> None:
    c = await client()
    response = await c.get(path, headers=headers)
    assert response.status == 401
    challenges = response.headers.getall("WWW-Authenticate")
    assert challenges[0].startswith("Bearer ")
    assert any(ch.startswith("Basic ") for ch in challenges)  # a browser can prompt for the dashboard
    body = await response.json()
    assert body["error"] == "unauthenticated" and TOKEN not in await response.text()


@pytest.mark.parametrize("path", ["/metrics", "/api/load-status", "/no/such/path"])
async def test_a_wrong_token_gets_403_and_no_token_in_the_body(client: Client, path: str) -> None:
    c = await client()
    wrong = TOKEN[:-1] + "X"
    response = await c.get(path, headers={"Authorization": f"Bearer {wrong}"})
    assert response.status == 403
    text = await response.text()
    assert (await response.json())["error"] == "permission_denied"
    assert TOKEN not in text and wrong not in text
    assert "WWW-Authenticate" not in response.headers


async def test_the_right_token_as_bearer_or_basic_password_is_accepted(client: Client) -> None:
    c = await client()
    assert (await c.get("/api/load-status", headers=BEARER)).status == 200
    assert (await c.get("/api/load-status", headers={"Authorization": f"bearer  {TOKEN} "})).status == 200
    assert (await c.get("/api/load-status", headers=basic("anyone", TOKEN))).status == 200
    assert (await c.get("/api/load-status", headers=basic(TOKEN, "nope"))).status == 403
    assert (await c.get("/api/load-status", headers=basic("", ""))).status == 403


async def test_a_token_in_the_query_string_is_not_accepted(client: Client) -> None:
    c = await client()
    response = await c.get(f"/api/load-status?token={TOKEN}")
    assert response.status == 401 and TOKEN not in await response.text()


async def test_non_ascii_credentials_are_compared_not_crashed_on(client: Client) -> None:
    c = await client()
    response = await c.get("/api/load-status", headers=basic("u", "pässwörd"))
    assert response.status == 403


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="token"):
        build_admin_app(token="", snapshot_json=dict)


# --- endpoints -------------------------------------------------------------------------


async def test_load_status_is_the_snapshot_as_json(client: Client) -> None:
    calls = []

    def snapshot() -> dict[str, Any]:
        calls.append(1)
        return SNAPSHOT

    c = await client(snapshot_json=snapshot)
    response = await c.get("/api/load-status", headers=BEARER)
    assert response.status == 200
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert await response.json() == SNAPSHOT
    await c.get("/api/load-status", headers=BEARER)
    assert len(calls) == 2  # taken fresh for every request


async def test_metrics_is_prometheus_text_with_prometheus_clients_content_type(client: Client) -> None:
    setup = configure_metrics()
    try:
        setup.meter_provider.get_meter("test").create_counter("loadwarden.test.things").add(3, {"pool": "api"})
        c = await client(render_metrics=setup.render)
        response = await c.get("/metrics", headers={**BEARER, "Accept": "*/*"})
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        families = {f.name: f for f in text_string_to_metric_families(await response.text())}
        assert families["loadwarden_test_things"].samples[0].value == 3.0
        assert families["loadwarden_test_things"].samples[0].labels == {"pool": "api"}
        openmetrics = await c.get("/metrics", headers={**BEARER, "Accept": "application/openmetrics-text"})
        assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    finally:
        setup.shutdown()


async def test_metrics_without_a_renderer_is_404(client: Client) -> None:
    c = await client()
    response = await c.get("/metrics", headers=BEARER)
    assert response.status == 404 and (await response.json())["error"] == "not_found"


async def test_unknown_paths_and_methods_answer_json(client: Client) -> None:
    c = await client()
    missing = await c.get("/admin/nothing", headers=BEARER)
    assert missing.status == 404
    assert await missing.json() == {"error": "not_found", "message": "no admin endpoint at /admin/nothing"}
    post = await c.post("/api/load-status", headers=BEARER)
    assert post.status == 405 and (await post.json())["error"] == "method_not_allowed"
    assert "GET" in post.headers["Allow"]


async def test_a_failing_snapshot_is_a_500_without_internals(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("database password is hunter2")

    c = await client(snapshot_json=broken)
    with caplog.at_level(logging.ERROR, logger="loadwarden.observability"):
        response = await c.get("/api/load-status", headers=BEARER)
    assert response.status == 500
    assert "hunter2" not in await response.text()
    assert "admin endpoint /api/load-status failed" in caplog.text


async def test_extra_routes_are_served_behind_the_same_token(client: Client) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>dashboard</html>", content_type="text/html")

    c = await client(extra_routes=lambda app: app.router.add_get("/admin/load", page))
    assert (await c.get("/admin/load")).status == 401
    response = await c.get("/admin/load", headers=basic("admin", TOKEN))
    assert response.status == 200 and "dashboard" in await response.text()


# --- serving ---------------------------------------------------------------------------


async def test_start_admin_http_serves_on_an_ephemeral_port_and_stops(caplog: pytest.LogCaptureFixture) -> None:
    app = build_admin_app(token=TOKEN, snapshot_json=lambda: SNAPSHOT)
    caplog.set_level(logging.DEBUG)
    admin = await start_admin_http(app, "127.0.0.1:0")
    try:
        assert admin.port > 0 and admin.url == f"http://127.0.0.1:{admin.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{admin.url}/api/load-status", headers=BEARER) as response:
                assert response.status == 200 and await response.json() == SNAPSHOT
            async with session.get(f"{admin.url}/api/load-status?token={TOKEN}") as response:
                assert response.status == 401
            async with session.get(f"{admin.url}/metrics", headers={"Authorization": "Bearer wrong-token"}) as r:
                assert r.status == 403
    finally:
        await admin.stop()
    assert "/api/load-status" in caplog.text  # the access log saw the requests...
    assert TOKEN not in caplog.text and "wrong-token" not in caplog.text  # ...and no token
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{admin.url}/metrics", headers=BEARER)


async def test_start_admin_http_on_a_busy_port_is_an_oserror() -> None:
    app = build_admin_app(token=TOKEN, snapshot_json=lambda: SNAPSHOT)
    first = await start_admin_http(app, "127.0.0.1:0")
    try:
        other = build_admin_app(token=TOKEN, snapshot_json=lambda: SNAPSHOT)
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            await start_admin_http(other, f"127.0.0.1:{first.port}")
        with pytest.raises(OSError, match="host:port"):
            await start_admin_http(other, "no-port")
    finally:
        await first.stop()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("[::1]", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("[::]", False),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# --- the metrics SDK setup ---------------------------------------------------------------


def test_each_setup_has_its_own_registry() -> None:
    one, two = configure_metrics(), configure_metrics()
    try:
        one.meter_provider.get_meter("t").create_counter("loadwarden.only.here").add(1)
        assert b"loadwarden_only_here_total 1.0" in one.render()[0]
        assert b"loadwarden_only_here" not in two.render()[0]
    finally:
        one.shutdown()
        two.shutdown()


def test_service_name_defaults_to_loadwarden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    setup = configure_metrics()
    try:
        setup.meter_provider.get_meter("t").create_counter("loadwarden.x").add(1)
        assert b'service_name="loadwarden"' in setup.render()[0]
    finally:
        setup.shutdown()


def test_exporters_come_from_otel_metrics_exporter() -> None:
    assert not wants_exporters({})
    assert not wants_exporters({"OTEL_METRICS_EXPORTER": "prometheus"})
    assert not wants_exporters({"OTEL_METRICS_EXPORTER": "none"})
    assert wants_exporters({"OTEL_METRICS_EXPORTER": "otlp"})
    assert wants_exporters({"OTEL_METRICS_EXPORTER": "prometheus, console"})
    with pytest.raises(ValueError, match="OTEL_METRICS_EXPORTER: unknown exporter 'zipkin'"):
        wants_exporters({"OTEL_METRICS_EXPORTER": "zipkin"})
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL: unknown protocol"):
        configure_metrics(environ={"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})


def test_render_without_prometheus_is_an_error() -> None:
    setup = configure_metrics(prometheus=False, environ={})
    try:
        assert setup.registry is None
        with pytest.raises(RuntimeError):
            setup.render()
    finally:
        setup.shutdown()
