"""The Django middleware, configured with the seed's setting names, under Django's
test client, admitting through a real in-process Decision service.

Django's test client is synchronous and the service runs on the test's event loop,
so requests run in worker threads."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django  # type: ignore[import-untyped]  # Django ships no type hints; django-stubs is not a dependency
import pytest
from django.conf import settings  # type: ignore[import-untyped]  # Django ships no type hints; django-stubs is not a dependency

if not settings.configured:  # once per process; tests set the rest with override_settings
    DB_DIR = tempfile.mkdtemp(prefix="loadwarden-django-")  # a file: every request thread sees the same tables
    atexit.register(shutil.rmtree, DB_DIR, ignore_errors=True)
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        SECRET_KEY="loadwarden-tests-only",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(DB_DIR, "db.sqlite3")}},
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions"],
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],  # fast; tests only
        MIDDLEWARE=[],
    )
    django.setup()
    from django.core.management import call_command  # type: ignore[import-untyped]  # Django ships no type hints; django-stubs is not a dependency

    call_command("migrate", verbosity=0)

from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]  # Django ships no type hints; django-stubs is not a dependency
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse  # type: ignore[import-untyped]  # Django ships no type hints; django-stubs is not a dependency
from django.test import Client as DjangoClient  # type: ignore[import-untyped]  # Django ships no type hints; django-stubs is not a dependency
from django.test import override_settings
from django.urls import include, path  # type: ignore[import-untyped]  # Django ships no type hints; django-stubs is not a dependency

from loadwarden.sdk import AsyncClient
from loadwarden.sdk.integrations import TrustedProxies
from loadwarden.sdk.integrations.django import AdmissionMiddleware
from loadwarden.sdk.integrations.django.views import database_check, health_checks
from loadwarden.server import AdminSettings, AuthSettings, RateLimit

from ..conftest import three_server_pool

WAIT_S = 3.0  # bound of every wait on a condition, seconds
MIDDLEWARE = ["loadwarden.sdk.integrations.django.AdmissionMiddleware"]


class Meter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            yield
        finally:
            with self._lock:
                self.now -= 1


meter = Meter()
release = threading.Event()


def slow(request: HttpRequest) -> JsonResponse:
    with meter.inside():
        time.sleep(float(request.GET.get("s", 0.2)))
    return JsonResponse({"ok": True})


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        yield b"first"
        assert release.wait(WAIT_S)
        yield b"last"

    return StreamingHttpResponse(chunks())


urlpatterns = [
    path("slow", slow),
    path("boom", boom),
    path("stream", stream),
    path("", include("loadwarden.sdk.integrations.django.urls")),  # seed 000's include
]


def seed_settings(target: str, **extra: object) -> override_settings:
    """The seed's names plus loadwarden's own."""
    values: dict[str, object] = {
        "ROOT_URLCONF": __name__,
        "MIDDLEWARE": MIDDLEWARE,
        "LOAD_MANAGER_ENABLED": True,
        "LOAD_MANAGER_MAX_CONNECTIONS": 2,
        "LOAD_MANAGER_TIMEOUT": 0.5,
        "LOADWARDEN_TARGET": target,
        "LOADWARDEN_POOL": "web",
        "LOADWARDEN_FALLBACK": "local_limit",
        "LOADWARDEN_CALL_TIMEOUT": 0.3,
    }
    values.update(extra)
    return override_settings(**values)


def get(url: str) -> HttpResponse:
    return DjangoClient(raise_request_exception=False).get(url)


async def get_many(url: str, n: int) -> list[HttpResponse]:
    """`n` requests at once, each in its own thread."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=n) as threads:
        return list(await asyncio.gather(*(loop.run_in_executor(threads, get, url) for _ in range(n))))


async def active_leases(target: str) -> int:
    async with AsyncClient(target) as client:
        return (await client.load_status("web")).pools[0].active_leases


async def wait_no_leases(target: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while await active_leases(target):
            await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
def fresh_meter() -> None:
    meter.now = meter.most = 0
    release.clear()


@pytest.fixture
async def service(start):
    return await start(three_server_pool("web", max_concurrency=3, max_wait_ms=5_000))


async def test_concurrent_requests_never_exceed_the_pool_limit(service) -> None:
    with seed_settings(service.target):
        answers = await get_many("/slow", 12)
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 503}, codes
    assert meter.most == 3
    for r in answers:
        if r.status_code == 503:
            assert int(r["Retry-After"]) >= 1
            assert r.json()["error"] == "overloaded"
    await wait_no_leases(service.target)


