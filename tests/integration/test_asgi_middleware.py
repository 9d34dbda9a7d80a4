"""The ASGI middleware under a real FastAPI app served by uvicorn on 127.0.0.1:0,
admitting through a real in-process Decision service."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from loadwarden.sdk import AsyncClient
from loadwarden.sdk.integrations import Admission, AdmissionChoiceError, TrustedProxies
from loadwarden.sdk.integrations.asgi import AdmissionMiddleware, HealthApp
from loadwarden.sdk.integrations.health import AsyncHealth
from loadwarden.server import RateLimit

from ..conftest import three_server_pool

WAIT_S = 3.0  # bound of every wait on a condition, seconds


class Meter:
    """Counts requests inside the handler now, and the most ever at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.entered = asyncio.Event()

    @contextlib.contextmanager
    def inside(self):
        self.now += 1
        self.most = max(self.most, self.now)
        self.entered.set()
        try:
            yield
        finally:
            self.now -= 1


def make_app(meter: Meter, release: asyncio.Event | None = None, **middleware: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/slow")
    async def slow(s: float = 0.2) -> dict[str, bool]:
        with meter.inside():
            await asyncio.sleep(s)
        return {"ok": True}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first\n"
            assert release is not None
            await release.wait()
            yield b"last\n"

        return StreamingResponse(chunks())

    app.add_middleware(AdmissionMiddleware, **middleware)  # type: ignore[arg-type]  # mypy can't match an __init__ with **fields to Starlette's ParamSpec factory
    return app


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    # proxy_headers=False: uvicorn would otherwise rewrite the peer from X-Forwarded-For sent from
    # 127.0.0.1 itself, and the middleware's own reading of the header would go untested.
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", proxy_headers=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(WAIT_S):
            while not server.started:
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, WAIT_S)


async def active_leases(target: str, pool: str = "web") -> int:
    async with AsyncClient(target) as client:
        status = await client.load_status(pool)
    return status.pools[0].active_leases


