"""The SDK's slot surface, sync and async, passes the same behavioural tests against a
real in-process service.

The service runs on a `ManualClock`: leases expire and queue waits are measured only
as the test advances time. The sync client runs in a worker thread
(``asyncio.to_thread``) because the service under test runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import pytest

from loadwarden.sdk import AsyncClient, Client, Lease, NotFoundError, SlotDenied
from loadwarden.server import ManualClock, PoolSettings, PoolSpec, RunningService

from ..conftest import three_server_pool

WAIT_S = 5.0  # bound of every wait on a condition, seconds


class Boom(Exception):
    pass


class Gate(Protocol):
    def set(self) -> None: ...


class SyncSlots:
    """Drives a sync Client's slot calls from a worker thread, exposing coroutines."""

    def __init__(self, target: str) -> None:
        self.client = Client(target, timeout_s=WAIT_S)
        self.entered: list[Lease] = []  # leases whose `slot` block began, in order

    def gate(self) -> threading.Event:
        return threading.Event()

    async def acquire(self, pool: str, **kw: Any) -> Lease:
        return await asyncio.to_thread(self.client.acquire_slot, pool, **kw)

    async def renew(self, lease_id: str, **kw: Any) -> Lease:
        return await asyncio.to_thread(self.client.renew_lease, lease_id, **kw)

    async def release(self, lease_id: str, **kw: Any) -> bool:
        return await asyncio.to_thread(self.client.release_slot, lease_id, **kw)

    async def hold(self, pool: str, *, until: Any = None, raising: BaseException | None = None, **kw: Any) -> Lease:
        """Runs a `slot` block that waits for `until` (a gate), then raises `raising` if given."""

        def block() -> Lease:
            with self.client.slot(pool, **kw) as lease:
                self.entered.append(lease)
                if until is not None:
                    assert until.wait(WAIT_S), "gate never opened"
                if raising is not None:
                    raise raising
                return lease

        return await asyncio.to_thread(block)

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)


class AsyncSlots:
    def __init__(self, target: str) -> None:
        self.client = AsyncClient(target, timeout_s=WAIT_S)
        self.entered: list[Lease] = []

    def gate(self) -> asyncio.Event:
        return asyncio.Event()

    async def acquire(self, pool: str, **kw: Any) -> Lease:
        return await self.client.acquire_slot(pool, **kw)

    async def renew(self, lease_id: str, **kw: Any) -> Lease:
        return await self.client.renew_lease(lease_id, **kw)

    async def release(self, lease_id: str, **kw: Any) -> bool:
        return await self.client.release_slot(lease_id, **kw)

    async def hold(self, pool: str, *, until: Any = None, raising: BaseException | None = None, **kw: Any) -> Lease:
        async with self.client.slot(pool, **kw) as lease:
            self.entered.append(lease)
            if until is not None:
                await asyncio.wait_for(until.wait(), WAIT_S)
            if raising is not None:
                raise raising
            return lease

    async def close(self) -> None:
        await self.client.close()


Slots = SyncSlots | AsyncSlots


@pytest.fixture(params=["sync", "async"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[str], Slots]]:
    drivers: list[Slots] = []

    def _connect(target: str) -> Slots:
        driver = (SyncSlots if request.param == "sync" else AsyncSlots)(target)
        drivers.append(driver)
        return driver

    yield _connect
    for driver in drivers:
        await driver.close()


@pytest.fixture
async def service(start, clock: ManualClock) -> RunningService:
    return await start(
        three_server_pool("api"),  # unlimited slots, servers s1..s3 round robin
        PoolSpec(PoolSettings(name="cap", max_concurrency=2)),
        PoolSpec(PoolSettings(name="one", max_concurrency=1, max_wait_ms=5_000)),
        clock=clock,
        expiry_interval_ms=3_600_000,  # no background sweep: leases end only through the calls tested
    )


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        assert loop.time() < deadline, f"{what}: not within {WAIT_S} s"
        await asyncio.sleep(0.005)