async def test_a_streaming_response_holds_its_slot_until_it_ends(service) -> None:
    with seed_settings(service.target):
        response = await asyncio.to_thread(get, "/stream")
        chunks = iter(response.streaming_content)
        assert await asyncio.to_thread(next, chunks) == b"first"
        assert await active_leases(service.target) == 1
        release.set()
        assert await asyncio.to_thread(lambda: b"".join(chunks)) == b"last"
        response.close()
        await wait_no_leases(service.target)


async def test_a_view_exception_releases_the_slot(service) -> None:
    with seed_settings(service.target):
        assert (await asyncio.to_thread(get, "/boom")).status_code == 500
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
    await running.stop(0)
    with seed_settings(running.target, LOADWARDEN_FALLBACK=fallback):
        answers = await get_many("/slow?s=0.3", 4)
    codes = [r.status_code for r in answers]
    assert codes.count(200) == served and codes.count(503) == denied, codes
    assert meter.most == served


async def test_load_manager_enabled_false_passes_everything_through(start) -> None:
    running = await start(three_server_pool("web", max_concurrency=3))
    await running.stop(0)
    with seed_settings(running.target, LOAD_MANAGER_ENABLED=False, LOADWARDEN_FALLBACK="fail_closed"):
        answers = await get_many("/slow?s=0", 3)
    assert [r.status_code for r in answers] == [200, 200, 200]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOAD_MANAGER_MAX_CONNECTIONS", -1),
        ("LOAD_MANAGER_TIMEOUT", -0.5),
        ("LOADWARDEN_FALLBACK", "sometimes"),
        ("LOADWARDEN_PRIORITY", 11),
        ("LOADWARDEN_POOL", ""),
        ("LOADWARDEN_CHOOSE", "no.such.module.choose"),
    ],
)
def test_bad_settings_fail_at_start_up_naming_the_setting(name: str, value: object) -> None:
    with seed_settings("127.0.0.1:1", **{name: value}), pytest.raises(ImproperlyConfigured, match=name):
        AdmissionMiddleware(lambda request: HttpResponse())


async def test_the_release_reports_latency_and_success_by_status(service) -> None:
    released: list[tuple[bool, float]] = []
    core_release = service.core.release_slot

    async def recording(
        lease_id: str, success: bool, latency_ms: float, owner: str = ""
    ) -> bool:  # spy: the real release runs
        released.append((success, latency_ms))
        return await core_release(lease_id, success, latency_ms, owner)

    service.core.release_slot = recording
    with seed_settings(service.target):
        assert (await asyncio.to_thread(get, "/slow?s=0.2")).status_code == 200
        assert (await asyncio.to_thread(get, "/boom")).status_code == 500
    await wait_no_leases(service.target)
    (ok, ok_ms), (failed, _) = released
    assert ok and ok_ms >= 150
    assert not failed


CLIENT_TOKEN = "django-client-token-0123456789"


async def test_the_client_token_setting_reaches_a_token_guarded_service(start) -> None:
    service = await start(three_server_pool("web", max_concurrency=3), auth=AuthSettings(client_token=CLIENT_TOKEN))
    with seed_settings(service.target, LOADWARDEN_TOKEN=CLIENT_TOKEN):
        answers = await get_many("/slow?s=0.05", 2)
    assert [r.status_code for r in answers] == [200, 200]
    with seed_settings(service.target, LOADWARDEN_CALL_TIMEOUT=0.31):  # another client, without the token
        r = await asyncio.to_thread(get, "/slow?s=0")  # the service runs on this loop
        assert r.status_code == 500  # refused by the service: an answer, not a fallback
    async with AsyncClient(service.target, token=CLIENT_TOKEN) as client:
        assert (await client.load_status("web")).pools[0].active_leases == 0


def test_a_tls_setting_of_the_wrong_type_is_named() -> None:
    with seed_settings("127.0.0.1:1", LOADWARDEN_TLS="/etc/ca.pem"), pytest.raises(ImproperlyConfigured) as err:
        AdmissionMiddleware(lambda request: HttpResponse())
    assert str(err.value).startswith("LOADWARDEN_TLS:")


# --- per-client rate limits: seed 004's "30/minute" per IP ---------------------------------

SEED_004_RATE = RateLimit(count=30, per_s=60.0, burst=30)


