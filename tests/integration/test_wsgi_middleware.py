"""The WSGI middleware under a real Flask app served by waitress (threads) on
127.0.0.1:0, admitting through a real in-process Decision service."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any, NoReturn

import httpx
import pytest
import waitress  # type: ignore[import-untyped]  # waitress ships no type hints; types-waitress is not installed
from flask import Flask, Response, request

from loadwarden.sdk import AsyncClient
from loadwarden.sdk.integrations import TrustedProxies
from loadwarden.sdk.integrations.health import HealthCheck
from loadwarden.sdk.integrations.wsgi import AdmissionMiddleware
from loadwarden.server import RateLimit

from ..conftest import three_server_pool

WAIT_S = 3.0  # bound of every wait on a condition, seconds


class Meter:
    """Counts requests inside the view now, and the most ever at once (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.entered = threading.Event()

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        self.entered.set()
        try:
            yield
        finally:
            with self._lock:
                self.now -= 1


def make_app(meter: Meter, release: threading.Event | None = None, **middleware: Any) -> Flask:
    app = Flask(__name__)

    @app.get("/slow")
    def slow() -> dict[str, bool]:
        with meter.inside():
            time.sleep(float(request.args.get("s", 0.2)))
        return {"ok": True}

    @app.get("/boom")
    def boom() -> NoReturn:
        raise RuntimeError("boom")

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[bytes]:
            yield b"first\n"
            assert release is not None and release.wait(WAIT_S)
            yield b"last\n"

        return Response(chunks())

    app.wsgi_app = AdmissionMiddleware(app.wsgi_app, **middleware)  # type: ignore[method-assign]  # Flask's documented way to add WSGI middleware
    return app


@contextlib.contextmanager
def serving(app: Flask) -> Iterator[str]:
    # waitress drops forwarding headers it was not told to trust: the middleware reads them here.
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=24, clear_untrusted_proxy_headers=False)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(WAIT_S)
        middleware = app.wsgi_app
        assert isinstance(middleware, AdmissionMiddleware)
        middleware.close()


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
    with serving(make_app(meter, target=service.target, pool="web", wait_s=0.5)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
            answers = await asyncio.gather(*(http.get("/slow") for _ in range(20)))
        # Inside `serving`: waitress releases a slot after the response is sent, so the
        # middleware's client must stay open until the last release has landed.
        await wait_no_leases(service.target)
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 503}, codes
    assert meter.most == 3
    assert codes.count(200) >= 6
    for r in answers:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"] == "overloaded"


async def test_a_client_that_disconnects_mid_request_frees_its_slot(service) -> None:
    meter = Meter()
    with serving(make_app(meter, target=service.target, pool="web")) as url:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
            req = asyncio.create_task(http.get("/slow", params={"s": 0.3}))
            assert await asyncio.to_thread(meter.entered.wait, WAIT_S)
            assert await active_leases(service.target) == 1
            req.cancel()
            with pytest.raises(asyncio.CancelledError):
                await req
            await wait_no_leases(service.target)


async def test_a_streaming_response_holds_its_slot_until_it_ends(service) -> None:
    release = threading.Event()
    with serving(make_app(Meter(), release, target=service.target, pool="web")) as url:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
            async with http.stream("GET", "/stream") as response:
                lines = response.aiter_lines()
                assert await anext(lines) == "first"
                assert await active_leases(service.target) == 1
                release.set()
                assert await anext(lines) == "last"
            await wait_no_leases(service.target)


