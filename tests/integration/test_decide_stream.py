"""The Decide stream over a real grpc.aio server: requests answered by id as their unary
twins, waits that do not hold up later requests, per-request errors, and a broken stream."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from loadwarden.server import RunningService
from loadwarden.v1 import admin_pb2 as admin
from loadwarden.v1 import admin_pb2_grpc as admin_grpc
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import three_server_pool

WAIT_S = 5.0


@pytest.fixture
async def service(start) -> RunningService:
    return await start(
        three_server_pool("api"),
        three_server_pool("one", max_concurrency=1, max_queue_length=2_000, max_wait_ms=60_000),
    )


def req(call_id: int, timeout_ms: int = 0, **request) -> pb.DecideRequest:
    """A DecideRequest holding one call."""
    return pb.DecideRequest(calls=[pb.DecideCall(id=call_id, timeout_ms=timeout_ms, **request)])


async def answers(call, n: int) -> dict[int, pb.DecideAnswer]:
    """Reads messages until ``n`` answers have come; returns them by id."""
    out: dict[int, pb.DecideAnswer] = {}
    while len(out) < n:
        response = await asyncio.wait_for(call.read(), WAIT_S)
        assert response is not grpc.aio.EOF
        out.update((answer.id, answer) for answer in response.answers)
    return out


async def test_each_request_is_answered_by_id_as_its_unary_twin(service: RunningService, channel_to) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    call = stub.Decide()
    await call.write(req(1, select=pb.SelectServerRequest(pool="api")))
    await call.write(req(2, acquire=pb.AcquireSlotRequest(pool="one")))
    got = await answers(call, 2)
    selection, lease = got[1].select, got[2].acquire
    assert selection.server_id in {"s1", "s2", "s3"} and selection.decision_id and lease.granted
    outcome = pb.Outcome(decision_id=selection.decision_id, success=True, latency_ms=3.0)
    await call.write(req(3, report_outcome=pb.ReportOutcomeRequest(outcomes=[outcome])))
    await call.write(req(4, release=pb.ReleaseSlotRequest(lease_id=lease.lease.lease_id, success=True)))
    got = await answers(call, 2)
    assert got[3].report_outcome.applied == 1 and got[4].release.released
    await call.done_writing()
    assert await asyncio.wait_for(call.read(), WAIT_S) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_a_waiting_acquire_does_not_hold_up_the_requests_after_it(service: RunningService, channel_to) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    call = stub.Decide()
    await call.write(req(1, acquire=pb.AcquireSlotRequest(pool="one")))
    held = (await answers(call, 1))[1].acquire
    await call.write(req(2, acquire=pb.AcquireSlotRequest(pool="one", max_wait_ms=30_000)))
    await call.write(req(3, select=pb.SelectServerRequest(pool="api")))
    (first,) = (await asyncio.wait_for(call.read(), WAIT_S)).answers
    assert first.id == 3 and first.select.server_id  # answered while 2 still waits
    await call.write(req(4, release=pb.ReleaseSlotRequest(lease_id=held.lease.lease_id)))
    got = await answers(call, 2)  # the release, and the wait it ended
    assert got[4].release.released and got[2].acquire.granted
    call.cancel()


async def test_timeout_ms_bounds_an_acquire_and_the_client_closing_gets_the_waits_answered(
    service: RunningService, channel_to
) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    call = stub.Decide()
    await call.write(req(1, acquire=pb.AcquireSlotRequest(pool="one")))
    await answers(call, 1)
    wait = pb.AcquireSlotRequest(pool="one", max_wait_ms=60_000)
    await call.write(req(2, timeout_ms=200, acquire=wait))
    await call.done_writing()  # the client is done: the waiting acquire is still answered
    denied = (await answers(call, 1))[2].acquire
    assert not denied.granted and denied.denial_reason == pb.DENIAL_REASON_QUEUE_TIMEOUT
    assert await asyncio.wait_for(call.read(), WAIT_S) is grpc.aio.EOF


async def test_failed_requests_are_answered_with_their_status_and_the_stream_goes_on(
    service: RunningService, channel_to
) -> None:
    channel = channel_to(service)
    stub = pb_grpc.DecisionServiceStub(channel)
    for server_id in ("s1", "s2", "s3"):
        await admin_grpc.AdminServiceStub(channel).DrainServer(
            admin.DrainServerRequest(pool="api", server_id=server_id, state=admin.DRAIN_STATE_DRAINING)
        )
    call = stub.Decide()
    await call.write(req(1, select=pb.SelectServerRequest(pool="nope")))
    await call.write(req(2, select=pb.SelectServerRequest(pool="bad name")))
    await call.write(req(3, select=pb.SelectServerRequest(pool="api")))
    await call.write(req(4, release=pb.ReleaseSlotRequest(lease_id="never-issued")))
    await call.write(req(5, acquire=pb.AcquireSlotRequest(pool="one", priority=10)))
    await call.write(req(6, report_outcome=pb.ReportOutcomeRequest()))
    got = await answers(call, 6)
    assert got[1].error.code == grpc.StatusCode.NOT_FOUND.value[0] and got[1].error.message.startswith("pool: ")
    assert got[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and got[2].error.message.startswith("pool: ")
    assert got[3].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert got[3].error.unavailable_reason == "no-eligible-server"
    assert got[4].error.code == grpc.StatusCode.NOT_FOUND.value[0]  # as ReleaseSlot answers an unknown lease
    assert got[4].error.message.startswith("lease_id: ")
    assert got[5].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "priority" in got[5].error.message
    assert got[6].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "outcomes" in got[6].error.message
    await call.write(req(7, acquire=pb.AcquireSlotRequest(pool="one")))
    assert (await answers(call, 1))[7].acquire.granted  # the stream goes on
    call.cancel()


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (pb.DecideRequest(calls=[pb.DecideCall(id=1)]), "calls[0]"),
        (pb.DecideRequest(), "calls"),
        (
            pb.DecideRequest(
                calls=[pb.DecideCall(id=i, select=pb.SelectServerRequest(pool="api")) for i in range(1001)]
            ),
            "calls",
        ),
    ],
)
async def test_a_message_without_requests_or_with_too_many_ends_the_stream(
    service: RunningService, channel_to, message, field
) -> None:
    call = pb_grpc.DecisionServiceStub(channel_to(service)).Decide()
    await call.write(message)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(call.read(), WAIT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}: ")


async def test_the_requests_of_one_message_are_answered_together_in_order(service: RunningService, channel_to) -> None:
    call = pb_grpc.DecisionServiceStub(channel_to(service)).Decide()
    selects = [pb.DecideCall(id=i, select=pb.SelectServerRequest(pool="api")) for i in range(10, 20)]
    await call.write(pb.DecideRequest(calls=selects))
    response = await asyncio.wait_for(call.read(), WAIT_S)
    assert [a.id for a in response.answers] == list(range(10, 20))
    assert [a.select.server_id for a in response.answers[:3]] == ["s1", "s2", "s3"]  # round robin, in order
    call.cancel()


async def test_bytes_that_do_not_decode_end_the_stream_invalid_argument(service: RunningService, channel_to) -> None:
    raw = channel_to(service).stream_stream("/loadwarden.v1.DecisionService/Decide")
    call = raw()
    await call.write(b"\xff\xff\xff")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(call.read(), WAIT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_cancelled_stream_ends_its_waits(service: RunningService, channel_to) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    call = stub.Decide()
    await call.write(req(1, acquire=pb.AcquireSlotRequest(pool="one")))
    await answers(call, 1)
    for i in range(2, 5):
        await call.write(req(i, acquire=pb.AcquireSlotRequest(pool="one", max_wait_ms=60_000)))

    async def queue_length() -> int:
        status = await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="one"))
        return status.status.pools[0].queue_length

    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while await queue_length() != 3:
        assert loop.time() < deadline, "the three acquires never queued"
        await asyncio.sleep(0.01)
    call.cancel()
    while await queue_length() != 0:
        assert loop.time() < deadline, "the cancelled stream's waits stayed queued"
        await asyncio.sleep(0.01)


async def test_too_many_acquires_in_flight_end_the_stream(service: RunningService, channel_to) -> None:
    stub = pb_grpc.DecisionServiceStub(channel_to(service))
    call = stub.Decide()
    await call.write(req(0, acquire=pb.AcquireSlotRequest(pool="one")))
    await answers(call, 1)
    for i in range(1, 1_002):  # 1,000 waiting, then one more
        await call.write(req(i, acquire=pb.AcquireSlotRequest(pool="one", max_wait_ms=60_000)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(call.read(), WAIT_S)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "requests in flight" in (err.value.details() or "")
