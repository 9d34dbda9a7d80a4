"""The SDK's call surface against a real service: interceptors on the SDK's own channel,
awaitable `report_outcome`, `Route.decision_s`, and `report_load`'s defaults.

The sync client runs in a worker thread: the service runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from loadwarden.sdk import AsyncClient, BackendReporter, Client, Selection
from loadwarden.server import RunningService

from ..conftest import StartService, three_server_pool

SELECT = "/loadwarden.v1.DecisionService/SelectServer"


class AioRecorder(grpc.aio.UnaryUnaryClientInterceptor):
    """Records each unary call's method and metadata keys, and adds a header of its own."""

    def __init__(self, name: str, seen: list[tuple[str, str, tuple[str, ...]]]) -> None:
        self._name = name
        self._seen = seen

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        method = client_call_details.method
        keys = tuple(key for key, _ in (client_call_details.metadata or ()))
        self._seen.append((self._name, method.decode() if isinstance(method, bytes) else method, keys))
        return await continuation(client_call_details, request)


class SyncRecorder(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, name: str, seen: list[tuple[str, str, tuple[str, ...]]]) -> None:
        self._name = name
        self._seen = seen

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        keys = tuple(key for key, _ in (client_call_details.metadata or ()))
        self._seen.append((self._name, client_call_details.method, keys))
        return continuation(client_call_details, request)


@pytest.fixture
async def service(start: StartService) -> RunningService:
    return await start(three_server_pool("api"))


async def test_async_interceptors_run_in_order_inside_the_sdks_tracing(service: RunningService, spans: Any) -> None:
    seen: list[tuple[str, str, tuple[str, ...]]] = []
    client = AsyncClient(
        service.target, token="t" * 20, interceptors=[AioRecorder("outer", seen), AioRecorder("inner", seen)]
    )
    try:
        await client.select("api")
    finally:
        await client.close()

    calls = [(name, keys) for name, method, keys in seen if method == SELECT]
    assert [name for name, _ in calls] == ["outer", "inner"]
    assert all("traceparent" in keys and "authorization" in keys for _, keys in calls)
    assert any(span.name == SELECT.lstrip("/") for span in spans.get_finished_spans())


async def test_sync_interceptors_run_in_order_inside_the_sdks_tracing(service: RunningService, spans: Any) -> None:
    seen: list[tuple[str, str, tuple[str, ...]]] = []

    def run() -> None:
        with Client(service.target, interceptors=[SyncRecorder("outer", seen), SyncRecorder("inner", seen)]) as client:
            client.select("api")

    await asyncio.to_thread(run)

    calls = [(name, keys) for name, method, keys in seen if method == SELECT]
    assert [name for name, _ in calls] == ["outer", "inner"]
    assert all("traceparent" in keys for _, keys in calls)


async def test_interceptors_without_tracing_still_apply(service: RunningService, global_tracing: None) -> None:
    seen: list[tuple[str, str, tuple[str, ...]]] = []
    client = AsyncClient(service.target, interceptors=[AioRecorder("only", seen)])
    try:
        await client.select("api")
    finally:
        await client.close()

    assert [(name, method) for name, method, _ in seen] == [("only", SELECT)]


async def test_bad_interceptors_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"interceptors\[0\] must be a client interceptor"):
        AsyncClient("127.0.0.1:1", interceptors=[object()])  # type: ignore[list-item]  # the mistake under test
    with pytest.raises(ValueError, match=r"interceptors\[0\] must be a client interceptor"):
        Client("127.0.0.1:1", interceptors=[AioRecorder("aio", [])])  # type: ignore[list-item]  # an aio one, on purpose
    with pytest.raises(ValueError, match="interceptors must be a list"):
        AsyncClient("127.0.0.1:1", interceptors=AioRecorder("one", []))  # type: ignore[arg-type]  # not a list, on purpose
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    try:
        with pytest.raises(ValueError, match="with channel="):
            AsyncClient(channel=channel, interceptors=[AioRecorder("x", [])])
    finally:
        await channel.close()


async def test_awaited_and_plain_report_outcome_both_reach_the_service(service: RunningService) -> None:
    async with AsyncClient(service.target) as client:
        first = await client.select("api")
        second = await client.select("api")

        await client.report_outcome(first, success=True, latency_ms=3.0)
        client.report_outcome(second.decision_id, success=False, latency_ms=4.0)
        assert await client.flush_outcomes(5.0)
        stats = client.outcome_stats()

    assert (stats.sent, stats.unknown, stats.failed_batches) == (2, 0, 0)


