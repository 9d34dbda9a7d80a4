"""AsyncClient slots over a fake grpc.aio channel: the same behaviour as Client's.

Renewals are driven by a fake scheduler fired by hand, so nothing sleeps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import grpc.aio
import pytest

from loadwarden.sdk import AsyncClient, Lease, LeaseLostError, SlotDenied
from loadwarden.sdk._async.leases import AsyncLeaseKeeper
from loadwarden.sdk._synchronization import TaskScheduler
from loadwarden.v1 import decision_pb2 as _pb

from .conftest import release_retries

NEVER_S = 3600.0


@pytest.fixture
async def client(fake_aio_channel, fake_scheduler, fake_clock) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(channel=fake_aio_channel, timeout_s=0.5, outcome_flush_interval_s=NEVER_S, retry=None)
    client._renewal_scheduler = fake_scheduler
    client._clock = fake_clock
    yield client
    await client.close()


def calls(channel, method: str) -> list:
    return [call for call in channel.calls if call.method == method]


async def test_acquire_renew_release(client: AsyncClient, fake_aio_channel) -> None:
    lease = await client.acquire_slot("ml", wait_s=3.0, lease_ttl_s=5.0, request_id="r-1", select_server=True)
    renewed = await client.renew_lease(lease.lease_id, ttl_s=9.0)

    assert await client.release_slot(lease.lease_id, latency_ms=3.0) is True
    assert await client.release_slot(lease.lease_id) is False

    acquire = fake_aio_channel.calls[0]
    assert (acquire.request.request_id, acquire.request.max_wait_ms, acquire.timeout) == ("r-1", 3000, 3.5)
    assert (lease.lease_id, lease.ttl_s, lease.address, lease.queue_wait_s) == ("l-1", 5.0, "10.0.0.1:80", 0.007)
    assert renewed.ttl_s == 9.0
    assert fake_aio_channel.methods() == ["AcquireSlot", "RenewLease", "ReleaseSlot", "ReleaseSlot"]


async def test_a_fresh_request_id_per_call(client: AsyncClient, fake_aio_channel) -> None:
    await client.acquire_slot("ml")
    await client.acquire_slot("ml")

    first, second = (call.request.request_id for call in fake_aio_channel.calls)
    assert len(first) == 32 and first != second


async def test_a_denial_raises_slot_denied_with_the_answer(client: AsyncClient, fake_aio_channel) -> None:
    fake_aio_channel.answers["AcquireSlot"] = _pb.AcquireSlotResponse(
        granted=False, denial_reason=_pb.DENIAL_REASON_NO_ELIGIBLE_SERVER, reason="no server", retry_after_ms=250
    )

    with pytest.raises(SlotDenied) as raised:
        async with client.slot("ml", select_server=True):
            pytest.fail("the block must not run")

    assert (raised.value.denial, raised.value.retry_after_s, raised.value.pool) == ("NO_ELIGIBLE_SERVER", 0.25, "ml")
    assert fake_aio_channel.methods() == ["AcquireSlot"]


async def test_slot_acquires_once_and_releases_once_with_the_block_latency(
    client: AsyncClient, fake_aio_channel, fake_clock, fake_scheduler
) -> None:
    async with client.slot("ml", wait_s=0.5) as lease:
        assert fake_aio_channel.methods() == ["AcquireSlot"]
        fake_clock.advance(0.04)

    acquire, release = fake_aio_channel.calls
    assert acquire.timeout == 1.0
    assert (release.request.lease_id, release.request.success) == (lease.lease_id, True)
    assert release.request.latency_ms == pytest.approx(40.0)
    assert fake_scheduler.pending == []


async def test_slot_releases_as_a_failure_and_reraises_an_escaping_exception_unchanged(
    client: AsyncClient, fake_aio_channel
) -> None:
    error = ConnectionResetError("peer")

    with pytest.raises(ConnectionResetError) as raised:
        async with client.slot("ml"):
            raise error

    assert raised.value is error
    [release] = calls(fake_aio_channel, "ReleaseSlot")
    assert release.request.success is False


async def test_a_cancelled_block_still_releases(client: AsyncClient, fake_aio_channel) -> None:
    entered = asyncio.Event()

    async def hold() -> None:
        async with client.slot("ml"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hold())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    [release] = calls(fake_aio_channel, "ReleaseSlot")
    assert release.request.success is False


async def test_slot_renews_at_three_quarters_of_the_ttl_until_released(
    client: AsyncClient, fake_aio_channel, fake_scheduler
) -> None:
    async with client.slot("ml", lease_ttl_s=0.4) as lease:
        assert fake_scheduler.delays == [pytest.approx(0.3)]
        await fake_scheduler.afire()
        await fake_scheduler.afire()
        assert [call.request for call in calls(fake_aio_channel, "RenewLease")] == [
            _pb.RenewLeaseRequest(lease_id=lease.lease_id)
        ] * 2
        [timer] = fake_scheduler.pending

    assert timer.cancelled
    assert fake_aio_channel.methods() == ["AcquireSlot", "RenewLease", "RenewLease", "ReleaseSlot"]
    await timer.callback()  # already running when the slot was released: no call
    assert len(calls(fake_aio_channel, "RenewLease")) == 2


async def test_a_renewal_answered_not_found_loses_the_lease_and_its_exit_raises(
    client: AsyncClient, fake_aio_channel, fake_scheduler, caplog
) -> None:
    fake_aio_channel.answers["RenewLease"] = grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, details="expired")
    told: list[LeaseLostError] = []

    with caplog.at_level(logging.WARNING, logger="loadwarden.sdk"), pytest.raises(LeaseLostError) as raised:
        async with client.slot("ml", on_lost=told.append) as lease:
            assert not lease.lost
            await fake_scheduler.afire()
            assert fake_scheduler.pending == []
            assert lease.lost and lease.lost_error is told[0]

    assert raised.value is told[0]
    assert (raised.value.lease_id, raised.value.pool, raised.value.why) == ("l-1", "ml", "reclaimed")
    assert "was reclaimed by the service" in caplog.text
    assert fake_aio_channel.methods() == ["AcquireSlot", "RenewLease"]  # nothing left to release


async def test_a_failed_release_never_masks_the_block_exception_and_is_retried(
    client: AsyncClient, fake_aio_channel
) -> None:
    fake_aio_channel.answers["ReleaseSlot"] = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, details="down")
    error = ValueError("work failed")

    with pytest.raises(ValueError) as raised:
        async with client.slot("ml"):
            raise error

    assert raised.value is error
    assert release_retries(client).pending() == 1


async def test_the_task_scheduler_runs_on_the_loop_and_cancels_a_renewal_in_flight() -> None:
    ran = asyncio.Event()
    started = asyncio.Event()

    async def quick() -> None:
        ran.set()

    async def slow() -> None:
        started.set()
        await asyncio.Event().wait()

    TaskScheduler().call_later(0.0, quick)
    await asyncio.wait_for(ran.wait(), 5.0)

    timer = TaskScheduler().call_later(0.0, slow)
    await asyncio.wait_for(started.wait(), 5.0)
    task = timer.task  # type: ignore[attr-defined]  # TaskScheduler's timers have one
    assert isinstance(task, asyncio.Task)
    timer.cancel()
    await asyncio.sleep(0)
    assert task.cancelled()

    never = TaskScheduler().call_later(60.0, slow)  # cancelled before it is due: no task ever
    never.cancel()
    assert never.task is None  # type: ignore[attr-defined]  # as above


async def test_the_keeper_with_the_task_scheduler_renews_for_real_and_stops() -> None:
    renewed = asyncio.Event()
    lease = Lease("l-1", "ml", 0.004, datetime.now(UTC), None, None, "d-1", 0.0)  # renewal due after 3 ms

    async def renew(lease_id: str) -> Lease:
        renewed.set()
        return lease

    keeper = AsyncLeaseKeeper(lease, renew, TaskScheduler())
    keeper.start()
    await asyncio.wait_for(renewed.wait(), 5.0)
    keeper.stop()
    await asyncio.sleep(0.01)

    assert keeper.renewals >= 1
    renewals = keeper.renewals
    await asyncio.sleep(0.01)
    assert keeper.renewals == renewals