def get_from(url: str, address: str, **headers: str) -> HttpResponse:
    return DjangoClient(raise_request_exception=False).get(url, REMOTE_ADDR=address, **headers)


def broken_client_key(request: HttpRequest) -> str:
    raise RuntimeError("no session yet")


async def test_thirty_a_minute_per_ip_limits_each_client_address_on_its_own(start) -> None:
    service = await start(three_server_pool("web", max_concurrency=50, rate_limit=SEED_004_RATE))
    with seed_settings(service.target):
        first = [await asyncio.to_thread(get_from, "/slow?s=0", "198.51.100.1") for _ in range(31)]
        other = [await asyncio.to_thread(get_from, "/slow?s=0", "198.51.100.2") for _ in range(5)]
    assert [r.status_code for r in first] == [200] * 30 + [429]
    assert int(first[-1]["Retry-After"]) >= 1
    assert first[-1].json()["reason"] == "RATE_LIMITED" and first[-1].json()["pool"] == "web"
    assert [r.status_code for r in other] == [200] * 5
    await wait_no_leases(service.target)


async def test_trusted_proxies_and_a_broken_client_key_setting(start) -> None:
    service = await start(three_server_pool("web", rate_limit=RateLimit(count=2, per_s=60.0, burst=2)))
    proxies = TrustedProxies(networks=["10.0.0.0/8"])
    with seed_settings(service.target, LOADWARDEN_TRUSTED_PROXIES=proxies):

        def codes(forwarded_for: str, peer: str = "10.0.0.5") -> list[int]:
            return [get_from("/slow?s=0", peer, HTTP_X_FORWARDED_FOR=forwarded_for).status_code for _ in range(3)]

        assert await asyncio.to_thread(codes, "6.6.6.6, 198.51.100.1, 10.1.1.1") == [200, 200, 429]
        assert await asyncio.to_thread(codes, "198.51.100.2") == [200, 200, 429]
        assert await asyncio.to_thread(codes, "[not-an-address") == [200, 200, 429]  # the peer's bucket
    with seed_settings(service.target, LOADWARDEN_CLIENT_KEY=f"{__name__}.broken_client_key"):
        answers = [await asyncio.to_thread(get_from, "/slow?s=0", "198.51.100.3") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]  # the address, since the function raised


# --- the health document: seed 004's /api/health --------------------------------------------

database_up = threading.Event()


def flaky_database() -> str:
    """The real database's ping (sqlite), failing while the test says it is down."""
    if not database_up.is_set():
        raise ConnectionError("database is down")
    return database_check()()


async def test_the_health_view_reports_the_database_breakers_and_the_fallback(start) -> None:
    service = await start(three_server_pool("web", max_concurrency=1))
    checks = {"database": f"{__name__}.flaky_database", "cache": {"check": lambda: False, "critical": False}}
    database_up.set()
    with seed_settings(service.target, LOADWARDEN_HEALTH_CHECKS=checks, LOADWARDEN_CALL_TIMEOUT=0.3):
        degraded = await asyncio.to_thread(get, "/api/health/")
        assert degraded.status_code == 200 and degraded["Cache-Control"] == "no-store"
        body = degraded.json()
        assert body["status"] == "degraded"  # the cache check
        assert body["checks"]["database"] == {"state": "ok", "critical": True, "detail": "connected"}
        assert body["checks"]["cache"]["state"] == "failing" and body["checks"]["cache"]["critical"] is False
        plane = body["checks"]["control_plane"]
        assert plane["state"] == "ok" and plane["fallback_in_use"] is False
        assert plane["breakers"]["AcquireSlot"] == "closed"

        # Exempt from admission: it answers while a request holds the pool's only slot.
        held = await asyncio.to_thread(get, "/stream")
        chunks = iter(held.streaming_content)
        assert await asyncio.to_thread(next, chunks) == b"first"
        assert (await asyncio.to_thread(get, "/slow?s=0")).status_code == 503
        assert (await asyncio.to_thread(get, "/api/health/")).status_code == 200
        release.set()
        await asyncio.to_thread(lambda: b"".join(chunks))
        held.close()

        database_up.clear()
        down = await asyncio.to_thread(get, "/api/health/")
        assert down.status_code == 503 and down.json()["status"] == "not_ready"
        assert down.json()["checks"]["database"]["detail"] == "ConnectionError: database is down"

        database_up.set()
        await service.stop(0)
        served = [(await asyncio.to_thread(get, "/slow?s=0")).status_code for _ in range(6)]
        assert served == [200] * 6  # the local fallback
        gone = await asyncio.to_thread(get, "/api/health/")
        assert gone.status_code == 200
        plane = gone.json()["checks"]["control_plane"]
        assert plane["state"] == "failing" and plane["detail"].startswith("unreachable")
        assert plane["fallback"] == "local_limit" and plane["fallback_in_use"] is True
        assert plane["breakers"]["AcquireSlot"] == "open"


