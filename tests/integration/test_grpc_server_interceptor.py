"""The gRPC server admission interceptors against a real in-process Decision service
and a real backend on 127.0.0.1:0, called by real grpc.aio channels.

The backend's handlers count how many run at once and in which order they began;
a handler sleeps for the seconds its request names (bytes, no serializer).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent import futures
from typing import Any

import grpc
import pytest

from loadwarden.sdk import AsyncClient, Client
from loadwarden.sdk._reporter import BackendReporter
from loadwarden.sdk.integrations.grpc_server import (
    AdmissionInterceptor,
    AsyncAdmissionInterceptor,
    priority_from_metadata,
)
from loadwarden.server import PoolSettings, PoolSpec, RunningService, ServerSpec

from ..conftest import StartService, wait_for

RETRY_AFTER = "loadwarden-retry-after-ms"
SERVICE = "test.Work"
WAIT_S = 4.0  # bound of every poll, seconds
poll = functools.partial(wait_for, timeout_s=WAIT_S)  # every wait in this file is bounded by WAIT_S


def ml_pool(limit: int) -> PoolSpec:
    return PoolSpec(PoolSettings(name="ml", max_concurrency=limit), (ServerSpec("b1", "127.0.0.1:9001"),))


def ml_methods(method: str) -> str | None:
    return None if method.endswith("/Free") else "ml"


class Work:
    """Handler bookkeeping shared by the sync and async backends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.began: list[bytes] = []

    def enter(self, request: bytes) -> None:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.began.append(request)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1


def async_handlers(work: Work, gate: asyncio.Event) -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        work.enter(request)
        try:
            await asyncio.sleep(float(request.split(b"#")[0]))
        finally:
            work.leave()
        return b"ok:" + request

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        work.enter(request)
        try:
            for i in range(3):
                yield b"%d" % i
                if i == 0:
                    await asyncio.wait_for(gate.wait(), WAIT_S)
        finally:
            work.leave()

    async def hold(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        work.enter(request)
        try:
            await asyncio.wait_for(gate.wait(), WAIT_S)
        finally:
            work.leave()
        return b"held"

    async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.INTERNAL, "boom")

    async def bad(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "your fault")

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Free": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Hold": grpc.unary_unary_rpc_method_handler(hold),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Bad": grpc.unary_unary_rpc_method_handler(bad),
        },
    )


class Backend:
    def __init__(self, target: str, work: Work, reporter: BackendReporter | None = None) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.work = work
        self.reporter = reporter

    async def call(self, method: str, request: bytes = b"0", **kw: Any) -> tuple[grpc.StatusCode, Any]:
        """(status code, response or trailing metadata dict)."""
        rpc: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            return grpc.StatusCode.OK, await rpc(request, timeout=WAIT_S, **kw)
        except grpc.aio.AioRpcError as err:
            return err.code(), dict(err.trailing_metadata() or ())


BuildBackend = Callable[..., Awaitable[Backend]]


