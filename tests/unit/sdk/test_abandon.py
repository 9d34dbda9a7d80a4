"""An AcquireSlot whose answer never came is ended by request id, in batches (issue 14).

(The clients fail closed, so an acquire that timed out raises SlotDenied.)

The service may have granted a slot whose answer the client never saw (its deadline
passed while the answer was on the way, or the caller cancelled). Nobody else would
release that slot before its TTL, so the SDK has the service end it, in the background.

Over a fake channel, with a fake clock and release timers fired by hand.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator

import grpc
import grpc.aio
import pytest

from loadwarden.sdk import AsyncClient, Client, LoadwardenError, SlotDenied
from loadwarden.sdk._leases import ABANDON_BATCH, ABANDON_DELAY_S, BACKGROUND_CALL_MIN_TIMEOUT_S
from loadwarden.sdk._sync.leases import ReleaseRetries
from loadwarden.v1 import decision_pb2 as _pb

from .conftest import FakeChannel, FakeClock, FakeScheduler, as_aio_channel, as_channel, release_retries

NEVER_S = 3600.0


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name.lower())


def wire(client: Client | AsyncClient, clock: FakeClock, releases: FakeScheduler) -> None:
    client._clock = clock
    client._rng.seed(7)
    release_retries(client)._scheduler = releases


@pytest.fixture
def releases() -> FakeScheduler:
    return FakeScheduler()


@pytest.fixture
def client(fake_channel: FakeChannel, fake_clock: FakeClock, releases: FakeScheduler) -> Iterator[Client]:
    client = Client(
        channel=as_channel(fake_channel),
        timeout_s=0.5,
        outcome_flush_interval_s=NEVER_S,
        retry=None,
        breaker=None,
        slot_fallback="fail_closed",
    )
    wire(client, fake_clock, releases)
    yield client
    client.close()


@pytest.fixture
async def aclient(
    fake_aio_channel: FakeChannel, fake_clock: FakeClock, releases: FakeScheduler
) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(
        channel=as_aio_channel(fake_aio_channel),
        timeout_s=0.5,
        outcome_flush_interval_s=NEVER_S,
        retry=None,
        breaker=None,
        slot_fallback="fail_closed",
    )
    wire(client, fake_clock, releases)
    yield client
    await client.close()


def releases_sent(channel: FakeChannel) -> list[_pb.ReleaseSlotRequest]:
    return channel.requests("ReleaseSlot", _pb.ReleaseSlotRequest)


def acquire_ids(channel: FakeChannel) -> list[str]:
    return [request.request_id for request in channel.requests("AcquireSlot", _pb.AcquireSlotRequest)]


def ended_by_abandon(request: _pb.ReleaseSlotRequest) -> list[str]:
    return list(request.abandoned_request_ids)


def test_timed_out_acquires_in_a_pool_are_ended_together_after_the_abandon_delay(
    client: Client, fake_channel: FakeChannel, fake_clock: FakeClock, releases: FakeScheduler
) -> None:
    fake_channel.answers["AcquireSlot"] = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
    for _ in range(3):
        with pytest.raises(SlotDenied):  # fail_closed: no local slot
            client.acquire_slot("ml")

    assert releases_sent(fake_channel) == []  # nothing on the caller's path
    assert len(releases.pending) == 1 and ABANDON_DELAY_S[0] <= releases.pending[0].delay_s <= ABANDON_DELAY_S[1]
    fake_clock.advance(ABANDON_DELAY_S[1])
    releases.fire()

    [sent] = releases_sent(fake_channel)
    assert sent.pool == "ml" and sent.lease_id == "" and sent.request_id == ""
    assert ended_by_abandon(sent) == acquire_ids(fake_channel)
    retries = release_retries(client)
    assert retries.abandoned == 3 and retries.pending() == 0
    # Off the caller's path, with a deadline no shorter than BACKGROUND_CALL_MIN_TIMEOUT_S (the client's is 0.5 s).
    [call] = [call for call in fake_channel.calls if call.method == "ReleaseSlot"]
    assert call.timeout is not None and call.timeout >= BACKGROUND_CALL_MIN_TIMEOUT_S


def test_each_pool_gets_its_own_call_and_a_full_batch_starts_the_next(
    client: Client, fake_channel: FakeChannel, fake_clock: FakeClock, releases: FakeScheduler
) -> None:
    fake_channel.answers["AcquireSlot"] = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
    for i in range(ABANDON_BATCH + 1):
        with pytest.raises(SlotDenied):  # fail_closed: no local slot
            client.acquire_slot("ml", request_id=f"ml-{i}")
    with pytest.raises(SlotDenied):  # fail_closed: no local slot
        client.acquire_slot("etl", request_id="etl-0")

    fake_clock.advance(ABANDON_DELAY_S[1])
    releases.fire()

    sent = {(request.pool, tuple(request.abandoned_request_ids)) for request in releases_sent(fake_channel)}
    assert sent == {
        ("ml", tuple(f"ml-{i}" for i in range(ABANDON_BATCH))),
        ("ml", (f"ml-{ABANDON_BATCH}",)),
        ("etl", ("etl-0",)),
    }


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    ],
)
def test_an_acquire_answered_with_another_failure_is_not_abandoned(
    client: Client, fake_channel: FakeChannel, releases: FakeScheduler, code: grpc.StatusCode
) -> None:
    fake_channel.answers["AcquireSlot"] = rpc_error(code)
    with pytest.raises((LoadwardenError, SlotDenied)):  # SlotDenied (fail_closed) for UNAVAILABLE
        client.acquire_slot("ml")

    assert release_retries(client).abandoned == 0 and releases.pending == []


def test_an_acquire_without_a_request_id_cannot_be_abandoned(
    client: Client, fake_channel: FakeChannel, releases: FakeScheduler
) -> None:
    fake_channel.answers["AcquireSlot"] = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(SlotDenied):  # fail_closed: no local slot
        client.acquire_slot("ml", request_id="")

    assert release_retries(client).abandoned == 0 and releases.pending == []


def test_an_unanswered_abandon_is_retried_and_close_sends_what_is_left(
    client: Client, fake_channel: FakeChannel, fake_clock: FakeClock, releases: FakeScheduler
) -> None:
    fake_channel.answers["AcquireSlot"] = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(SlotDenied):  # fail_closed: no local slot
        client.acquire_slot("ml", request_id="r-1")
    fake_channel.answers["ReleaseSlot"] = rpc_error(grpc.StatusCode.UNAVAILABLE)
    fake_clock.advance(ABANDON_DELAY_S[1])
    releases.fire()
    assert release_retries(client).pending() == 1  # queued again, with its backoff

    fake_channel.answers["ReleaseSlot"] = _pb.ReleaseSlotResponse(abandoned=1)
    client.close()

    assert [ended_by_abandon(request) for request in releases_sent(fake_channel)] == [["r-1"], ["r-1"]]
    retries = release_retries(client)
    assert retries.pending() == 0 and retries.given_up == retries.abandons_given_up == 0


def test_an_abandon_is_given_up_without_a_call_once_the_lease_ttl_has_passed(
    client: Client, fake_channel: FakeChannel, fake_clock: FakeClock, releases: FakeScheduler
) -> None:
    fake_channel.answers["AcquireSlot"] = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(SlotDenied):  # fail_closed: no local slot
        client.acquire_slot("ml", lease_ttl_s=1.0)

    fake_clock.advance(10.0)  # past the TTL it asked for, and the call's timeout: reclaimed by now
    releases.fire()

    assert releases_sent(fake_channel) == [] and release_retries(client).abandons_given_up == 1


def test_abandons_share_the_pending_releases_cap(fake_clock: FakeClock, releases: FakeScheduler) -> None:
    retries = ReleaseRetries(lambda item, timeout_s: None, releases, capacity=2, clock=fake_clock, rng=random.Random(1))

    queued = [retries.abandon(pool, "r", until=fake_clock.now + 30) for pool in ("a", "a", "b", "c")]

    assert queued == [True, True, True, False]  # "a" shares one batch; "c" would be a third entry
    assert retries.pending() == 2 and retries.abandoned == 3 and retries.dropped == 1


async def test_an_async_acquire_that_times_out_is_abandoned(
    aclient: AsyncClient, fake_aio_channel: FakeChannel, fake_clock: FakeClock, releases: FakeScheduler
) -> None:
    fake_aio_channel.answers["AcquireSlot"] = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(SlotDenied):  # fail_closed: no local slot
        await aclient.acquire_slot("ml", request_id="r-1")

    fake_clock.advance(ABANDON_DELAY_S[1])
    await releases.afire()

    assert [ended_by_abandon(request) for request in releases_sent(fake_aio_channel)] == [["r-1"]]


async def test_an_async_acquire_cancelled_by_its_caller_is_abandoned(
    aclient: AsyncClient, fake_aio_channel: FakeChannel, fake_clock: FakeClock, releases: FakeScheduler
) -> None:
    started = asyncio.Event()

    async def never_answered(request: _pb.AcquireSlotRequest) -> None:
        started.set()
        await asyncio.Event().wait()

    fake_aio_channel.answers["AcquireSlot"] = never_answered
    task = asyncio.create_task(aclient.acquire_slot("ml", request_id="r-1", wait_s=5.0))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    fake_clock.advance(ABANDON_DELAY_S[1])
    await releases.afire()

    assert [ended_by_abandon(request) for request in releases_sent(fake_aio_channel)] == [["r-1"]]