async def test_an_exception_releases_the_slot(service) -> None:
    with serving(make_app(Meter(), target=service.target, pool="web")) as url:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
            assert (await http.get("/boom")).status_code == 500
            await wait_no_leases(service.target)


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
    with serving(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
            answers = await asyncio.gather(*(http.get("/slow", params={"s": 0.3}) for _ in range(4)))
            codes = [r.status_code for r in answers]
            assert codes.count(200) == served and codes.count(503) == denied, codes
            assert meter.most == served
            after = await http.get("/slow", params={"s": 0})
            assert after.status_code == (503 if fallback == "fail_closed" else 200)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("wait_s", -1.0),
        ("local_slot_limit", -5),
        ("slot_fallback", "maybe"),
        ("lease_ttl_s", -1),
    ],
)
def test_bad_settings_name_the_setting(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        AdmissionMiddleware(Flask(__name__).wsgi_app, **{field: value})


async def test_the_release_reports_latency_and_success_by_status(service) -> None:
    released: list[tuple[bool, float]] = []
    core_release = service.core.release_slot

    async def recording(
        lease_id: str, success: bool, latency_ms: float, owner: str = ""
    ) -> bool:  # spy: the real release runs
        released.append((success, latency_ms))
        return await core_release(lease_id, success, latency_ms, owner)

    service.core.release_slot = recording
    with serving(make_app(Meter(), target=service.target, pool="web")) as url:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
            assert (await http.get("/slow", params={"s": 0.2})).status_code == 200
            await wait_no_leases(service.target)
            assert (await http.get("/boom")).status_code == 500
            await wait_no_leases(service.target)
    (ok, ok_ms), (failed, _) = released
    assert ok and ok_ms >= 150
    assert not failed


# --- per-client rate limits: seed 004's "30/minute" per IP ---------------------------------

SEED_004_RATE = RateLimit(count=30, per_s=60.0, burst=30)


def from_address(url: str, address: str) -> httpx.AsyncClient:
    """An HTTP client whose connections leave from `address` (any of 127.0.0.0/8 reaches 127.0.0.1)."""
    return httpx.AsyncClient(base_url=url, timeout=WAIT_S, transport=httpx.AsyncHTTPTransport(local_address=address))


async def test_thirty_a_minute_per_ip_limits_each_client_address_on_its_own(start) -> None:
    service = await start(three_server_pool("web", max_concurrency=50, rate_limit=SEED_004_RATE))
    with serving(make_app(Meter(), target=service.target, pool="web")) as url:
        async with from_address(url, "127.0.0.1") as a, from_address(url, "127.0.0.2") as b:
            first = [await a.get("/slow", params={"s": 0}) for _ in range(31)]
            other = [await b.get("/slow", params={"s": 0}) for _ in range(5)]
        await wait_no_leases(service.target)
    assert [r.status_code for r in first] == [200] * 30 + [429]
    assert int(first[-1].headers["retry-after"]) >= 1
    assert first[-1].json()["reason"] == "RATE_LIMITED" and first[-1].json()["pool"] == "web"
    assert [r.status_code for r in other] == [200] * 5


async def test_a_proxy_count_reads_the_header_and_bad_input_never_fails_a_request(start) -> None:
    service = await start(three_server_pool("web", rate_limit=RateLimit(count=2, per_s=60.0, burst=2)))

    def broken(environ: Any) -> str:
        raise RuntimeError("no session")

    behind = make_app(Meter(), target=service.target, pool="web", trusted_proxies=TrustedProxies(count=1))
    with serving(behind) as url:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:

            async def codes(forwarded_for: str) -> list[int]:
                headers = {"X-Forwarded-For": forwarded_for}
                return [(await http.get("/slow", params={"s": 0}, headers=headers)).status_code for _ in range(3)]

            assert await codes("6.6.6.6, 198.51.100.1") == [200, 200, 429]
            assert await codes("198.51.100.2") == [200, 200, 429]
            assert await codes("1.2.3.4, unknown") == [200, 200, 429]  # malformed: the peer's bucket
    with serving(make_app(Meter(), target=service.target, pool="web", client_key=broken)) as url:
        async with from_address(url, "127.0.0.2") as b:
            # The function raises: the address is the key; 127.0.0.2 has its own 2.
            assert [(await b.get("/slow", params={"s": 0})).status_code for _ in range(3)] == [200, 200, 429]


# --- the health document: seed 004's /api/health --------------------------------------------


async def test_the_health_path_reports_checks_breakers_and_the_fallback(start) -> None:
    service = await start(three_server_pool("web"))
    database = {"up": True}

    def ping() -> str:
        if not database["up"]:
            raise ConnectionError("database is down")
        return "connected"

    def cache() -> bool:
        return False  # a non-critical check that fails: degraded, not down

    app = make_app(
        Meter(),
        target=service.target,
        pool="web",
        timeout_s=0.3,
        health_path="/api/health",
        health_checks={"database": ping, "cache": HealthCheck(cache, critical=False)},
    )
    with serving(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
            # The first check may outlast timeout_s on a loaded machine while the channel connects.
            deadline = time.monotonic() + WAIT_S
            while True:
                ok = await http.get("/api/health")
                assert ok.status_code == 200, ok.text
                body = ok.json()
                if body["checks"]["control_plane"]["state"] == "ok" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert body["status"] == "degraded"  # the cache
            assert body["checks"]["database"] == {"state": "ok", "critical": True, "detail": "connected"}
            assert body["checks"]["cache"] == {
                "state": "failing",
                "critical": False,
                "detail": "the check returned False",
            }
            assert body["checks"]["control_plane"]["state"] == "ok"
            assert body["checks"]["control_plane"]["breakers"]["AcquireSlot"] == "closed"
            assert await active_leases(service.target) == 0  # never admitted

            database["up"] = False
            down = await http.get("/api/health")
            assert down.status_code == 503 and down.json()["status"] == "not_ready"
            assert down.json()["checks"]["database"]["detail"] == "ConnectionError: database is down"

            database["up"] = True
            await service.stop(0)
            assert [(await http.get("/slow", params={"s": 0})).status_code for _ in range(6)] == [200] * 6
            degraded = await http.get("/api/health")
            assert degraded.status_code == 200
            plane = degraded.json()["checks"]["control_plane"]
            assert plane["state"] == "failing" and plane["detail"].startswith("unreachable")
            assert plane["fallback"] == "local_limit" and plane["fallback_in_use"] is True
            assert plane["breakers"]["AcquireSlot"] == "open"
            head = await http.head("/api/health")
            assert head.status_code == 200 and head.content == b""


async def test_under_fail_closed_an_unreachable_control_plane_is_not_ready(start) -> None:
    running = await start(three_server_pool("web"))
    await running.stop(0)
    with serving(make_app(Meter(), target=running.target, slot_fallback="fail_closed", health_path="/health")) as url:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
            answer = await http.get("/health")
    assert answer.status_code == 503
    plane = answer.json()["checks"]["control_plane"]
    assert plane["critical"] is True and plane["fallback"] == "fail_closed" and plane["state"] == "failing"