def test_a_bad_health_checks_setting_names_the_entry() -> None:
    missing = seed_settings("127.0.0.1:1", LOADWARDEN_HEALTH_CHECKS={"db": "no.such.check"})
    with missing, pytest.raises(ImproperlyConfigured, match=r"LOADWARDEN_HEALTH_CHECKS\['db'\]: cannot import"):
        health_checks()
    not_a_bool = seed_settings("127.0.0.1:1", LOADWARDEN_HEALTH_CHECKS={"db": {"check": print, "critical": "yes"}})
    with not_a_bool, pytest.raises(ImproperlyConfigured, match="critical must be True or False"):
        health_checks()


# --- seed 000: /admin/load/ and /api/load-status/ for staff, the pool made at start-up ----

SESSION_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    *MIDDLEWARE,
]
_users: dict[str, Any] = {}


def signed_in(username: str | None) -> DjangoClient:
    """A test client signed in as `username` ("staff" or "member"), or anonymous for None."""
    from django.contrib.auth.models import User  # type: ignore[import-untyped]  # Django ships no type hints; django-stubs is not a dependency

    client = DjangoClient(raise_request_exception=False)
    if username is not None:
        if username not in _users:
            _users[username], _ = User.objects.get_or_create(
                username=username, defaults={"is_staff": username == "staff"}
            )
        client.force_login(_users[username])
    return client


async def fetch(username: str | None, url: str) -> HttpResponse:
    return await asyncio.to_thread(lambda: signed_in(username).get(url))


async def test_staff_see_the_dashboard_and_the_load_status_of_the_real_service(service) -> None:
    with seed_settings(service.target, MIDDLEWARE=SESSION_MIDDLEWARE):
        page = await fetch("staff", "/admin/load/")
        status = await fetch("staff", "/api/load-status/")
    assert page.status_code == 200 and page["Content-Type"] == "text/html; charset=utf-8"
    html = page.content.decode()
    # The service's own page, pointed at the app's URL, without what the SDK cannot feed.
    assert "<title>loadwarden · live load</title>" in html
    assert 'data-status-url="/api/load-status/" data-history-url="" data-metrics-url="" data-auth="session"' in html
    assert "script-src 'sha256-" in page["Content-Security-Policy"]
    assert page["Cache-Control"] == "no-store"
    assert status.status_code == 200
    body = status.json()
    (web,) = body["pools"]
    assert web["name"] == "web" and web["concurrency_limit"] == 3 and web["strategy"] == "round_robin"
    assert [s["id"] for s in web["servers"]] == ["s1", "s2", "s3"]
    assert {s["state"] for s in web["servers"]} <= {"SERVER_STATE_SERVING", "SERVER_STATE_STALE"}
    assert body["generated_at"].endswith("Z")


@pytest.mark.parametrize("who", ["member", None])
async def test_anyone_but_staff_is_sent_to_the_login_and_refused_the_data(service, who: str | None) -> None:
    with seed_settings(service.target, MIDDLEWARE=SESSION_MIDDLEWARE):
        page = await fetch(who, "/admin/load/")
        status = await fetch(who, "/api/load-status/")
    assert page.status_code == 302 and page["Location"] == "/accounts/login/?next=/admin/load/"
    assert status.status_code == 403 and status.json()["error"] == "permission_denied"


async def test_the_dashboard_without_the_auth_middleware_says_what_is_missing(service) -> None:
    with seed_settings(service.target):  # no SessionMiddleware / AuthenticationMiddleware
        page = await fetch(None, "/admin/load/")
        status = await fetch(None, "/api/load-status/")
    assert page.status_code == 403 and b"AuthenticationMiddleware" in page.content
    assert status.status_code == 403


async def test_the_load_status_of_an_unreachable_service_is_503_json(start) -> None:
    running = await start(three_server_pool("web"))
    await running.stop(0)
    with seed_settings(running.target, MIDDLEWARE=SESSION_MIDDLEWARE):
        status = await fetch("staff", "/api/load-status/")
    assert status.status_code == 503
    assert status.json()["message"].startswith("the Decision service is unreachable")


