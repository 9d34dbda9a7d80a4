"""The traffic generator against a real in-process Decision service and real simulated backends.

Every request goes through the SDK and then to the chosen backend; the records
say what happened (one per arrival, in arrival order, at the seeded arrival
times), failures and timeouts reach the service as failed outcomes, slots that
are not granted and arrivals over the in-flight bound are recorded as failures
that reached no server, and batch workers size their batches by GetBatchSize.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from loadwarden.backend_sim import Arrivals, ClosedLoop, SimServer
from loadwarden.backend_sim._backend import RunningBackend, start_backend
from loadwarden.backend_sim._backend_cli import register
from loadwarden.backend_sim._batch_mode import parse_batch
from loadwarden.backend_sim._evaluate_client import wait_for_table
from loadwarden.backend_sim._traffic import TrafficPlan, TrafficResult, TrafficRunner, arrival_times, client_shares
from loadwarden.policy._operations import OperationSettings
from loadwarden.sdk import AsyncClient
from loadwarden.server import MonitorSettings, OutlierSettings, PoolSettings, PoolSpec, RunningService

from ...conftest import StartService

NO_EJECTION = OutlierSettings(disabled=True)

Deploy = Callable[..., Awaitable[tuple[RunningService, dict[str, RunningBackend]]]]


@pytest.fixture
async def deploy(start: StartService) -> AsyncIterator[Deploy]:
    """A service with pool "sim" and the given backends registered in it, reporting every 100 ms."""
    backends: list[RunningBackend] = []
    clients: list[AsyncClient] = []

    async def _deploy(
        *specs: SimServer, operations: tuple[OperationSettings, ...] = (), **pool: Any
    ) -> tuple[RunningService, dict[str, RunningBackend]]:
        service = await start(
            PoolSpec(PoolSettings(name="sim", outlier=NO_EJECTION, **pool), ()),
            operations=operations,
            monitor=MonitorSettings(
                enabled=bool(operations), cpu_weight=1.0, memory_weight=0.0, load_average_weight=0.0
            ),
        )
        reporter_client = AsyncClient(service.target)
        clients.append(reporter_client)
        started = {}
        for i, spec in enumerate(specs):
            running = await start_backend(
                spec, rng=random.Random(i), client=reporter_client, pool="sim", report_interval_s=0.1, item_cost=0.5
            )
            backends.append(running)
            started[spec.id] = running
        await register(service.target, "sim", list(started.values()))
        for running in started.values():
            await running.begin()
        return service, started

    yield _deploy
    for running in backends:
        await running.stop(0)
    for client in clients:
        await client.close()


async def run(service: RunningService, backends: dict[str, RunningBackend], plan: TrafficPlan) -> TrafficResult:
    async with AsyncClient(service.target, timeout_s=5.0, breaker=None, retry=None) as client:
        return await TrafficRunner(plan, client, {k: b.address for k, b in backends.items()}).run()


async def test_route_mode_records_every_arrival_at_its_seeded_time(deploy: Deploy) -> None:
    service, backends = await deploy(
        SimServer("a", workers=2, base_ms=10, service="constant"),
        SimServer("b", workers=2, base_ms=10, service="constant"),
    )
    arrivals = Arrivals(rate_per_s=100, requests=80)
    plan = TrafficPlan("route", "sim", arrivals, seed=11, timeout_ms=2000)

    result = await run(service, backends, plan)

    assert [r.time_s for r in result.records] == arrival_times(arrivals, random.Random(11))
    assert all(r.success and r.server in ("a", "b") and r.latency_ms >= 9.5 for r in result.records)
    assert {r.server for r in result.records} == {"a", "b"}  # round robin
    assert result.counters() == {
        "dropped": 0,
        "rejected": 0,
        "timed_out": 0,
        "unavailable": 0,
        "fallbacks": 0,
        "local": 0,
        "stale": 0,
        "late": 0,
    }
    assert sum(b.backend.served for b in backends.values()) == 80
    async with AsyncClient(service.target) as client:
        status = await client.load_status("sim")
    assert sum(s.selections_total for s in status.pools[0].servers) == 80


async def test_clients_deciding_locally_send_their_shares_of_the_same_arrivals(deploy: Deploy) -> None:
    """Three clients, as evaluate's client processes are: each sends the arrivals drawn for it,
    decides every request from the pushed table, and the service learns from every outcome."""
    service, backends = await deploy(
        SimServer("a", workers=2, base_ms=10, service="constant"),
        SimServer("b", workers=2, base_ms=10, service="constant"),
        strategy="p2c",
    )
    arrivals = Arrivals(rate_per_s=150, requests=90)
    addresses = {k: b.address for k, b in backends.items()}
    clients = [AsyncClient(service.target, timeout_s=5.0, decisions="local") for _ in range(3)]
    try:
        for client in clients:
            await wait_for_table(client, "sim", sorted(addresses), 5.0)
        results = await asyncio.gather(
            *(
                TrafficRunner(
                    TrafficPlan("route", "sim", arrivals, seed=11, timeout_ms=2000, client=i, clients=3),
                    client,
                    addresses,
                ).run()
                for i, client in enumerate(clients)
            )
        )
        for client in clients:
            assert await client.flush_outcomes(5.0)
    finally:
        for client in clients:
            await client.close()

    times = arrival_times(arrivals, random.Random(11))
    shares = client_shares(len(times), 3, 11)
    for i, result in enumerate(results):
        assert [r.time_s for r in result.records] == [t for t, c in zip(times, shares, strict=True) if c == i]
        assert result.local == len(result.records) > 0 and result.stale == 0
        assert all(r.success for r in result.records)
    async with AsyncClient(service.target) as client:
        status = await client.load_status("sim")
    servers = status.pools[0].servers
    assert sum(s.selections_total for s in servers) == 0  # the service decided none of them
    used = {r.server for result in results for r in result.records}
    assert used == {"a", "b"}
    assert all(s.ewma_latency_ms >= 9.5 for s in servers)  # it learned from their outcomes (10 ms each)


async def test_failures_and_timeouts_reach_the_service_as_failed_outcomes(deploy: Deploy) -> None:
    service, backends = await deploy(
        SimServer("failing", base_ms=5, failure_probability=1.0), SimServer("stuck", base_ms=2000, service="constant")
    )
    plan = TrafficPlan("route", "sim", Arrivals(rate_per_s=50, requests=20), seed=1, timeout_ms=150)

    result = await run(service, backends, plan)

    assert not any(r.success for r in result.records)
    stuck = [r for r in result.records if r.server == "stuck"]
    assert stuck and result.timeouts == len(stuck)
    assert all(150 <= r.latency_ms < 1500 for r in stuck)
    async with AsyncClient(service.target) as client:
        status = await client.load_status("sim")
    errors = {s.id: s.error_rate for s in status.pools[0].servers}
    assert errors["failing"] > 0.5 and errors["stuck"] > 0.5
    assert all(s.in_flight == 0 for s in status.pools[0].servers)  # every outcome was reported


async def test_arrivals_over_the_in_flight_bound_are_dropped_without_reaching_a_server(deploy: Deploy) -> None:
    service, backends = await deploy(SimServer("a", base_ms=300, service="constant"))
    plan = TrafficPlan("route", "sim", Arrivals(rate_per_s=200, requests=30, max_in_flight=3), seed=2, timeout_ms=5000)

    result = await run(service, backends, plan)

    dropped = [r for r in result.records if r.server == ""]
    assert result.dropped == len(dropped) > 0
    assert not any(r.success for r in dropped)
    assert backends["a"].backend.arrived == len(result.records) - len(dropped)


async def test_slot_mode_holds_slots_and_records_denials_with_no_server(deploy: Deploy) -> None:
    service, backends = await deploy(
        SimServer("a", workers=4, base_ms=200, service="constant"), max_concurrency=2, max_wait_ms=50
    )
    plan = TrafficPlan("slot", "sim", Arrivals(rate_per_s=200, requests=20), seed=3, timeout_ms=5000, slot_wait_s=0.05)

    result = await run(service, backends, plan)

    admitted = [r for r in result.records if r.server]
    assert admitted and all(r.success and r.server == "a" for r in admitted)
    assert result.rejected == len(result.records) - len(admitted) > 0
    assert backends["a"].backend.max_in_service <= 2  # the pool's limit, not the backend's four workers


async def test_closed_loop_users_keep_at_most_one_request_each(deploy: Deploy) -> None:
    service, backends = await deploy(SimServer("a", workers=8, base_ms=20, service="constant"))
    plan = TrafficPlan("route", "sim", ClosedLoop(users=3, think_ms=5, requests=30), seed=4, timeout_ms=2000)

    result = await run(service, backends, plan)

    assert len(result.records) == 30 and all(r.success for r in result.records)
    assert backends["a"].backend.max_in_service <= 3


PARAMS = {"target_latency_ms": 10_000, "additive_step": 5}


async def test_batch_workers_size_batches_by_get_batch_size(deploy: Deploy) -> None:
    batch = parse_batch(
        {
            "operation": "import",
            "workers": 2,
            "item_cost": 0.5,
            "min_batch_size": 2,
            "max_batch_size": 40,
            "default_batch_size": 5,
        },
        pool="sim",
        controllers=["latency_target"],
        params={"latency_target": PARAMS},
    )
    config = batch.operation_config("latency_target", PARAMS, "sim")
    operation = OperationSettings(
        name="import",
        min_batch_size=2,
        max_batch_size=40,
        default_batch_size=5,
        mode="latency_target",
        target_latency_ms=10_000,
        additive_step=5,
        load_source="pool",
        pool="sim",
    )
    assert config["mode"] == operation.mode and config["pool"] == operation.pool
    service, backends = await deploy(
        SimServer("a", workers=4, base_ms=10, service="constant"),
        SimServer("b", workers=4, base_ms=10, service="constant"),
        operations=(operation,),
    )
    plan = TrafficPlan("batch", "sim", Arrivals(rate_per_s=20, duration_s=1.5), seed=5, timeout_ms=5000, batch=batch)

    result = await run(service, backends, plan)

    assert result.records and all(r.success for r in result.records)
    sizes = [b.size for b in result.batches]
    assert len(sizes) >= 4 and sizes[0] == 5
    assert max(sizes) > 5, "every batch under the target grows the next one"
    assert all(b.success and b.server in ("a", "b") for b in result.batches)
    first = result.batches[0]
    assert first.latency_ms >= 10 * (1 + 0.5 * (first.size - 1)) * 0.95  # n items take 1 + 0.5 (n - 1) times
    async with AsyncClient(service.target) as client:
        status = await client.load_status()
    [op] = [o for o in status.operations if o.name == "import"]
    assert op.decisions_total >= len(sizes) and op.adjustments_total >= 1
    assert op.batch_size >= sizes[-1]  # the last report under the target grew it once more
