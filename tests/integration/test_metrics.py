"""Metrics end to end: a scripted workload over gRPC, then /metrics over HTTP, parsed and checked.

The service runs in-process with the admin port on 127.0.0.1:0 and a manual clock,
so every counter, gauge and histogram count below is exact.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Mapping

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadwarden.policy._operations import OperationSettings
from loadwarden.policy._settings import OutlierSettings, RateLimit
from loadwarden.server import ManualClock, PoolSettings, PoolSpec, RunningService, ServerSpec
from loadwarden.server.app._config import AdminSettings, MonitorSettings
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

TOKEN = "metrics-test-token-0123456789"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def servers(*ids: str) -> tuple[ServerSpec, ...]:
    return tuple(ServerSpec(sid, f"127.0.0.1:{9000 + i}") for i, sid in enumerate(ids, 1))


async def scrape(running: RunningService) -> tuple[str, Samples]:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{running.admin_port}/metrics"
        async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200
            content_type, text = response.headers["Content-Type"], await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return content_type, samples


async def scrape_until(
    running: RunningService, name: str, timeout_s: float = 10.0, **labels: str
) -> tuple[str, Samples]:
    """Scrapes until a sample exists (for a record made just after the client got its answer)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        content_type, samples = await scrape(running)
        if (name, frozenset(labels.items())) in samples or loop.time() >= deadline:
            return content_type, samples
        await asyncio.sleep(0.01)


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}; {name} has {len(series(samples, name))} series"
    return samples[key]