async def test_sync_report_outcome_takes_the_selection(service: RunningService) -> None:
    def run() -> Any:
        with Client(service.target) as client:
            selection: Selection = client.select("api")
            client.report_outcome(selection, success=True, latency_ms=2.0)
            assert client.flush_outcomes(5.0)
            return client.outcome_stats()

    stats = await asyncio.to_thread(run)

    assert (stats.sent, stats.unknown) == (1, 0)


async def test_route_exposes_how_long_the_decision_took(service: RunningService) -> None:
    async with AsyncClient(service.target) as client, client.route("api") as route:
        decision_s = route.decision_s

    assert 0 < decision_s < 5.0  # one real round trip


async def test_report_load_needs_no_cpu_or_memory(service: RunningService) -> None:
    async with AsyncClient(service.target) as client:
        applied = await client.report_load("api", "s1", active_requests=3)
        status = await client.load_status("api")

    [s1] = [s for s in status.pools[0].servers if s.id == "s1"]
    assert applied == 1
    assert s1.load is not None
    assert (s1.load.cpu_percent, s1.load.memory_percent, s1.load.active_requests) == (0.0, 0.0, 3)


class TickingClock:
    """A clock that moves `step_s` each time it is read: route() reads it three times."""

    def __init__(self, step_s: float) -> None:
        self.now = 100.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


async def test_the_outcome_latency_is_the_blocks_and_decision_s_the_selections(service: RunningService) -> None:
    async with AsyncClient(service.target) as client:
        client._route_clock = TickingClock(0.25)  # read when asked, when answered, when the block ends
        async with client.route("api") as route:
            chosen = route.server_id
        assert await client.flush_outcomes(5.0)
        status = await client.load_status("api")

    [server] = [s for s in status.pools[0].servers if s.id == chosen]
    assert route.decision_s == 0.25
    assert server.ewma_latency_ms == 250.0  # the block's time only: one tick, not two


async def test_report_outcome_refuses_what_is_not_a_decision(service: RunningService) -> None:
    async with AsyncClient(service.target) as client:
        lease = await client.acquire_slot("api")
        with pytest.raises(TypeError, match=r"decision_id must be Selection\.decision_id .* got Lease"):
            client.report_outcome(lease, success=True, latency_ms=1.0)  # type: ignore[arg-type]  # the mistake under test
        with pytest.raises(ValueError, match="decision_id must be a non-empty string"):
            await client.report_outcome("", success=True, latency_ms=1.0)
        with pytest.raises(ValueError, match="latency_ms"):
            await client.report_outcome(await client.select("api"), success=True, latency_ms=-1.0)
        fallback = Selection("", "s1", "127.0.0.1:9001", "round_robin", False, fallback=True)
        await client.report_outcome(fallback, success=True, latency_ms=1.0)  # nothing to report: nothing queued
        await client.release_slot(lease.lease_id)
        stats = client.outcome_stats()

    assert (stats.sent, stats.pending, stats.dropped) == (0, 0, 0)


async def test_report_outcome_hands_back_one_shared_done_awaitable(service: RunningService) -> None:
    async with AsyncClient(service.target) as client:
        selections = [await client.select("api") for _ in range(2)]
        first = client.report_outcome(selections[0], success=True, latency_ms=1.0)
        second = client.report_outcome(selections[1], success=True, latency_ms=1.0)

        assert first is second  # no future (or any object) per call
        steps = first.__await__()
        with pytest.raises(StopIteration):  # done at once: awaiting it never yields to the event loop
            next(steps)


async def test_a_reporter_fed_from_outside_pushes_those_figures(service: RunningService) -> None:
    async with AsyncClient(service.target) as client:
        reporter = BackendReporter(client, "api", "s2", cpu="process")
        reporter.set_in_flight(5)
        reporter.observe(0.040)
        assert await reporter.report_now_async()
        status = await client.load_status("api")

    [s2] = [s for s in status.pools[0].servers if s.id == "s2"]
    assert s2.load is not None
    assert (s2.load.active_requests, s2.load.mean_latency_ms) == (5, 40.0)
    assert 0.0 <= s2.load.cpu_percent <= 100.0