@pytest.fixture
async def backend() -> AsyncIterator[BuildBackend]:
    """Starts grpc.aio backends with an AsyncAdmissionInterceptor; stops them and their clients."""
    servers: list[grpc.aio.Server] = []
    closers: list[Callable[[], Awaitable[None]]] = []
    gates: list[asyncio.Event] = []

    async def build(
        target: str,
        *,
        wait_s: float = 0.0,
        reporter_server: str | None = None,
        client_options: dict[str, Any] | None = None,
        gate: asyncio.Event | None = None,
        pool: Callable[[str], str | None] = ml_methods,
        **kw: Any,
    ) -> Backend:
        client = AsyncClient(target, **(client_options or {}))
        closers.append(client.close)
        reporter = None
        if reporter_server is not None:
            reporter = BackendReporter(client, "ml", reporter_server, interval_s=60, sampler=lambda: (10.0, 20.0))
            closers.insert(0, reporter.stop_async)
        work, gate = Work(), gate or asyncio.Event()
        gates.append(gate)
        server = grpc.aio.server(
            interceptors=[AsyncAdmissionInterceptor(client, pool, wait_s=wait_s, reporter=reporter, **kw)]
        )
        server.add_generic_rpc_handlers((async_handlers(work, gate),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        made = Backend(f"127.0.0.1:{port}", work, reporter)
        closers.append(made.channel.close)
        return made

    yield build
    for gate in gates:
        gate.set()
    for server in servers:
        await server.stop(0)
    for close in closers:
        await close()


async def leases_in_use(service: RunningService) -> int:
    return service.core.pool("ml").slots.in_use


async def waiting(service: RunningService) -> int:
    return service.core.pool("ml").slots.waiting


async def assert_all_released(service: RunningService) -> None:
    await poll(lambda: leases_in_use(service), lambda n: n == 0, "all leases released")


# ---------------------------------------------------------------------- grpc.aio


async def test_wait_zero_denies_beyond_the_limit_with_retry_after(start: StartService, backend: BuildBackend) -> None:
    service = await start(ml_pool(2))
    b = await backend(service.target, wait_s=0.0)

    results = await asyncio.gather(*(b.call("Unary", b"0.3#%d" % i) for i in range(10)))

    denied = [meta for code, meta in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(denied) >= 8, results
    assert all(int(meta[RETRY_AFTER]) >= 1 for meta in denied)
    assert {code for code, _ in results} <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert b.work.max_running <= 2
    await assert_all_released(service)


async def test_waiting_calls_all_succeed_in_arrival_order(start: StartService, backend: BuildBackend) -> None:
    service = await start(ml_pool(2))
    b = await backend(service.target, wait_s=3.0)

    calls = []
    for i in range(6):
        calls.append(asyncio.create_task(b.call("Unary", b"0.1#%d" % i)))
        await asyncio.sleep(0.03)  # arrival order is issue order
    results = await asyncio.gather(*calls)

    assert [code for code, _ in results] == [grpc.StatusCode.OK] * 6
    assert b.work.began == [b"0.1#%d" % i for i in range(6)]
    assert b.work.max_running <= 2
    await assert_all_released(service)


async def test_a_stream_holds_its_slot_until_it_ends(start: StartService, backend: BuildBackend) -> None:
    service = await start(ml_pool(1))
    gate = asyncio.Event()
    b = await backend(service.target, gate=gate)

    rpc: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = b.channel.unary_stream(f"/{SERVICE}/Stream")
    stream = rpc(b"s", timeout=WAIT_S)
    assert await stream.read() == b"0"
    assert (await b.call("Unary"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await leases_in_use(service) == 1

    gate.set()
    assert [await stream.read(), await stream.read(), await stream.read()] == [b"1", b"2", grpc.aio.EOF]
    await assert_all_released(service)
    assert (await b.call("Unary"))[0] == grpc.StatusCode.OK


async def test_unselected_methods_pass_through_without_a_slot(start: StartService, backend: BuildBackend) -> None:
    service = await start(ml_pool(1))
    gate = asyncio.Event()
    b = await backend(service.target, gate=gate)
    hold = asyncio.create_task(b.call("Hold"))
    await poll(lambda: leases_in_use(service), lambda n: n == 1, "slot held")

    assert (await b.call("Free"))[0] == grpc.StatusCode.OK  # the pool is full, Free is not admitted

    gate.set()
    assert (await hold)[0] == grpc.StatusCode.OK
    await assert_all_released(service)


async def test_priority_comes_from_metadata(start: StartService, backend: BuildBackend) -> None:
    service = await start(ml_pool(1))
    gate = asyncio.Event()
    b = await backend(service.target, wait_s=3.0, gate=gate, priority=priority_from_metadata("x-priority"))
    hold = asyncio.create_task(b.call("Hold", b"hold"))
    await poll(lambda: leases_in_use(service), lambda n: n == 1, "slot held")
    low = asyncio.create_task(b.call("Unary", b"0#low"))
    await poll(lambda: waiting(service), lambda n: n == 1, "low queued")
    high = asyncio.create_task(b.call("Unary", b"0#high", metadata=(("x-priority", "9"),)))
    await poll(lambda: waiting(service), lambda n: n == 2, "high queued")

    gate.set()
    await asyncio.gather(hold, low, high)
    assert b.work.began == [b"hold", b"0#high", b"0#low"]


async def test_reporter_feeds_the_services_load_status(start: StartService, backend: BuildBackend) -> None:
    service = await start(ml_pool(2))
    gate = asyncio.Event()
    b = await backend(service.target, gate=gate, reporter_server="b1")
    hold = asyncio.create_task(b.call("Hold"))
    await poll(lambda: asyncio.sleep(0, b.work.running), lambda n: n == 1, "handler running")

    reporter = b.reporter
    assert reporter is not None
    assert await reporter.report_now_async()
    async with AsyncClient(service.target) as checker:
        status = await checker.load_status("ml")
    [server] = status.pools[0].servers
    assert server.load is not None and server.load.active_requests == 1

    gate.set()
    assert (await hold)[0] == grpc.StatusCode.OK
    assert reporter.current_report().active_requests == 0
    assert reporter.current_report().mean_latency_ms > 0


async def test_success_counts_server_faults_only(start: StartService, backend: BuildBackend) -> None:
    service = await start(ml_pool(2))
    b = await backend(service.target, reporter_server="b1")
    reporter = b.reporter
    assert reporter is not None

    # grpc.aio sends an abort's status before the handler's exception unwinds: poll.
    code, _ = await b.call("Bad")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    report = await poll(
        lambda: asyncio.sleep(0, reporter.current_report()), lambda r: r.active_requests == 0, "Bad tracked"
    )
    assert report.error_rate == 0.0 and report.mean_latency_ms > 0

    code, _ = await b.call("Fail")
    assert code == grpc.StatusCode.INTERNAL
    await poll(lambda: asyncio.sleep(0, reporter.current_report()), lambda r: r.error_rate > 0, "Fail counted")
    await assert_all_released(service)


DOWN_CLIENT: dict[str, Any] = {"timeout_s": 0.3, "retry": None, "breaker": None, "server_refresh_s": 0}


@pytest.mark.parametrize(("fallback", "served"), [("local_limit", True), ("fail_open", True), ("fail_closed", False)])
async def test_control_plane_down_follows_the_clients_fallback(
    start: StartService, backend: BuildBackend, fallback: str, served: bool
) -> None:
    service = await start(ml_pool(2))
    target = service.target
    await service.stop(0)
    b = await backend(target, client_options={**DOWN_CLIENT, "slot_fallback": fallback, "local_slot_limit": 2})

    results = await asyncio.gather(*(b.call("Unary", b"0.05") for _ in range(2)))

    expected = grpc.StatusCode.OK if served else grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [code for code, _ in results] == [expected] * 2
    if not served:
        assert all(RETRY_AFTER in meta for _, meta in results)


async def test_an_unknown_pool_is_served_unadmitted(start: StartService, backend: BuildBackend) -> None:
    service = await start(ml_pool(1))
    b = await backend(service.target, pool=lambda method: "nope")
    assert (await b.call("Unary"))[0] == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"pool": "ml"}, "pool"),
        ({"wait_s": -1}, "wait_s"),
        ({"priority": 3}, "priority"),
        ({"reporter": object()}, "reporter"),
    ],
)
async def test_bad_configuration_names_the_parameter(kwargs: dict[str, Any], named: str) -> None:
    args = {"pool": ml_methods, **kwargs}
    async with AsyncClient("127.0.0.1:1") as client:
        with pytest.raises(ValueError, match=named):
            AsyncAdmissionInterceptor(client, **args)
    with Client("127.0.0.1:1") as sync_client:
        with pytest.raises(ValueError, match=named):
            AdmissionInterceptor(sync_client, **args)
        with pytest.raises(ValueError, match="client"):
            AsyncAdmissionInterceptor(sync_client, ml_methods)  # type: ignore[arg-type]  # a sync Client on purpose: the check under test


# -------------------------------------------------------------------- grpc.server


def sync_handlers(work: Work, gate: threading.Event) -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        work.enter(request)
        try:
            time.sleep(float(request.split(b"#")[0]))
        finally:
            work.leave()
        return b"ok"

    def stream(request: bytes, context: grpc.ServicerContext) -> Any:
        work.enter(request)
        try:
            for i in range(3):
                yield b"%d" % i
                if i == 0:
                    assert gate.wait(WAIT_S)
        finally:
            work.leave()

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.INTERNAL, "boom")

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )


@pytest.fixture
async def sync_backend(start: StartService) -> AsyncIterator[tuple[RunningService, Backend, threading.Event, Any]]:
    service = await start(ml_pool(2))
    client = Client(service.target)
    reporter = BackendReporter(client, "ml", "b1", interval_s=60, sampler=lambda: (10.0, 20.0))
    work, gate = Work(), threading.Event()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        interceptors=[AdmissionInterceptor(client, ml_methods, reporter=reporter)],
    )
    server.add_generic_rpc_handlers((sync_handlers(work, gate),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    b = Backend(f"127.0.0.1:{port}", work)
    yield service, b, gate, reporter
    gate.set()
    await b.channel.close()
    await asyncio.to_thread(lambda: server.stop(0).wait())
    await asyncio.to_thread(client.close)


async def test_sync_server_denies_beyond_the_limit(sync_backend: Any) -> None:
    service, b, _, reporter = sync_backend

    results = await asyncio.gather(*(b.call("Unary", b"0.3#%d" % i) for i in range(10)))

    denied = [meta for code, meta in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(denied) >= 8, results
    assert all(int(meta[RETRY_AFTER]) >= 1 for meta in denied)
    assert {code for code, _ in results} <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert b.work.max_running <= 2
    await assert_all_released(service)
    assert reporter.current_report().mean_latency_ms >= 250


async def test_sync_server_stream_holds_its_slot_and_faults_count(sync_backend: Any) -> None:
    service, b, gate, reporter = sync_backend

    rpc: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = b.channel.unary_stream(f"/{SERVICE}/Stream")
    stream = rpc(b"s", timeout=WAIT_S)
    assert await stream.read() == b"0"
    assert await leases_in_use(service) == 1
    gate.set()
    assert [await stream.read(), await stream.read(), await stream.read()] == [b"1", b"2", grpc.aio.EOF]
    await assert_all_released(service)
    assert reporter.current_report().error_rate == 0.0

    assert (await b.call("Fail"))[0] == grpc.StatusCode.INTERNAL
    await poll(lambda: asyncio.sleep(0, reporter.current_report()), lambda r: r.error_rate > 0, "Fail counted")
    await assert_all_released(service)


@pytest.mark.parametrize(
    ("fallback", "expected"), [("local_limit", grpc.StatusCode.OK), ("fail_closed", grpc.StatusCode.RESOURCE_EXHAUSTED)]
)
async def test_sync_server_with_the_control_plane_down(
    start: StartService, fallback: str, expected: grpc.StatusCode
) -> None:
    service = await start(ml_pool(2))
    await service.stop(0)
    client = Client(service.target, slot_fallback=fallback, **DOWN_CLIENT)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[AdmissionInterceptor(client, ml_methods)]
    )
    server.add_generic_rpc_handlers((sync_handlers(Work(), threading.Event()),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    b = Backend(f"127.0.0.1:{port}", Work())
    try:
        code, meta = await b.call("Unary", b"0.01")
        assert code == expected
        if expected != grpc.StatusCode.OK:
            assert RETRY_AFTER in meta
    finally:
        await b.channel.close()
        await asyncio.to_thread(lambda: server.stop(0).wait())
        await asyncio.to_thread(client.close)


async def test_release_reports_success_per_the_handlers_status(
    start: StartService, backend: BuildBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = await start(ml_pool(2))
    released: list[bool] = []
    original = AsyncClient.release_slot

    async def spy(self: AsyncClient, lease_id: str, **kw: Any) -> bool:
        released.append(kw["success"])
        return await original(self, lease_id, **kw)

    monkeypatch.setattr(AsyncClient, "release_slot", spy)
    b = await backend(service.target)
    for method in ("Unary", "Bad", "Fail"):
        await b.call(method)
        await assert_all_released(service)
    assert released == [True, True, False]