def series(samples: Samples, name: str) -> Mapping[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def wait_for(condition, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


@pytest.fixture
async def service(start, clock: ManualClock) -> RunningService:
    return await start(
        PoolSpec(PoolSettings(name="api", outlier=OutlierSettings(consecutive_failures=2)), servers("s1", "s2", "s3")),
        PoolSpec(PoolSettings(name="solo", strategy="least_connections"), servers("only")),
        PoolSpec(PoolSettings(name="slots", max_concurrency=1, max_wait_ms=10_000), servers("w1")),
        PoolSpec(PoolSettings(name="rated", rate_limit=RateLimit(count=1, per_s=60.0, burst=1)), servers("r1")),
        clock=clock,
        operations=(
            OperationSettings(
                name="import",
                min_batch_size=1,
                max_batch_size=100,
                default_batch_size=10,
                load_source="pool",
                pool="api",
            ),
        ),
        monitor=MonitorSettings(enabled=False),
        admin=AdminSettings(listen="127.0.0.1:0", token=TOKEN),
    )


async def test_a_scripted_workload_shows_up_exactly_in_metrics(
    service: RunningService,
    channel_to,
    clock: ManualClock,
) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))

    # Routing: six selections round-robin over s1, s2, s3; s1's two outcomes fail, so it is ejected.
    picks = [await stub.SelectServer(pb.SelectServerRequest(pool="api")) for _ in range(6)]
    assert [p.server_id for p in picks] == ["s1", "s2", "s3", "s1", "s2", "s3"]
    outcomes = [pb.Outcome(decision_id=p.decision_id, success=p.server_id != "s1", latency_ms=5.0) for p in picks[:5]]
    await stub.ReportOutcome(pb.ReportOutcomeRequest(outcomes=outcomes))
    assert service.core.pool("api").servers["s1"].ejections_total == 1
    with pytest.raises(grpc.aio.AioRpcError) as unavailable:
        await stub.SelectServer(pb.SelectServerRequest(pool="solo", exclude_server_ids=["only"]))
    assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError):  # an unknown pool is not a decision, and adds no series
        await stub.SelectServer(pb.SelectServerRequest(pool="nope"))

    # Load: s2 and s3 report; s1 never does, so it has no cpu/memory series.
    await stub.ReportLoad(
        pb.ReportLoadRequest(
            reports=[
                common.LoadReport(pool="api", server_id="s2", cpu_percent=10.0, memory_percent=20.0),
                common.LoadReport(pool="api", server_id="s3", cpu_percent=30.0, memory_percent=40.0),
            ]
        )
    )

    # Batch sizing: load 20 is below the low threshold, so the size moves once, from 10 to the max 100.
    assert (await stub.GetBatchSize(pb.GetBatchSizeRequest(operation="import"))).batch_size == 100
    assert (await stub.GetBatchSize(pb.GetBatchSizeRequest(operation="import"))).batch_size == 100

    # Admission: a grant, a denial at capacity, a waiter granted after 250 ms, a rate-limit rejection.
    held = await stub.AcquireSlot(pb.AcquireSlotRequest(pool="slots"))
    assert held.granted
    denied = await stub.AcquireSlot(pb.AcquireSlotRequest(pool="slots"))
    assert not denied.granted and denied.denial_reason == pb.DENIAL_REASON_AT_CAPACITY
    waiter = asyncio.ensure_future(stub.AcquireSlot(pb.AcquireSlotRequest(pool="slots", max_wait_ms=10_000)))
    slots = service.core.pool("slots").slots
    await wait_for(lambda: slots.waiting == 1)
    _, queued = await scrape(service)
    assert value(queued, "loadwarden_queue_length", pool="slots") == 1
    clock.advance(0.25)
    await stub.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=held.lease.lease_id, success=True))
    second = await waiter
    assert second.granted and second.queue_wait_ms == 250
    assert (await stub.AcquireSlot(pb.AcquireSlotRequest(pool="rated", client_key="k"))).granted
    with pytest.raises(grpc.aio.AioRpcError) as limited:
        await stub.AcquireSlot(pb.AcquireSlotRequest(pool="rated", client_key="k"))
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # grpc.aio's abort sends the status before it raises in the handler, so the client can
    # see this refusal a moment before the duration interceptor records it: scrape until it has.
    content_type, m = await scrape_until(
        service, "loadwarden_decision_duration_seconds_count", method="AcquireSlot", code="RESOURCE_EXHAUSTED"
    )
    assert content_type.startswith("text/plain; version=")

    # Decisions by pool, strategy and result: every pool's results, at zero until seen.
    decided = {labels: v for labels, v in series(m, "loadwarden_decisions_total").items() if v}
    assert decided == {
        frozenset({"pool": "api", "strategy": "round_robin", "result": "selected"}.items()): 6,
        frozenset({"pool": "solo", "strategy": "least_connections", "result": "no_eligible_server"}.items()): 1,
    }
    assert len(series(m, "loadwarden_decisions_total")) == 4 * 2
    # Handler time of decision RPCs, by method and code, in seconds.
    duration = "loadwarden_decision_duration_seconds_count"
    assert value(m, duration, method="SelectServer", code="OK") == 6
    assert value(m, duration, method="SelectServer", code="UNAVAILABLE") == 1
    assert value(m, duration, method="SelectServer", code="NOT_FOUND") == 1
    assert value(m, duration, method="AcquireSlot", code="OK") == 4
    assert value(m, duration, method="AcquireSlot", code="RESOURCE_EXHAUSTED") == 1
    assert value(m, duration, method="GetBatchSize", code="OK") == 2
    assert value(m, duration, method="ReportOutcome", code="OK") == 1
    assert 0 < value(m, "loadwarden_decision_duration_seconds_sum", method="SelectServer", code="OK") < 6

    # Admission: denials by reason (every pool's reasons, at zero until seen), rate-limit
    # rejections, queue waits, leases, queue length.
    denials = series(m, "loadwarden_denials_total")
    assert {labels: v for labels, v in denials.items() if v} == {
        frozenset({"pool": "slots", "reason": "at_capacity"}.items()): 1
    }
    assert len(denials) == 4 * 3
    assert value(m, "loadwarden_rate_limit_rejections_total", pool="rated") == 1
    assert value(m, "loadwarden_rate_limit_rejections_total", pool="slots") == 0
    wait = "loadwarden_queue_wait_seconds"
    assert value(m, f"{wait}_count", pool="slots", result="granted") == 2
    assert value(m, f"{wait}_count", pool="slots", result="denied") == 1
    assert value(m, f"{wait}_count", pool="rated", result="granted") == 1
    assert value(m, f"{wait}_sum", pool="slots", result="granted") == 0.25
    assert value(m, f"{wait}_bucket", pool="slots", result="granted", le="0.1") == 1
    assert value(m, f"{wait}_bucket", pool="slots", result="granted", le="0.25") == 2
    assert value(m, "loadwarden_leases_active", pool="slots") == 1
    assert value(m, "loadwarden_leases_active", pool="rated") == 1
    assert value(m, "loadwarden_leases_active", pool="api") == 0
    assert value(m, "loadwarden_queue_length", pool="slots") == 0
    assert value(m, "loadwarden_concurrency_limit", pool="slots") == 1
    assert value(m, "loadwarden_leases_reclaimed_total") == 0

    # Batch sizing.
    assert value(m, "loadwarden_batch_size", operation="import") == 100
    assert value(m, "loadwarden_batch_adjustments_total", operation="import") == 1

    # Per-server load (ratios 0-1) and ejections.
    assert series(m, "loadwarden_server_cpu_ratio") == {
        frozenset({"pool": "api", "server": "s2"}.items()): 0.1,
        frozenset({"pool": "api", "server": "s3"}.items()): 0.3,
    }
    assert value(m, "loadwarden_server_memory_ratio", pool="api", server="s3") == 0.4
    assert value(m, "loadwarden_server_in_flight", pool="api", server="s3") == 1  # the sixth pick is unreported
    assert value(m, "loadwarden_server_in_flight", pool="api", server="s1") == 0
    assert value(m, "loadwarden_server_ejections_total", pool="api", server="s1") == 1
    assert value(m, "loadwarden_server_ejections_total", pool="api", server="s2") == 0

    # Per-server traffic: selections by who decided, outcomes by result, latency, share, state.
    for sid in ("s1", "s2", "s3"):
        assert value(m, "loadwarden_server_selections_total", pool="api", server=sid, by="service") == 2
        assert value(m, "loadwarden_server_selections_total", pool="api", server=sid, by="client") == 0
        # The first collection (the scrape while a waiter queued) measured since the start.
        assert value(m, "loadwarden_server_traffic_share_ratio", pool="api", server=sid) == pytest.approx(1 / 3)
    outcome = "loadwarden_server_outcomes_total"
    assert value(m, outcome, pool="api", server="s1", result="failure") == 2
    assert value(m, outcome, pool="api", server="s1", result="success") == 0
    assert value(m, outcome, pool="api", server="s2", result="success") == 2
    assert value(m, outcome, pool="api", server="s3", result="success") == 1
    assert value(m, outcome, pool="api", server="s3", result="expired") == 0
    latency = "loadwarden_server_latency_seconds"
    assert value(m, f"{latency}_count", pool="api", server="s1") == 2
    assert value(m, f"{latency}_sum", pool="api", server="s1") == pytest.approx(0.01)
    assert value(m, f"{latency}_bucket", pool="api", server="s2", le="0.005") == 2
    state = "loadwarden_server_state"
    assert {dict(labels)["state"]: v for labels, v in series(m, state).items() if ("server", "s1") in labels} == {
        "serving": 0,
        "stale": 0,
        "draining": 0,
        "ejected": 1,
        "unhealthy": 0,
        "degraded": 0,
    }
    assert value(m, state, pool="api", server="s2", state="serving") == 1
    assert value(m, state, pool="api", server="s2", state="ejected") == 0

    # Nothing keyed by a name a client made up.
    assert not any(("pool", "nope") in labels for _, labels in m)

    # A load report past its TTL is unknown, not idle: its series goes away.
    clock.advance(11.0)
    _, later = await scrape(service)
    assert series(later, "loadwarden_server_cpu_ratio") == {}
    assert value(later, "loadwarden_decisions_total", pool="api", strategy="round_robin", result="selected") == 6
    # No selection since the last share was measured: no traffic, no share.
    assert value(later, "loadwarden_server_traffic_share_ratio", pool="api", server="s1") == 0
    # The ejection is over (its base time is 30 s); s1 is back and the state series says so.
    clock.advance(30.0)
    _, back = await scrape(service)
    assert value(back, state, pool="api", server="s1", state="ejected") == 0
    assert value(back, state, pool="api", server="s1", state="serving") == 1