async def wait_no_leases(target: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while await active_leases(target):
            await asyncio.sleep(0.02)


@pytest.fixture
async def service(start):
    return await start(three_server_pool("web", max_concurrency=3, max_wait_ms=5_000))


async def test_twenty_concurrent_requests_never_exceed_the_limit_of_three(service) -> None:
    meter = Meter()
    app = make_app(meter, target=service.target, pool="web", wait_s=0.5)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
        answers = await asyncio.gather(*(http.get("/slow") for _ in range(20)))
        # Before the server stops: a slot is released after its response is sent.
        await wait_no_leases(service.target)
    codes = sorted(r.status_code for r in answers)
    assert set(codes) == {200, 503}, codes
    assert meter.most == 3
    assert codes.count(200) >= 6  # the waiters got in as slots freed
    for r in answers:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"] == "overloaded" and r.json()["pool"] == "web"


async def test_a_client_that_disconnects_mid_request_frees_its_slot(service) -> None:
    meter = Meter()
    app = make_app(meter, target=service.target, pool="web")
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
        request = asyncio.create_task(http.get("/slow", params={"s": 0.3}))
        await asyncio.wait_for(meter.entered.wait(), WAIT_S)
        assert await active_leases(service.target) == 1
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await wait_no_leases(service.target)


async def test_a_streaming_response_holds_its_slot_until_it_ends(service) -> None:
    release = asyncio.Event()
    app = make_app(Meter(), release, target=service.target, pool="web")
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
        async with http.stream("GET", "/stream") as response:
            lines = response.aiter_lines()
            assert await anext(lines) == "first"
            assert await active_leases(service.target) == 1
            release.set()
            assert await anext(lines) == "last"
        await wait_no_leases(service.target)


async def test_an_exception_releases_the_slot_as_a_failure(service) -> None:
    app = make_app(Meter(), target=service.target, pool="web")
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
        assert (await http.get("/boom")).status_code == 500
        await wait_no_leases(service.target)


async def test_choose_routes_by_path_and_none_passes_through(service) -> None:
    seen: list[str] = []

    def choose(scope) -> Admission | None:
        seen.append(scope["path"])
        return None if scope["path"] == "/boom" else Admission("web", priority=7)

    app = make_app(Meter(), target=service.target, choose=choose)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
        assert (await http.get("/slow", params={"s": 0})).status_code == 200
    assert seen == ["/slow"]  # lifespan is not an HTTP request


async def test_choose_returning_an_unknown_pool_or_priority_is_a_clear_error(service) -> None:
    async def asgi_call(middleware: AdmissionMiddleware) -> None:
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        await middleware({"type": "http", "path": "/", "headers": []}, receive, send)

    async def ok_app(scope, receive, send) -> None:
        raise AssertionError("the app must not run")

    unknown = AdmissionMiddleware(ok_app, target=service.target, choose=lambda scope: "nope")
    with pytest.raises(AdmissionChoiceError, match="'nope'"):
        await asgi_call(unknown)

    def not_a_choice(scope: object) -> Any:
        return 42  # neither an Admission, a pool name nor None

    bad = AdmissionMiddleware(ok_app, target=service.target, choose=not_a_choice)
    with pytest.raises(AdmissionChoiceError, match="42"):
        await asgi_call(bad)
    with pytest.raises(ValueError, match="priority"):
        Admission("web", priority=12)
    await unknown.aclose()
    await bad.aclose()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("wait_s", -1.0),
        ("local_slot_limit", -5),
        ("slot_fallback", "maybe"),
        ("priority", 10),
        ("timeout_s", 0),
    ],
)
def test_bad_settings_name_the_setting(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        AdmissionMiddleware(FastAPI(), **{field: value})


@pytest.mark.parametrize(
    ("fallback", "served", "denied"),
    [
        ("local_limit", 2, 2),
        ("fail_open", 4, 0),
        ("fail_closed", 0, 4),
    ],
)
async def test_a_dead_control_plane_answers_by_the_fallback(start, fallback: str, served: int, denied: int) -> None:
    running = await start(three_server_pool("web", max_concurrency=3))
    target = running.target
    await running.stop(0)
    meter = Meter()
    app = make_app(meter, target=target, pool="web", slot_fallback=fallback, local_slot_limit=2, timeout_s=0.3)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
        answers = await asyncio.gather(*(http.get("/slow", params={"s": 0.3}) for _ in range(4)))
        codes = [r.status_code for r in answers]
        assert codes.count(200) == served and codes.count(503) == denied, codes
        assert meter.most == served
        # Local slots are released: the next request is served again (unless fail_closed).
        after = await http.get("/slow", params={"s": 0})
        assert after.status_code == (503 if fallback == "fail_closed" else 200)
    assert all(int(r.headers["retry-after"]) >= 1 for r in answers if r.status_code == 503)


async def test_the_release_reports_latency_and_success_by_status(service) -> None:
    released: list[tuple[bool, float]] = []
    core_release = service.core.release_slot

    async def recording(
        lease_id: str, success: bool, latency_ms: float, owner: str = ""
    ) -> bool:  # spy: the real release runs
        released.append((success, latency_ms))
        return await core_release(lease_id, success, latency_ms, owner)

    service.core.release_slot = recording
    app = make_app(Meter(), target=service.target, pool="web")
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
        assert (await http.get("/slow", params={"s": 0.2})).status_code == 200
        await wait_no_leases(service.target)
        assert (await http.get("/boom")).status_code == 500
        await wait_no_leases(service.target)
    (ok, ok_ms), (failed, _) = released
    assert ok and ok_ms >= 150
    assert not failed


# --- per-client rate limits: seed 004's "30/minute" per IP ---------------------------------

SEED_004_RATE = RateLimit(count=30, per_s=60.0, burst=30)  # @limiter.limit("30/minute"), per IP


def from_address(url: str, address: str) -> httpx.AsyncClient:
    """An HTTP client whose connections leave from `address` (any of 127.0.0.0/8 reaches 127.0.0.1)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=url, timeout=WAIT_S, transport=transport)


async def test_thirty_a_minute_per_ip_limits_each_client_address_on_its_own(start) -> None:
    service = await start(three_server_pool("web", max_concurrency=50, rate_limit=SEED_004_RATE))
    app = make_app(Meter(), target=service.target, pool="web")
    async with serving(app) as url, from_address(url, "127.0.0.1") as a, from_address(url, "127.0.0.2") as b:
        first = [await a.get("/slow", params={"s": 0}) for _ in range(31)]
        other = [await b.get("/slow", params={"s": 0}) for _ in range(5)]
        await wait_no_leases(service.target)
    assert [r.status_code for r in first] == [200] * 30 + [429]
    refused = first[-1]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json() | {"retry_after_s": 0} == {
        "error": "rate_limited",
        "reason": "RATE_LIMITED",
        "pool": "web",
        "retry_after_s": 0,
    }
    assert [r.status_code for r in other] == [200] * 5  # another address, its own 30


async def test_a_trusted_proxy_header_names_the_client_and_a_bad_one_is_the_peer(start) -> None:
    service = await start(three_server_pool("web", rate_limit=RateLimit(count=2, per_s=60.0, burst=2)))
    proxies = TrustedProxies(networks=("127.0.0.1",))  # the test's "proxy" connects from 127.0.0.1
    app = make_app(Meter(), target=service.target, pool="web", trusted_proxies=proxies)

    async def codes(http: httpx.AsyncClient, forwarded_for: str, n: int = 3) -> list[int]:
        answers = [
            await http.get("/slow", params={"s": 0}, headers={"X-Forwarded-For": forwarded_for}) for _ in range(n)
        ]
        return [r.status_code for r in answers]

    async with serving(app) as url, from_address(url, "127.0.0.1") as proxy, from_address(url, "127.0.0.3") as direct:
        assert await codes(proxy, "6.6.6.6, 198.51.100.1") == [200, 200, 429]  # spoofed left part ignored
        assert await codes(proxy, "198.51.100.2") == [200, 200, 429]  # another client behind the proxy
        # Garbage where the client's address would be: the peer's address is the key, never a 500.
        assert await codes(proxy, "not-an-address") == [200, 200, 429]
        # Not from the proxy: the header says nothing, the peer is the client.
        assert await codes(direct, "198.51.100.9") == [200, 200, 429]


async def test_a_client_key_function_that_raises_is_logged_and_the_address_is_used(
    start, caplog: pytest.LogCaptureFixture
) -> None:
    service = await start(three_server_pool("web", rate_limit=RateLimit(count=2, per_s=60.0, burst=2)))

    def broken(scope: Any) -> str:
        raise KeyError("x-user")

    app = make_app(Meter(), target=service.target, pool="web", client_key=broken)
    with caplog.at_level("ERROR", "loadwarden.sdk.integrations"):
        async with serving(app) as url, from_address(url, "127.0.0.1") as a, from_address(url, "127.0.0.2") as b:
            codes_a = [(await a.get("/slow", params={"s": 0})).status_code for _ in range(3)]
            codes_b = [(await b.get("/slow", params={"s": 0})).status_code for _ in range(2)]
    assert codes_a == [200, 200, 429] and codes_b == [200, 200]
    assert any("client_key function" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_a_client_key_function_picks_the_bucket(start) -> None:
    service = await start(three_server_pool("web", rate_limit=RateLimit(count=1, per_s=60.0, burst=1)))

    def by_user(scope: Any) -> str | None:
        users = [v.decode() for k, v in scope["headers"] if k == b"x-user"]
        return users[0] if users else None

    app = make_app(Meter(), target=service.target, pool="web", client_key=by_user)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
        codes = [
            (await http.get("/slow", params={"s": 0}, headers={"X-User": user})).status_code
            for user in ("ann", "ann", "ann smith", "ann smith", "bob")  # a space: no valid name, sent hashed
        ]
    assert codes == [200, 429, 200, 429, 200]


# --- the health document: seed 004's /api/health --------------------------------------------


class Database:
    """A stand-in database whose ping the test breaks and mends."""

    def __init__(self) -> None:
        self.up = True

    async def ping(self) -> str:
        if not self.up:
            raise ConnectionError("database is down")
        return "connected"


async def test_the_health_path_reports_checks_breakers_and_the_fallback(start) -> None:
    service = await start(three_server_pool("web", max_concurrency=1))
    database = Database()
    release = asyncio.Event()
    meter = Meter()
    app = make_app(
        meter,
        release,
        target=service.target,
        pool="web",
        timeout_s=0.3,
        health_path="/api/health",
        health_checks={"database": database.ping},
    )
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
        ok = await http.get("/api/health")
        assert ok.status_code == 200 and ok.headers["cache-control"] == "no-store"
        body = ok.json()
        assert body["status"] == "ready" and body["timestamp"]
        assert body["checks"]["database"] == {"state": "ok", "critical": True, "detail": "connected"}
        plane = body["checks"]["control_plane"]
        assert plane["state"] == "ok" and plane["critical"] is False
        assert plane["fallback"] == "local_limit" and plane["fallback_in_use"] is False
        assert plane["breakers"]["AcquireSlot"] == "closed"

        # Never admitted: it answers while the pool's only slot is held.
        async with http.stream("GET", "/stream") as held:
            assert await anext(held.aiter_lines()) == "first"
            assert (await http.get("/slow", params={"s": 0})).status_code == 503
            assert (await http.get("/api/health")).status_code == 200
            release.set()

        database.up = False
        down = await http.get("/api/health")
        assert down.status_code == 503 and down.json()["status"] == "not_ready"
        assert down.json()["checks"]["database"] == {
            "state": "failing",
            "critical": True,
            "detail": "ConnectionError: database is down",
        }
        assert (await http.post("/api/health")).status_code == 405

        # The control plane gone: requests fall back locally, the breaker opens.
        database.up = True
        await service.stop(0)
        fallback = [(await http.get("/slow", params={"s": 0})).status_code for _ in range(6)]
        assert fallback == [200] * 6  # local_limit: served
        degraded = await http.get("/api/health")
        assert degraded.status_code == 200  # degraded is still ready: the fallback serves
        body = degraded.json()
        assert body["status"] == "degraded"
        plane = body["checks"]["control_plane"]
        assert plane["state"] == "failing" and plane["detail"].startswith("unreachable")
        assert plane["fallback_in_use"] is True and plane["breakers"]["AcquireSlot"] == "open"
        database.up = False
        assert (await http.get("/api/health")).status_code == 503


async def test_the_health_app_serves_a_document_of_its_own(start) -> None:
    service = await start(three_server_pool("web"))
    async with AsyncClient(service.target) as client:
        health = AsyncHealth(client, pool="web")

        def slow_check() -> None:
            time.sleep(0.5)  # a plain function runs in a thread, and is cut at the deadline

        health.add_check("cache", slow_check, critical=False)
        health.timeout_s = 0.1
        app = FastAPI()
        app.add_route("/healthz", HealthApp(health))  # type: ignore[arg-type]  # Starlette types only request-response functions; an ASGI app is routed as one too
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
            answer = await http.get("/healthz")
    assert answer.status_code == 200
    assert answer.json()["status"] == "degraded"
    assert answer.json()["checks"]["cache"] == {
        "state": "failing",
        "critical": False,
        "detail": "no answer within 100 ms",
    }