def active_leases(service: RunningService, pool: str) -> int:
    return service.core.pool(pool).slots.in_use


def waiting(service: RunningService, pool: str) -> int:
    return service.core.pool(pool).slots.waiting


async def test_slot_releases_with_the_blocks_success_and_reraises_its_exception(
    service: RunningService, connect: Callable[[str], Slots]
) -> None:
    slots = connect(service.target)
    ok = await slots.hold("api", select_server=True)
    boom = Boom("model crashed")
    with pytest.raises(Boom) as raised:
        await slots.hold("api", select_server=True, raising=boom)

    assert raised.value is boom  # the block's own exception, unchanged
    failed = slots.entered[1]
    assert (ok.server_id, failed.server_id) == ("s1", "s2")
    # Each release carried its block's success to the server the slot was routed to.
    servers = service.core.pool("api").servers
    assert active_leases(service, "api") == 0 and len(service.core.pending) == 0
    assert [servers[s].outcomes_total for s in ("s1", "s2", "s3")] == [1, 1, 0]
    assert (servers["s1"].error_rate, servers["s2"].error_rate) == (0.0, 1.0)
    assert all(server.in_flight == 0 for server in servers.values())
    assert await slots.release(ok.lease_id) is False  # already released by the block
    assert await slots.release(failed.lease_id) is False


async def test_at_capacity_is_slot_denied_with_a_retry_after_and_the_block_never_runs(
    service: RunningService, connect: Callable[[str], Slots]
) -> None:
    slots = connect(service.target)
    held = [await slots.acquire("cap") for _ in range(2)]

    with pytest.raises(SlotDenied) as denied:
        await slots.hold("cap")
    assert slots.entered == []
    assert denied.value.denial == "AT_CAPACITY" and denied.value.pool == "cap"
    assert denied.value.retry_after_s is not None and denied.value.retry_after_s > 0
    assert "limit of 2" in denied.value.reason and denied.value.decision_id

    with pytest.raises(SlotDenied) as timed_out:
        await slots.acquire("cap", wait_s=0.05)
    assert timed_out.value.denial == "QUEUE_TIMEOUT" and timed_out.value.retry_after_s is not None
    assert [await slots.release(lease.lease_id) for lease in held] == [True, True]
    assert (await slots.acquire("cap")).lease_id not in {lease.lease_id for lease in held}


async def test_a_waiting_slot_is_granted_when_the_holder_releases(
    service: RunningService, clock: ManualClock, connect: Callable[[str], Slots]
) -> None:
    slots = connect(service.target)
    holder = await slots.acquire("one")
    waiter = asyncio.create_task(slots.hold("one", wait_s=WAIT_S))
    await wait_until(lambda: waiting(service, "one") == 1, "the request queues")
    assert slots.entered == []

    clock.advance(0.25)
    assert await slots.release(holder.lease_id) is True
    lease = await waiter

    assert slots.entered == [lease] and lease.lease_id != holder.lease_id
    assert lease.queue_wait_s == pytest.approx(0.25)  # measured by the service, in its time
    assert active_leases(service, "one") == 0 and waiting(service, "one") == 0


async def test_waiters_are_served_highest_priority_first(
    service: RunningService, connect: Callable[[str], Slots]
) -> None:
    slots = connect(service.target)
    holder = await slots.acquire("one")
    low_gate, high_gate = slots.gate(), slots.gate()
    low = asyncio.create_task(slots.hold("one", wait_s=WAIT_S, priority=0, until=low_gate))
    await wait_until(lambda: waiting(service, "one") == 1, "the low-priority request queues")
    high = asyncio.create_task(slots.hold("one", wait_s=WAIT_S, priority=9, until=high_gate))
    await wait_until(lambda: waiting(service, "one") == 2, "the high-priority request queues")

    await slots.release(holder.lease_id)
    await wait_until(lambda: len(slots.entered) == 1, "a waiter gets the slot")
    assert waiting(service, "one") == 1  # the low-priority one, although it came first
    high_gate.set()
    high_lease = await high
    await wait_until(lambda: len(slots.entered) == 2, "the low-priority waiter gets the slot next")
    low_gate.set()
    low_lease = await low
    assert slots.entered == [high_lease, low_lease]


