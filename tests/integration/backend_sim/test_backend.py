"""Simulated backends behind real grpc.aio servers on 127.0.0.1:0, in process.

Queueing is real (capacity 4 x 100 ms: 40 requests take about 1 s), the queue
is FIFO, failures and outages answer the right status codes, a caller's deadline
frees its place, and the backend reports its own load (busy-worker fraction,
queued + in service) to a real Decision service.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # grpcio-health-checking: no stubs, no py.typed

from loadwarden.backend_sim import Phase, SimServer
from loadwarden.backend_sim._backend import SERVICE_NAME, RunningBackend, start_backend
from loadwarden.backend_sim._backend_cli import register
from loadwarden.sdk import AsyncClient
from loadwarden.server import PoolSettings, PoolSpec, ServerSpec
from loadwarden.v1 import backend_sim_pb2 as pb
from loadwarden.v1 import backend_sim_pb2_grpc as pb_grpc

from ...conftest import StartService, wait_for

WAIT_S = 10.0  # bound of every poll, seconds
poll = functools.partial(wait_for, timeout_s=WAIT_S)  # every wait in this file is bounded by WAIT_S

StartBackend = Callable[..., Awaitable[RunningBackend]]


@pytest.fixture
async def backend() -> AsyncIterator[StartBackend]:
    """Starts simulated backends on 127.0.0.1:0; stops them at teardown."""
    started: list[RunningBackend] = []

    async def _start(spec: SimServer, **kwargs: Any) -> RunningBackend:
        running = await start_backend(spec, rng=random.Random(3), **kwargs)
        await running.begin()
        started.append(running)
        return running

    yield _start
    for running in started:
        await running.stop(0)


@pytest.fixture
async def stub_for() -> AsyncIterator[Callable[[RunningBackend], pb_grpc.SimulatedBackendServiceAsyncStub]]:
    channels: list[grpc.aio.Channel] = []

    def _open(running: RunningBackend) -> pb_grpc.SimulatedBackendServiceAsyncStub:
        channel = grpc.aio.insecure_channel(running.address)
        channels.append(channel)
        return pb_grpc.SimulatedBackendServiceStub(channel)

    yield _open
    for channel in channels:
        await channel.close()


async def test_capacity_four_at_100_ms_serves_40_concurrent_requests_in_about_one_second(
    backend: StartBackend, stub_for: Any
) -> None:
    running = await backend(SimServer("b1", workers=4, base_ms=100, service="constant"))
    stub = stub_for(running)
    await stub.Handle(pb.HandleRequest(request_id="warm"), timeout=WAIT_S)  # the channel is connected

    async def one(i: int) -> tuple[float, pb.HandleResponse]:
        response = await stub.Handle(pb.HandleRequest(request_id=f"r{i}"), timeout=30)
        return time.monotonic(), response

    began = time.monotonic()
    done = await asyncio.gather(*(one(i) for i in range(40)))

    last_s = max(t for t, _ in done) - began
    assert last_s >= 0.9, f"the last of 40 requests finished after {last_s:.3f} s: the queue did not queue"
    assert last_s < 5.0, f"the last of 40 requests finished after {last_s:.3f} s"
    assert running.backend.max_in_service == 4
    responses = [r for _, r in done]
    assert all(r.server_id == "b1" and r.service_ms == pytest.approx(100.0) for r in responses)
    # Ten waves of four: the longest wait is about nine service times.
    assert max(r.queue_ms for r in responses) >= 850
    assert running.backend.served == 41 and running.backend.in_service == 0 and running.backend.queued == 0


async def test_the_queue_is_first_come_first_served(backend: StartBackend, stub_for: Any) -> None:
    running = await backend(SimServer("b1", workers=1, base_ms=150, service="constant"))
    stub = stub_for(running)
    await stub.Handle(pb.HandleRequest(), timeout=WAIT_S)
    finished: list[int] = []

    async def one(i: int) -> None:
        await stub.Handle(pb.HandleRequest(request_id=str(i)), timeout=30)
        finished.append(i)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(one(i)))
        # The next request is sent once this one has joined the queue (after the first, unnumbered one).
        await poll(lambda: asyncio.sleep(0, running.backend.arrived), lambda n: n == 1 + len(tasks), "request arrived")
    await asyncio.gather(*tasks)

    assert finished == list(range(6))


async def test_a_request_drawn_to_fail_fails_internal_after_its_service_time(
    backend: StartBackend, stub_for: Any
) -> None:
    running = await backend(SimServer("b1", base_ms=200, service="constant", failure_probability=1.0))
    stub = stub_for(running)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Handle(pb.HandleRequest(), timeout=WAIT_S)  # connects
    began = time.monotonic()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Handle(pb.HandleRequest(), timeout=WAIT_S)

    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "simulated failure" in (caught.value.details() or "")
    assert time.monotonic() - began >= 0.19
    assert running.backend.failed == 2


async def test_items_scale_the_service_time(backend: StartBackend, stub_for: Any) -> None:
    running = await backend(SimServer("b1", base_ms=20, service="constant"), item_cost=0.5)
    stub = stub_for(running)

    response = await stub.Handle(pb.HandleRequest(items=5), timeout=WAIT_S)

    assert response.items == 5
    assert response.service_ms == pytest.approx(20 * (1 + 0.5 * 4))


async def test_bad_fields_are_invalid_argument_naming_the_field(backend: StartBackend, stub_for: Any) -> None:
    stub = stub_for(await backend(SimServer("b1", base_ms=1)))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Handle(pb.HandleRequest(items=2_000_000), timeout=WAIT_S)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("items:")


async def test_a_caller_deadline_takes_a_queued_request_out_and_an_abandoned_service_frees_its_worker(
    backend: StartBackend, stub_for: Any
) -> None:
    running = await backend(SimServer("b1", workers=1, base_ms=400, service="constant"))
    stub = stub_for(running)
    first = asyncio.ensure_future(stub.Handle(pb.HandleRequest(request_id="first"), timeout=WAIT_S))
    await poll(lambda: asyncio.sleep(0, running.backend.in_service), lambda n: n == 1, "first in service")

    with pytest.raises(grpc.aio.AioRpcError) as caught:  # queued behind "first", gives up
        await stub.Handle(pb.HandleRequest(request_id="impatient"), timeout=0.1)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await poll(lambda: asyncio.sleep(0, running.backend.queued), lambda n: n == 0, "the queue emptied")
    await first

    # In service, then abandoned: the worker is free for the next request at once.
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Handle(pb.HandleRequest(request_id="abandoned"), timeout=0.1)
    await poll(lambda: asyncio.sleep(0, running.backend.in_service), lambda n: n == 0, "the worker freed")
    response = await stub.Handle(pb.HandleRequest(request_id="next"), timeout=WAIT_S)

    assert response.queue_ms < 100, "the abandoned request still held the worker"
    assert running.backend.cancelled == 2
    assert running.backend.max_in_service == 1


async def test_an_outage_refuses_at_once_with_unavailable_and_health_not_serving(
    backend: StartBackend, stub_for: Any
) -> None:
    spec = SimServer("b1", base_ms=50, service="constant", schedule=(Phase(start_s=0.0, duration_s=1.0, outage=True),))
    running = await backend(spec)
    stub = stub_for(running)
    health = health_pb2_grpc.HealthStub(grpc.aio.insecure_channel(running.address))

    status = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=WAIT_S)
    assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
    began = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Handle(pb.HandleRequest(), timeout=WAIT_S)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - began < 0.5

    await poll(
        lambda: health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=WAIT_S),
        lambda r: r.status == health_pb2.HealthCheckResponse.SERVING,
        "health back to SERVING",
    )
    response = await stub.Handle(pb.HandleRequest(), timeout=WAIT_S)
    assert response.service_ms == pytest.approx(50.0)


async def test_a_slowdown_phase_multiplies_the_service_time(backend: StartBackend, stub_for: Any) -> None:
    spec = SimServer("b1", base_ms=10, service="constant", schedule=(Phase(start_s=0.0, duration_s=60, slowdown=5),))
    stub = stub_for(await backend(spec))

    response = await stub.Handle(pb.HandleRequest(), timeout=WAIT_S)

    assert response.service_ms == pytest.approx(50.0)


async def test_load_reports_carry_the_busy_worker_fraction_and_queued_plus_in_service(
    start: StartService, backend: StartBackend, stub_for: Any
) -> None:
    service = await start(PoolSpec(PoolSettings(name="sim"), ()))
    async with AsyncClient(service.target) as client:
        running = await backend(
            SimServer("b1", workers=2, base_ms=3000, service="constant"),
            client=client,
            pool="sim",
            report_interval_s=0.1,
        )
        await register(service.target, "sim", [running])
        stub = stub_for(running)
        calls = [asyncio.ensure_future(stub.Handle(pb.HandleRequest(), timeout=WAIT_S)) for _ in range(5)]

        async def server_load() -> Any:
            status = await client.load_status("sim")
            [server] = status.pools[0].servers
            return server

        server = await poll(
            server_load,
            lambda s: s.load is not None and s.load.active_requests == 5 and s.load.cpu_percent >= 99.0,
            "a report of 5 active, 100 % busy",
        )
        assert server.address == running.address
        assert server.load.memory_percent == 0.0
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await poll(server_load, lambda s: s.load.active_requests == 0, "cancelled requests leave the count")
        assert running.reporter is not None and running.reporter.stats().pushed >= 2


async def test_an_outage_stops_the_load_reports_until_it_ends(start: StartService, backend: StartBackend) -> None:
    service = await start(PoolSpec(PoolSettings(name="sim"), (ServerSpec("b1", "127.0.0.1:1"),)))
    spec = SimServer("b1", base_ms=10, schedule=(Phase(start_s=0.5, duration_s=1.0, outage=True),))
    async with AsyncClient(service.target) as client:
        running = await backend(spec, client=client, pool="sim", report_interval_s=0.05)
        await poll(lambda: asyncio.sleep(0, running.down), bool, "outage began")
        pushed = running.reporter.stats().pushed if running.reporter else 0
        assert pushed >= 1
        await asyncio.sleep(0.3)  # several intervals inside the outage: nothing may be pushed
        assert running.down and running.reporter is not None and running.reporter.stats().pushed == pushed
        await poll(
            lambda: asyncio.sleep(0, running.reporter.stats().pushed if running.reporter else 0),
            lambda n: n > pushed,
            "reports resumed after the outage",
        )
        assert not running.down
