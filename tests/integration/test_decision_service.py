"""DecisionService and AdminService over a real grpc.aio server on 127.0.0.1:0."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct, Value
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # grpcio-health-checking: no stubs, no py.typed

from loadwarden.server import ManualClock
from loadwarden.v1 import admin_pb2 as admin
from loadwarden.v1 import admin_pb2_grpc as admin_grpc
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import three_server_pool


@pytest.fixture
async def stubs(start, channel_to, clock: ManualClock):
    running = await start(three_server_pool("api"), three_server_pool("lc", "least_connections"), clock=clock)
    channel = channel_to(running)
    return pb_grpc.DecisionServiceStub(channel), admin_grpc.AdminServiceStub(channel), channel


async def status(stub: pb_grpc.DecisionServiceAsyncStub, pool: str) -> dict[str, common.ServerStatus]:
    answer = await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool=pool))
    return {s.id: s for s in answer.status.pools[0].servers}


def load(pool: str, server: str, **values: Any) -> common.LoadReport:
    return common.LoadReport(pool=pool, server_id=server, **values)


async def test_round_robin_spreads_300_selections_evenly(stubs) -> None:
    decision, _, _ = stubs
    answers = [await decision.SelectServer(pb.SelectServerRequest(pool="api")) for _ in range(300)]
    assert Counter(a.server_id for a in answers) == {"s1": 100, "s2": 100, "s3": 100}
    assert len({a.decision_id for a in answers}) == 300
    assert all(a.strategy == "round_robin" and a.decision_ttl_ms == 30_000 for a in answers)
    assert {a.address for a in answers} == {"127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"}


async def test_least_connections_picks_fewest_in_flight(stubs) -> None:
    decision, _, _ = stubs
    held = []
    for exclude in (["s2", "s3"], ["s2", "s3"], ["s1", "s3"]):  # s1: 2 in flight, s2: 1, s3: 0
        held.append(await decision.SelectServer(pb.SelectServerRequest(pool="lc", exclude_server_ids=exclude)))
    assert (await decision.SelectServer(pb.SelectServerRequest(pool="lc"))).server_id == "s3"
    # s3 now has 1 too; release s1's two: s1 becomes the least loaded.
    outcomes = [pb.Outcome(decision_id=h.decision_id, success=True, latency_ms=3) for h in held[:2]]
    assert (await decision.ReportOutcome(pb.ReportOutcomeRequest(outcomes=outcomes))).applied == 2
    assert (await decision.SelectServer(pb.SelectServerRequest(pool="lc"))).server_id == "s1"
    in_flight = {k: v.in_flight for k, v in (await status(decision, "lc")).items()}
    assert in_flight == {"s1": 1, "s2": 1, "s3": 1}


async def test_a_drain_request_without_a_state_leaves_the_server_drained(stubs) -> None:
    """With the old `bool drain`, leaving the field out read as false and un-drained it."""
    decision, admin_stub, _ = stubs
    await admin_stub.DrainServer(admin.DrainServerRequest(pool="api", server_id="s1", state=admin.DRAIN_STATE_DRAINING))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin_stub.DrainServer(admin.DrainServerRequest(pool="api", server_id="s1"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("state: must be DRAIN_STATE_DRAINING or DRAIN_STATE_SERVING, got")
    assert (await status(decision, "api"))["s1"].state == common.SERVER_STATE_DRAINING
    back = await admin_stub.DrainServer(
        admin.DrainServerRequest(pool="api", server_id="s1", state=admin.DRAIN_STATE_SERVING)
    )
    assert back.server.state == common.SERVER_STATE_SERVING


async def test_drained_and_stale_servers_are_never_picked(stubs, clock: ManualClock) -> None:
    decision, admin_stub, _ = stubs
    await admin_stub.DrainServer(admin.DrainServerRequest(pool="api", server_id="s1", state=admin.DRAIN_STATE_DRAINING))
    await decision.ReportLoad(pb.ReportLoadRequest(reports=[load("api", "s2", cpu_percent=10)]))
    clock.advance(10.5)  # s2's report is now older than the default 10 s TTL
    picked = {(await decision.SelectServer(pb.SelectServerRequest(pool="api"))).server_id for _ in range(20)}
    assert picked == {"s3"}
    states = {k: v.state for k, v in (await status(decision, "api")).items()}
    assert states == {
        "s1": common.SERVER_STATE_DRAINING,
        "s2": common.SERVER_STATE_STALE,
        "s3": common.SERVER_STATE_SERVING,
    }
    await admin_stub.DrainServer(admin.DrainServerRequest(pool="api", server_id="s3", state=admin.DRAIN_STATE_DRAINING))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await decision.SelectServer(pb.SelectServerRequest(pool="api"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no eligible server" in (err.value.details() or "")
    assert "2 draining" in (err.value.details() or "") and "1 stale" in (err.value.details() or "")


async def test_load_status_shows_load_in_flight_and_health(stubs) -> None:
    decision, _, _ = stubs
    report = load("api", "s2", cpu_percent=55.5, memory_percent=40, active_requests=7, mean_latency_ms=12.5)
    answer = await decision.ReportLoad(pb.ReportLoadRequest(reports=[report]))
    assert answer.applied == 1 and answer.received_at.seconds > 0
    chosen = await decision.SelectServer(pb.SelectServerRequest(pool="api"))
    whole = (await decision.GetLoadStatus(pb.GetLoadStatusRequest())).status
    assert [p.name for p in whole.pools] == ["api", "lc"]
    assert whole.pending_decisions == 1 and whole.generated_at.seconds > 0
    api = whole.pools[0]
    assert api.strategy == "round_robin" and api.eligible_servers == 3 and api.in_flight == 1
    servers = {s.id: s for s in api.servers}
    assert servers[chosen.server_id].in_flight == 1 and servers[chosen.server_id].selections_total == 1
    s2 = servers["s2"]
    assert s2.load.cpu_percent == 55.5 and s2.load.active_requests == 7 and s2.load.mean_latency_ms == 12.5
    assert s2.HasField("load_reported_at") and not servers["s1"].HasField("load")


async def test_admin_lifecycle(stubs) -> None:
    decision, admin_stub, _ = stubs
    config = common.PoolConfig(
        name="new", strategy="least_connections", servers=[common.ServerSpec(id="a", address="h:1")]
    )
    created = await admin_stub.ConfigurePool(admin.ConfigurePoolRequest(pool=config))
    assert created.created and created.pool.strategy == "least_connections" and len(created.pool.servers) == 1
    again = await admin_stub.ConfigurePool(admin.ConfigurePoolRequest(pool=common.PoolConfig(name="new")))
    assert not again.created and again.pool.strategy == "round_robin" and len(again.pool.servers) == 1
    reg = await admin_stub.RegisterServer(
        admin.RegisterServerRequest(pool="new", server=common.ServerSpec(id="b", address="h:2", weight=3))
    )
    assert reg.created and reg.server.weight == 3 and reg.server.state == common.SERVER_STATE_SERVING
    assert (await decision.SelectServer(pb.SelectServerRequest(pool="new"))).server_id in {"a", "b"}
    await admin_stub.DeregisterServer(admin.DeregisterServerRequest(pool="new", server_id="a"))
    assert set(await status(decision, "new")) == {"b"}
    await admin_stub.DeletePool(admin.DeletePoolRequest(pool="new"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await decision.SelectServer(pb.SelectServerRequest(pool="new"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


NAN = math.nan
LONG = "x" * 129
D = "DecisionService"
A = "AdminService"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

BAD_INPUTS = [
    # (service, method, request, code, field named in the message)
    (D, "SelectServer", pb.SelectServerRequest(pool=""), INVALID, "pool"),
    (D, "SelectServer", pb.SelectServerRequest(pool=LONG), INVALID, "pool"),
    (D, "SelectServer", pb.SelectServerRequest(pool="a\x00b"), INVALID, "pool"),
    (D, "SelectServer", pb.SelectServerRequest(pool="tab\there"), INVALID, "pool"),
    (D, "SelectServer", pb.SelectServerRequest(pool="nope"), NOT_FOUND, "pool"),
    (D, "SelectServer", pb.SelectServerRequest(pool="api", exclude_server_ids=[""]), INVALID, "exclude_server_ids[0]"),
    (
        D,
        "SelectServer",
        pb.SelectServerRequest(pool="api", exclude_server_ids=["s"] * 65),
        INVALID,
        "exclude_server_ids",
    ),
    (D, "ReportOutcome", pb.ReportOutcomeRequest(), INVALID, "outcomes"),
    (
        D,
        "ReportOutcome",
        pb.ReportOutcomeRequest(outcomes=[pb.Outcome(decision_id="zz-1")] * 1001),
        INVALID,
        "outcomes",
    ),
    (
        D,
        "ReportOutcome",
        pb.ReportOutcomeRequest(outcomes=[pb.Outcome(decision_id="zz-1")]),
        NOT_FOUND,
        "outcomes[0].decision_id",
    ),
    (
        D,
        "ReportOutcome",
        pb.ReportOutcomeRequest(outcomes=[pb.Outcome(decision_id="")]),
        INVALID,
        "outcomes[0].decision_id",
    ),
    (
        D,
        "ReportOutcome",
        pb.ReportOutcomeRequest(outcomes=[pb.Outcome(decision_id="a", latency_ms=-1)]),
        INVALID,
        "outcomes[0].latency_ms",
    ),
    (
        D,
        "ReportOutcome",
        pb.ReportOutcomeRequest(outcomes=[pb.Outcome(decision_id="a", latency_ms=NAN)]),
        INVALID,
        "outcomes[0].latency_ms",
    ),
    (
        D,
        "ReportOutcome",
        pb.ReportOutcomeRequest(outcomes=[pb.Outcome(decision_id="a", latency_ms=math.inf)]),
        INVALID,
        "outcomes[0].latency_ms",
    ),
    (
        D,
        "ReportOutcome",
        pb.ReportOutcomeRequest(outcomes=[pb.Outcome(decision_id="a", status="\x07")]),
        INVALID,
        "outcomes[0].status",
    ),
    (D, "ReportLoad", pb.ReportLoadRequest(), INVALID, "reports"),
    (
        D,
        "ReportLoad",
        pb.ReportLoadRequest(reports=[load("api", "s1", cpu_percent=-1)]),
        INVALID,
        "reports[0].cpu_percent",
    ),
    (
        D,
        "ReportLoad",
        pb.ReportLoadRequest(reports=[load("api", "s1", cpu_percent=NAN)]),
        INVALID,
        "reports[0].cpu_percent",
    ),
    (
        D,
        "ReportLoad",
        pb.ReportLoadRequest(reports=[load("api", "s1", memory_percent=101)]),
        INVALID,
        "reports[0].memory_percent",
    ),
    (
        D,
        "ReportLoad",
        pb.ReportLoadRequest(reports=[load("api", "s1", mean_latency_ms=-0.5)]),
        INVALID,
        "reports[0].mean_latency_ms",
    ),
    (
        D,
        "ReportLoad",
        pb.ReportLoadRequest(reports=[load("api", "s1", error_rate=NAN)]),
        INVALID,
        "reports[0].error_rate",
    ),
    (
        D,
        "ReportLoad",
        pb.ReportLoadRequest(reports=[load("api", "s1", error_rate=1.5)]),
        INVALID,
        "reports[0].error_rate",
    ),
    (
        D,
        "ReportLoad",
        pb.ReportLoadRequest(reports=[common.LoadReport(pool="api", server_id="s1", active_requests=2_000_000)]),
        INVALID,
        "reports[0].active_requests",
    ),
    (D, "ReportLoad", pb.ReportLoadRequest(reports=[load("", "s1")]), INVALID, "reports[0].pool"),
    (D, "ReportLoad", pb.ReportLoadRequest(reports=[load("api", LONG)]), INVALID, "reports[0].server_id"),
    (
        D,
        "ReportLoad",
        pb.ReportLoadRequest(reports=[load("api", "s1"), load("nope", "s1")]),
        NOT_FOUND,
        "reports[1].pool",
    ),
    (D, "ReportLoad", pb.ReportLoadRequest(reports=[load("api", "s9")]), NOT_FOUND, "reports[0].server_id"),
    (D, "GetLoadStatus", pb.GetLoadStatusRequest(pool="nope"), NOT_FOUND, "pool"),
    (D, "GetLoadStatus", pb.GetLoadStatusRequest(pool="bad name"), INVALID, "pool"),
    (A, "ConfigurePool", admin.ConfigurePoolRequest(), INVALID, "pool.name"),
    (A, "ConfigurePool", admin.ConfigurePoolRequest(pool=common.PoolConfig(name=LONG)), INVALID, "pool.name"),
    (
        A,
        "ConfigurePool",
        admin.ConfigurePoolRequest(pool=common.PoolConfig(name="p", strategy="fastest")),
        INVALID,
        "pool.strategy",
    ),
    (
        A,
        "ConfigurePool",
        admin.ConfigurePoolRequest(pool=common.PoolConfig(name="p", load_report_ttl_ms=5)),
        INVALID,
        "pool.load_report_ttl_ms",
    ),
    (
        A,
        "ConfigurePool",
        admin.ConfigurePoolRequest(pool=common.PoolConfig(name="p", rate_limit="lots")),
        INVALID,
        "pool.rate_limit",
    ),
    (
        A,
        "ConfigurePool",
        admin.ConfigurePoolRequest(pool=common.PoolConfig(name="p", limit_algorithm="magic")),
        INVALID,
        "pool.limit_algorithm",
    ),
    (
        A,
        "ConfigurePool",
        admin.ConfigurePoolRequest(
            pool=common.PoolConfig(name="p", servers=[common.ServerSpec(id="a", address="h 1")])
        ),
        INVALID,
        "pool.servers[0].address",
    ),
    (
        A,
        "ConfigurePool",
        admin.ConfigurePoolRequest(
            pool=common.PoolConfig(name="p", servers=[common.ServerSpec(id="a", address="h:1", weight=1001)])
        ),
        INVALID,
        "pool.servers[0].weight",
    ),
    (
        A,
        "ConfigurePool",
        admin.ConfigurePoolRequest(
            pool=common.PoolConfig(
                name="p", strategy="p2c", strategy_params=Struct(fields={"choice_count": Value(number_value=1)})
            )
        ),
        INVALID,
        "pool.strategy_params.choice_count",
    ),
    (
        A,
        "ConfigurePool",
        admin.ConfigurePoolRequest(
            pool=common.PoolConfig(
                name="p", strategy="p2c", strategy_params=Struct(fields={"choice_count": Value(number_value=2.5)})
            )
        ),
        INVALID,
        "pool.strategy_params.choice_count",
    ),
    (
        A,
        "ConfigurePool",
        admin.ConfigurePoolRequest(
            pool=common.PoolConfig(
                name="p", strategy="q_learning", strategy_params=Struct(fields={"gamma": Value(number_value=1.5)})
            )
        ),
        INVALID,
        "pool.strategy_params.gamma",
    ),
    (
        A,
        "ConfigurePool",
        admin.ConfigurePoolRequest(
            pool=common.PoolConfig(name="p", outlier_detection=common.OutlierDetection(max_ejection_percent=150))
        ),
        INVALID,
        "pool.outlier_detection.max_ejection_percent",
    ),
    (
        A,
        "ConfigurePool",
        admin.ConfigurePoolRequest(pool=common.PoolConfig(name="p", slow_start_ms=4_000_000)),
        INVALID,
        "pool.slow_start_ms",
    ),
    (
        A,
        "ConfigurePool",
        admin.ConfigurePoolRequest(
            pool=common.PoolConfig(
                name="p",
                strategy="q_learning",
                servers=[common.ServerSpec(id=f"s{i}", address="h:1") for i in range(11)],
            )
        ),
        INVALID,
        "pool.strategy",
    ),
    (
        A,
        "RegisterServer",
        admin.RegisterServerRequest(pool="api", server=common.ServerSpec(id="", address="h:1")),
        INVALID,
        "server.id",
    ),
    (
        A,
        "RegisterServer",
        admin.RegisterServerRequest(pool="api", server=common.ServerSpec(id="x", address="")),
        INVALID,
        "server.address",
    ),
    (
        A,
        "RegisterServer",
        admin.RegisterServerRequest(pool="nope", server=common.ServerSpec(id="x", address="h:1")),
        NOT_FOUND,
        "pool",
    ),
    (A, "DeregisterServer", admin.DeregisterServerRequest(pool="api", server_id="s9"), NOT_FOUND, "server_id"),
    (A, "DeregisterServer", admin.DeregisterServerRequest(pool="api", server_id="\u2028"), INVALID, "server_id"),
    (
        A,
        "DrainServer",
        admin.DrainServerRequest(pool="api", server_id="s9", state=admin.DRAIN_STATE_DRAINING),
        NOT_FOUND,
        "server_id",
    ),
    (A, "DrainServer", admin.DrainServerRequest(pool="", server_id="s1"), INVALID, "pool"),
    (A, "DrainServer", admin.DrainServerRequest(pool="api", server_id="s1"), INVALID, "state"),
    (A, "DrainServer", admin.DrainServerRequest(pool="api", server_id="s1", state=7), INVALID, "state"),  # type: ignore[arg-type]  # a number no name has, as a newer client may send
    (A, "DeletePool", admin.DeletePoolRequest(pool="nope"), NOT_FOUND, "pool"),
]


@pytest.mark.parametrize(
    ("service", "method", "request_", "code", "field"),
    BAD_INPUTS,
    ids=[f"{m}-{f}-{c.name}-{i}" for i, (_, m, _, c, f) in enumerate(BAD_INPUTS)],
)
async def test_bad_input_is_rejected_naming_the_field(stubs, service, method, request_, code, field) -> None:
    decision, admin_stub, channel = stubs
    stub = decision if service == D else admin_stub
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(stub, method)(request_)
    assert err.value.code() == code, err.value.details()
    assert (err.value.details() or "").startswith(f"{field}: "), err.value.details()
    # The service stays up and lost nothing.
    health = health_pb2_grpc.HealthStub(channel)
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
    snapshot = (await decision.GetLoadStatus(pb.GetLoadStatusRequest())).status
    assert [p.name for p in snapshot.pools] == ["api", "lc"]
    assert all(len(p.servers) == 3 and p.eligible_servers == 3 for p in snapshot.pools)
    assert (await decision.SelectServer(pb.SelectServerRequest(pool="api"))).server_id


async def test_report_outcome_partial_batch_lists_unknown_ids(stubs) -> None:
    decision, _, _ = stubs
    chosen = await decision.SelectServer(pb.SelectServerRequest(pool="api"))
    answer = await decision.ReportOutcome(
        pb.ReportOutcomeRequest(
            outcomes=[
                pb.Outcome(decision_id="gone-1", success=True, latency_ms=1),
                pb.Outcome(decision_id=chosen.decision_id, success=False, latency_ms=80, status="503"),
            ]
        )
    )
    assert answer.applied == 1 and list(answer.unknown_decision_ids) == ["gone-1"]
    server = (await status(decision, "api"))[chosen.server_id]
    assert server.in_flight == 0 and server.error_rate == 1.0 and server.ewma_latency_ms == 80


async def test_health_reports_each_service(stubs) -> None:
    _, _, channel = stubs
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "loadwarden.v1.DecisionService", "loadwarden.v1.AdminService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_stop_turns_health_not_serving(start, channel_to) -> None:
    running = await start(three_server_pool())
    health = health_pb2_grpc.HealthStub(channel_to(running))
    watch = health.Watch(health_pb2.HealthCheckRequest(service="loadwarden.v1.DecisionService"))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    await running.health.enter_graceful_shutdown()
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()


async def test_configure_pool_with_strategy_params_and_outlier_detection(stubs) -> None:
    decision, admin_stub, _ = stubs
    config = common.PoolConfig(
        name="learned",
        strategy="q_learning",
        strategy_params=Struct(fields={"epsilon": Value(number_value=0.2), "alpha": Value(number_value=0.5)}),
        outlier_detection=common.OutlierDetection(consecutive_failures=2),
        slow_start_ms=1000,
        servers=[common.ServerSpec(id=f"s{i}", address=f"h:{i}") for i in range(3)],
    )
    answer = await admin_stub.ConfigurePool(admin.ConfigurePoolRequest(pool=config))
    assert answer.created and answer.pool.strategy == "q_learning"
    assert answer.pool.strategy_stats["epsilon"] == pytest.approx(0.2)
    chosen = await decision.SelectServer(pb.SelectServerRequest(pool="learned"))
    assert chosen.strategy == "q_learning"
    for _ in range(2):  # two failures in a row eject the server
        again = await decision.SelectServer(
            pb.SelectServerRequest(
                pool="learned", exclude_server_ids=[s for s in ("s0", "s1", "s2") if s != chosen.server_id]
            )
        )
        await decision.ReportOutcome(
            pb.ReportOutcomeRequest(outcomes=[pb.Outcome(decision_id=again.decision_id, success=False, latency_ms=5)])
        )
    servers = await status(decision, "learned")
    assert servers[chosen.server_id].state == common.SERVER_STATE_EJECTED
    assert servers[chosen.server_id].ejections_total == 1
    stats = (await decision.GetLoadStatus(pb.GetLoadStatusRequest(pool="learned"))).status.pools[0].strategy_stats
    assert stats["episodes"] == 2