async def test_select_server_gives_a_server_and_its_address(
    service: RunningService, connect: Callable[[str], Slots]
) -> None:
    slots = connect(service.target)
    routed = await slots.hold("api", select_server=True)
    assert routed.server_id in {"s1", "s2", "s3"} and routed.address == f"127.0.0.1:900{routed.server_id[1]}"
    assert routed.decision_id
    plain = await slots.acquire("api")
    assert plain.server_id is None and plain.address is None
    assert await slots.release(plain.lease_id) is True


async def test_the_same_request_id_gets_the_same_lease(
    service: RunningService, connect: Callable[[str], Slots]
) -> None:
    slots = connect(service.target)
    first = await slots.acquire("cap", request_id="job-42")
    retry = await slots.acquire("cap", request_id="job-42")
    assert retry.lease_id == first.lease_id
    assert active_leases(service, "cap") == 1  # one request id never holds two slots
    other = await slots.acquire("cap", request_id="job-43")
    assert other.lease_id != first.lease_id
    for lease in (first, other):
        await slots.release(lease.lease_id)


async def test_release_twice_answers_true_then_false(service: RunningService, connect: Callable[[str], Slots]) -> None:
    slots = connect(service.target)
    lease = await slots.acquire("api")
    assert await slots.release(lease.lease_id, success=True, latency_ms=12.5) is True
    assert await slots.release(lease.lease_id) is False
    with pytest.raises(NotFoundError, match="lease_id"):
        await slots.renew(lease.lease_id)
    with pytest.raises(NotFoundError, match="lease_id"):
        await slots.release("no-such-lease")


async def test_renewal_keeps_a_short_ttl_lease_while_the_block_outlives_it(
    service: RunningService, clock: ManualClock, connect: Callable[[str], Slots]
) -> None:
    slots = connect(service.target)
    leases = service.core.admission.leases
    ttl_s = 0.5
    gate = slots.gate()
    block = asyncio.create_task(slots.hold("api", lease_ttl_s=ttl_s, until=gate))
    await wait_until(lambda: len(slots.entered) == 1, "the block begins")
    lease_id = slots.entered[0].lease_id

    # Service time moves 0.4 s (less than the TTL) at a time, each step only after the
    # client renewed: 4 steps take the block to 3.2x the TTL.
    for _ in range(4):
        expires_at = leases[lease_id].expires_at
        clock.advance(0.4)

        def renewed(before: float = expires_at) -> bool:
            return leases[lease_id].expires_at > before

        await wait_until(renewed, "the client renews the lease")
    gate.set()
    await block

    assert service.core.admission.reclaimed_total == 0
    assert lease_id not in leases and await slots.release(lease_id) is False  # the block released it

    # Without renewal the same TTL runs out: the service reclaims the lease.
    unrenewed = await slots.acquire("api", lease_ttl_s=ttl_s)
    clock.advance(ttl_s + 0.1)
    with pytest.raises(NotFoundError, match="lease_id"):
        await slots.renew(unrenewed.lease_id)
    assert service.core.admission.reclaimed_total == 1
    assert await slots.release(unrenewed.lease_id) is False


async def test_releasing_a_lease_after_its_ttl_says_it_was_already_reclaimed(
    service: RunningService, clock: ManualClock, connect: Callable[[str], Slots]
) -> None:
    slots = connect(service.target)
    lease = await slots.acquire("api", lease_ttl_s=0.5)
    clock.advance(0.6)  # past the TTL; renew_lease would answer NOT_FOUND now
    assert await slots.release(lease.lease_id) is False