async def load_status_of(target: str, pool: str) -> Any:
    async with AsyncClient(target) as client:
        return (await client.load_status(pool)).pools[0]


async def test_the_middleware_creates_its_missing_pool_sized_by_max_connections(start) -> None:
    service = await start()  # no pool at all
    with seed_settings(service.target, LOAD_MANAGER_MAX_CONNECTIONS=2, LOAD_MANAGER_TIMEOUT=0.2):
        answers = await get_many("/slow?s=0.5", 4)
        assert (await load_status_of(service.target, "web")).concurrency_limit == 2
        assert sorted(r.status_code for r in answers) == [200, 200, 503, 503]
        assert meter.most == 2
        # Deleted while the app runs: the next request finds it missing and makes it again.
        async with AsyncClient(service.target) as client:
            await client.admin.delete_pool("web")
        assert (await asyncio.to_thread(get, "/slow?s=0")).status_code == 200
        assert (await load_status_of(service.target, "web")).concurrency_limit == 2


async def test_a_pool_that_exists_is_left_as_it_is(service) -> None:
    with seed_settings(service.target, LOAD_MANAGER_MAX_CONNECTIONS=50):
        assert (await asyncio.to_thread(get, "/slow?s=0")).status_code == 200
    assert (await load_status_of(service.target, "web")).concurrency_limit == 3  # the service's, not 50


ADMIN_TOKEN = "django-admin-token-0123456789"


async def test_configure_pool_false_and_the_admin_token(start, caplog: pytest.LogCaptureFixture) -> None:
    service = await start(admin=AdminSettings(token=ADMIN_TOKEN))  # AdminService needs its token
    with seed_settings(service.target, LOADWARDEN_CONFIGURE_POOL=False, LOADWARDEN_POOL="off"):
        assert (await asyncio.to_thread(get, "/slow?s=0")).status_code == 500  # the unknown-pool error
    with (
        caplog.at_level("WARNING", "loadwarden.sdk.integrations.django"),
        seed_settings(service.target, LOADWARDEN_POOL="refused"),
    ):
        assert (await asyncio.to_thread(get, "/slow?s=0")).status_code == 500
    assert any("LOADWARDEN_ADMIN_TOKEN" in r.getMessage() for r in caplog.records)
    with seed_settings(service.target, LOADWARDEN_POOL="made", LOADWARDEN_ADMIN_TOKEN=ADMIN_TOKEN):
        assert (await asyncio.to_thread(get, "/slow?s=0")).status_code == 200
    assert (await load_status_of(service.target, "made")).concurrency_limit == 2
    async with AsyncClient(service.target) as client:
        assert [p.name for p in (await client.load_status()).pools] == ["made"]  # "off" and "refused" were not


def _comparable(value: Any) -> Any:
    """A load-status document with what JSON renders differently left out: protobuf's JSON
    drops zero values, writes 64-bit integers as strings and times to the nanosecond; the
    SDK's writes zeros, numbers, and times to the microsecond (Python's datetime)."""
    if isinstance(value, dict):
        kept = {k: _comparable(v) for k, v in value.items() if k not in ("generated_at", "host", "sampled_at")}
        return {k: v for k, v in kept.items() if v not in (0, 0.0, False, "", [], {}, None)}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, str):
        return re.sub(r"(\.\d{6})\d*Z$", r"\1Z", value)
    return value


async def test_the_app_s_load_status_is_the_admin_port_s_document(start) -> None:
    from google.protobuf import json_format

    from loadwarden.server.rpc import _convert as convert

    service = await start(three_server_pool("web", max_concurrency=3), three_server_pool("ml", strategy="p2c"))
    async with AsyncClient(service.target) as client:
        await client.report_load("web", "s1", cpu_percent=37.5, memory_percent=52.0, active_requests=3)
        async with client.slot("web"):
            with seed_settings(service.target, MIDDLEWARE=SESSION_MIDDLEWARE):
                ours = (await fetch("staff", "/api/load-status/")).json()
            theirs = json_format.MessageToDict(convert.load_status(service.core, ""), preserving_proto_field_name=True)
    assert ours["pools"][1]["active_leases"] == 1 and ours["pools"][1]["servers"][0]["load"]["cpu_percent"] == 37.5
    assert _comparable(ours) == _comparable(theirs)
