"""WatchRoutes over a real grpc.aio server: whole tables, changes, drains, deletes, caps, bad input."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from loadwarden.server import CoreLimits, RunningService
from loadwarden.v1 import admin_pb2 as admin
from loadwarden.v1 import admin_pb2_grpc as admin_grpc
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import three_server_pool

PUSH_MS = 100


@pytest.fixture
async def service(start) -> RunningService:
    return await start(
        three_server_pool("api"),
        three_server_pool("learn", strategy="q_linear"),
        limits=CoreLimits(max_watch_streams=3, route_push_interval_ms=PUSH_MS),
    )


async def _read(stream, timeout_s: float = 5.0) -> pb.RouteTable:
    response = await asyncio.wait_for(stream.read(), timeout_s)
    assert response is not grpc.aio.EOF
    return response.table


async def test_a_whole_table_first_then_only_what_changed(service: RunningService, channel_to) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    stream = stub.WatchRoutes(pb.WatchRoutesRequest(pools=["api"]))
    first = await _read(stream)
    assert first.full and first.pool == "api" and first.version >= 1 and first.epoch
    assert [s.id for s in first.servers] == ["s1", "s2", "s3"]
    assert all(s.eligible and s.state == common.SERVER_STATE_SERVING for s in first.servers)
    assert first.strategy == "round_robin" and json.loads(first.strategy_params_json) == {}
    assert first.learned_json == ""  # round robin learns nothing
    assert first.consecutive_failures == 5 and first.panic_threshold_percent == 50
    # Nothing changes: nothing more is sent over several intervals.
    pending = asyncio.ensure_future(stream.read())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(pending), 4 * PUSH_MS / 1000)
    await stub.ReportLoad(pb.ReportLoadRequest(reports=[common.LoadReport(pool="api", server_id="s2", cpu_percent=42)]))
    change = (await asyncio.wait_for(pending, 5)).table
    assert not change.full and change.base_version == first.version and change.version == first.version + 1
    assert [s.id for s in change.servers] == ["s2"] and change.servers[0].load.cpu_percent == 42
    assert change.epoch == first.epoch
    stream.cancel()


async def test_a_drain_reaches_the_stream_within_a_second(service: RunningService, channel_to) -> None:
    channel = channel_to(service)
    stub, admin_stub = pb_grpc.DecisionServiceStub(channel), admin_grpc.AdminServiceStub(channel)
    stream = stub.WatchRoutes(pb.WatchRoutesRequest(pools=["api"]))
    await _read(stream)
    loop = asyncio.get_running_loop()
    drained_at = loop.time()
    await admin_stub.DrainServer(admin.DrainServerRequest(pool="api", server_id="s1", state=admin.DRAIN_STATE_DRAINING))
    change = await _read(stream, 1.0)
    assert loop.time() - drained_at < 1.0
    (s1,) = change.servers
    assert s1.id == "s1" and s1.state == common.SERVER_STATE_DRAINING and not s1.eligible
    stream.cancel()


async def test_learned_values_are_pushed_and_move_with_local_outcomes(service: RunningService, channel_to) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    stream = stub.WatchRoutes(pb.WatchRoutesRequest(pools=["learn"]))
    first = await _read(stream)
    learned = json.loads(first.learned_json)
    assert learned["strategy"] == "q_linear" and set(learned["weights"]) == {"cpu", "active", "response", "error_rate"}
    local = pb.LocalDecision(pool="learn", server_id="s3", table_version=first.version, features=[0.5, 0.1, 0.2, 0.0])
    answer = await stub.ReportOutcome(
        pb.ReportOutcomeRequest(outcomes=[pb.Outcome(success=True, latency_ms=250.0, local=local)] * 5)
    )
    assert answer.applied == 5 and answer.unknown_local == 0
    change = await _read(stream)
    moved = json.loads(change.learned_json)
    assert moved["weights"] != learned["weights"] and moved["biases"]["s3"] < 0
    assert [s.id for s in change.servers] == ["s3"] and change.servers[0].outcomes_total == 5
    assert change.servers[0].in_flight == 0  # a client's decisions are never counted in flight here
    stream.cancel()


async def test_local_outcomes_of_a_server_that_left_are_counted_not_applied(
    service: RunningService, channel_to
) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    gone = pb.Outcome(success=True, latency_ms=1.0, local=pb.LocalDecision(pool="api", server_id="s9"))
    kept = pb.Outcome(success=True, latency_ms=1.0, local=pb.LocalDecision(pool="api", server_id="s1"))
    answer = await stub.ReportOutcome(pb.ReportOutcomeRequest(outcomes=[kept, gone]))
    assert (answer.applied, answer.unknown_local) == (1, 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReportOutcome(pb.ReportOutcomeRequest(outcomes=[gone]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert (err.value.details() or "").startswith("outcomes[0].local.server_id: ")


@pytest.mark.parametrize(
    ("outcome", "field"),
    [
        (pb.Outcome(decision_id="d-1", local=pb.LocalDecision(pool="api", server_id="s1")), "outcomes[0].decision_id"),
        (pb.Outcome(local=pb.LocalDecision(pool="bad name", server_id="s1")), "outcomes[0].local.pool"),
        (pb.Outcome(local=pb.LocalDecision(pool="api", server_id="")), "outcomes[0].local.server_id"),
        (
            pb.Outcome(local=pb.LocalDecision(pool="api", server_id="s1", features=[0.0] * 17)),
            "outcomes[0].local.features",
        ),
        (
            pb.Outcome(local=pb.LocalDecision(pool="api", server_id="s1", features=[11.0])),
            "outcomes[0].local.features[0]",
        ),
        (
            pb.Outcome(local=pb.LocalDecision(pool="api", server_id="s1", features=[float("nan")])),
            "outcomes[0].local.features[0]",
        ),
        (pb.Outcome(local=pb.LocalDecision(pool="api", server_id="s1", state="x" * 2049)), "outcomes[0].local.state"),
        (pb.Outcome(latency_ms=-1, local=pb.LocalDecision(pool="api", server_id="s1")), "outcomes[0].latency_ms"),
        (
            pb.Outcome(local=pb.LocalDecision(pool="api", server_id="s1", sample_weight=0.5)),
            "outcomes[0].local.sample_weight",
        ),
        (
            pb.Outcome(local=pb.LocalDecision(pool="api", server_id="s1", sample_weight=2e6)),
            "outcomes[0].local.sample_weight",
        ),
        (
            pb.Outcome(local=pb.LocalDecision(pool="api", server_id="s1", sample_weight=float("nan"))),
            "outcomes[0].local.sample_weight",
        ),
    ],
)
async def test_bad_local_outcomes_are_refused_whole(service: RunningService, channel_to, outcome, field) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    good = pb.Outcome(success=True, latency_ms=1.0, local=pb.LocalDecision(pool="api", server_id="s2"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReportOutcome(pb.ReportOutcomeRequest(outcomes=[outcome, good]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}: ")
    status = await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="api"))
    assert all(s.ewma_latency_ms == 0 for s in status.status.pools[0].servers)  # nothing was applied


async def test_a_deleted_pool_is_said_once_and_the_stream_ends(service: RunningService, channel_to) -> None:
    channel = channel_to(service)
    stub, admin_stub = pb_grpc.DecisionServiceStub(channel), admin_grpc.AdminServiceStub(channel)
    stream = stub.WatchRoutes(pb.WatchRoutesRequest(pools=["api"]))
    await _read(stream)
    await admin_stub.DeletePool(admin.DeletePoolRequest(pool="api"))
    gone = await _read(stream)
    assert gone.deleted and gone.full and not gone.servers
    assert await asyncio.wait_for(stream.read(), 5) is grpc.aio.EOF
    assert await stream.code() == grpc.StatusCode.OK


async def test_one_stream_watches_several_pools(service: RunningService, channel_to) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    stream = stub.WatchRoutes(pb.WatchRoutesRequest(pools=["api", "learn"]))
    tables = [await _read(stream), await _read(stream)]
    assert sorted(t.pool for t in tables) == ["api", "learn"] and all(t.full for t in tables)
    stream.cancel()


async def test_route_streams_count_against_the_watch_caps(service: RunningService, channel_to) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    routes = [stub.WatchRoutes(pb.WatchRoutesRequest(pools=["api"])) for _ in range(2)]
    for stream in routes:
        await _read(stream)
    status = stub.WatchLoadStatus(pb.WatchLoadStatusRequest(interval_ms=1000))
    await asyncio.wait_for(status.read(), 5)
    fourth = stub.WatchRoutes(pb.WatchRoutesRequest(pools=["api"]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(fourth.read(), 5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_watch_streams" in (err.value.details() or "")
    assert any(key == "loadwarden-retry-after-ms" for key, _ in (err.value.trailing_metadata() or ()))
    for stream in (*routes, status):
        stream.cancel()


async def test_a_table_says_which_of_its_clients_in_flight_reports_it_holds(
    service: RunningService, channel_to
) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    mine = stub.WatchRoutes(pb.WatchRoutesRequest(pools=["api"], client_instance="c1"))
    other = stub.WatchRoutes(pb.WatchRoutesRequest(pools=["api"]))  # names no client: says nothing
    first = await _read(mine)
    assert first.HasField("in_flight_seq") and first.in_flight_seq == 0  # none of its reports yet
    assert not (await _read(other)).HasField("in_flight_seq")

    async def report(seq: int, instance: str, count: int) -> pb.RouteTable:
        counts = pb.LocalInFlight(pool="api", server_ids=["s1"], counts=[count])
        request = pb.ReportOutcomeRequest(client_instance=instance, in_flight_seq=seq, in_flight=[counts])
        await stub.ReportOutcome(request)
        return await _read(mine)

    held = await report(7, "c1", 2)
    assert held.in_flight_seq == 7 and [(s.id, s.in_flight) for s in held.servers] == [("s1", 2)]
    held = await report(3, "c2", 5)  # another client's report: the count moves, this client's number does not
    assert held.in_flight_seq == 7 and held.servers[0].in_flight == 7
    held = await report(8, "c1", 0)
    assert held.in_flight_seq == 8 and held.servers[0].in_flight == 5
    # A stream opened now gets the whole table with the number it holds.
    late = stub.WatchRoutes(pb.WatchRoutesRequest(pools=["api"], client_instance="c1"))
    whole = await _read(late)
    assert whole.full and whole.in_flight_seq == 8
    for stream in (mine, other, late):
        stream.cancel()


@pytest.mark.parametrize(("instance", "field"), [("bad name", "client_instance"), ("x" * 65, "client_instance")])
async def test_a_bad_client_instance_is_refused(service: RunningService, channel_to, instance, field) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    stream = stub.WatchRoutes(pb.WatchRoutesRequest(pools=["api"], client_instance=instance))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(stream.read(), 5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("pools", "code", "field"),
    [
        ([], grpc.StatusCode.INVALID_ARGUMENT, "pools"),
        ([f"p{i}" for i in range(101)], grpc.StatusCode.INVALID_ARGUMENT, "pools"),
        (["api", "api"], grpc.StatusCode.INVALID_ARGUMENT, "pools[1]"),
        (["api", "bad name"], grpc.StatusCode.INVALID_ARGUMENT, "pools[1]"),
        (["api", "nope"], grpc.StatusCode.NOT_FOUND, "pools[1]"),
    ],
)
async def test_bad_watch_routes_requests(service: RunningService, channel_to, pools, code, field) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(stub.WatchRoutes(pb.WatchRoutesRequest(pools=pools)).read(), 5)
    assert err.value.code() == code and (err.value.details() or "").startswith(f"{field}: ")
