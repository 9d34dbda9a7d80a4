"""A grant whose answer reaches the SDK after its deadline does not hold the slot until its TTL (issue 14).

The service grants within its view of the call's deadline, then its event loop is held up
before the answer leaves (a slow host; here a blocking telemetry hook), so the answer comes
after the client gave up. Neither side holds the lease any more: the SDK ends the call by
its request id in the background, and the slot is back well before the lease's TTL.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from loadwarden.sdk import AsyncClient, Client, SlotDenied
from loadwarden.sdk._async.leases import AsyncReleaseRetries
from loadwarden.sdk._sync.leases import ReleaseRetries
from loadwarden.server import RunningService
from loadwarden.server.rpc import _servicer
from loadwarden.v1 import decision_pb2 as pb

from ..conftest import three_server_pool

LEASE_TTL_MS = 60_000
BACK_WITHIN_S = 5.0


@pytest.fixture
async def service(start, monkeypatch) -> RunningService:
    running = await start(three_server_pool("jobs", max_concurrency=1, lease_ttl_ms=LEASE_TTL_MS))
    record_slot = _servicer.telemetry.record_slot

    def slow_after_the_grant(pool: str, response: pb.AcquireSlotResponse) -> None:
        if response.granted:
            time.sleep(0.3)  # the answer is late: the client's 100 ms deadline passes meanwhile
        record_slot(pool, response)

    monkeypatch.setattr(_servicer.telemetry, "record_slot", slow_after_the_grant)
    return running


async def wait_until_free(service: RunningService) -> None:
    slots = service.core.pool("jobs").slots
    end = time.monotonic() + BACK_WITHIN_S
    while slots.in_use:
        assert time.monotonic() < end, f"{slots.in_use} slot still held {BACK_WITHIN_S} s after the call timed out"
        await asyncio.sleep(0.02)


async def test_the_async_sdk_ends_a_grant_it_never_saw(service: RunningService) -> None:
    client = AsyncClient(service.target, timeout_s=0.1, retry=None, slot_fallback="fail_closed")
    try:
        with pytest.raises(SlotDenied, match="DEADLINE_EXCEEDED"):
            await client.acquire_slot("jobs", request_id="late-1")
        assert service.core.pool("jobs").slots.in_use == 1  # granted, and the answer lost
        await wait_until_free(service)
        assert isinstance(client._releases, AsyncReleaseRetries)
        assert client._releases.abandoned == 1 and client._releases.given_up == 0
        lease = await client.acquire_slot("jobs", timeout_s=5.0)  # the slot is free for the next caller
        assert not lease.fallback
    finally:
        await client.close()


async def test_the_sync_sdk_ends_a_grant_it_never_saw(service: RunningService) -> None:
    client = Client(service.target, timeout_s=0.1, retry=None, slot_fallback="fail_closed")
    try:
        with pytest.raises(SlotDenied, match="DEADLINE_EXCEEDED"):
            await asyncio.to_thread(client.acquire_slot, "jobs", request_id="late-1")
        await wait_until_free(service)
        assert isinstance(client._releases, ReleaseRetries)
        assert client._releases.abandoned == 1
    finally:
        await asyncio.to_thread(client.close)