async def test_two_services_in_one_process_keep_their_own_numbers(start, channel_to) -> None:
    admin = AdminSettings(listen="127.0.0.1:0", token=TOKEN)
    one = await start(
        PoolSpec(PoolSettings(name="api"), servers("a")), admin=admin, monitor=MonitorSettings(enabled=False)
    )
    two = await start(
        PoolSpec(PoolSettings(name="api"), servers("b")), admin=admin, monitor=MonitorSettings(enabled=False)
    )
    assert one.admin_port != two.admin_port
    for _ in range(3):
        await pb_grpc.DecisionServiceStub(channel_to(one)).SelectServer(pb.SelectServerRequest(pool="api"))
    _, m1 = await scrape(one)
    _, m2 = await scrape(two)
    assert value(m1, "loadwarden_decisions_total", pool="api", strategy="round_robin", result="selected") == 3
    assert value(m2, "loadwarden_decisions_total", pool="api", strategy="round_robin", result="selected") == 0
    assert value(m2, "loadwarden_server_in_flight", pool="api", server="b") == 0


async def test_every_name_follows_prometheus_conventions_and_known_series_start_at_zero(
    service: RunningService,
) -> None:
    """Base units, ``_total`` counters, the standard process/python collectors, build info; and
    before any traffic, each pool's decision, denial and per-server series are already there."""
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{service.admin_port}/metrics"
        async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            text = await response.text()
    families = list(text_string_to_metric_families(text))
    names = {family.name: family.type for family in families}
    samples = {sample.name for family in families for sample in family.samples}

    for name, kind in names.items():
        assert "_milliseconds" not in name and "_percent" not in name and "_ms" not in name, name
        if kind == "counter":
            assert all(s.name.endswith(("_total", "_created")) for f in families if f.name == name for s in f.samples)
    assert not [s for s in samples if s.startswith("loadwarden_") and s.endswith("_percent")]
    for standard in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"):
        assert standard in samples, standard
    _, m = await scrape(service)
    (build,) = series(m, "loadwarden_build_info")
    assert (
        dict(build)["version"] == importlib.metadata.version("loadwarden") and m[("loadwarden_build_info", build)] == 1
    )

    # Known label sets at zero from the start.
    assert value(m, "loadwarden_decisions_total", pool="api", strategy="round_robin", result="selected") == 0
    assert (
        value(m, "loadwarden_decisions_total", pool="solo", strategy="least_connections", result="no_eligible_server")
        == 0
    )
    for reason in ("at_capacity", "queue_timeout", "no_eligible_server"):
        assert value(m, "loadwarden_denials_total", pool="slots", reason=reason) == 0
    for result in ("success", "failure", "expired"):
        assert value(m, "loadwarden_server_outcomes_total", pool="api", server="s2", result=result) == 0
    assert value(m, "loadwarden_server_selections_total", pool="solo", server="only", by="service") == 0
    assert value(m, "loadwarden_server_state", pool="solo", server="only", state="serving") == 1
