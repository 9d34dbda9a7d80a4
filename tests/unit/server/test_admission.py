"""Admission control against the core: no sockets. Leases use a fake clock; waiting
uses the event loop, and tasks only yield to each other (no sleeping for time)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from loadwarden.policy._errors import InvalidArgument, NotFound, ResourceExhausted
from loadwarden.policy._settings import RateLimit
from loadwarden.server import CoreLimits, DecisionCore, ManualClock, PoolSettings, ServerSpec
from loadwarden.server.engine._admission import Denial, Denied, Granted, SlotRequest


def make(clock: ManualClock | None = None, **settings: Any) -> DecisionCore:
    core = DecisionCore(CoreLimits(), clock=clock or ManualClock(), rng=random.Random(2))
    values: dict[str, Any] = {"max_concurrency": 10, **settings}
    specs = [ServerSpec(f"s{i}", f"h:{i}") for i in (1, 2)]
    core.configure_pool(PoolSettings(name="p", **values), specs)
    return core


def req(priority: int = 0, wait_s: float = 0.0, request_id: str = "", **kw: Any) -> SlotRequest:
    values: dict[str, Any] = dict(
        pool="p",
        request_id=request_id,
        priority=priority,
        max_wait_s=wait_s,
        lease_ttl_s=None,
        client_key="",
        select_server=False,
    )
    values.update(kw)
    return SlotRequest(**values)


async def grant(core: DecisionCore, request: SlotRequest | None = None) -> Granted:
    """Acquires a slot that must be granted at once."""
    answer = await core.acquire(request if request is not None else req(), None)
    assert isinstance(answer, Granted), answer
    return answer


async def test_hard_cap_holds_for_100_clients_times_1000_acquires() -> None:
    core = make(max_concurrency=10)
    slots = core.pool("p").slots
    held = peak = granted = 0

    async def client() -> None:
        nonlocal held, peak, granted
        for _ in range(1000):
            answer = await core.acquire(req(wait_s=30.0), None)
            assert isinstance(answer, Granted)
            held += 1
            granted += 1
            peak = max(peak, held)
            assert slots.in_use <= 10 and held <= 10  # the service's accounting and the client's
            await asyncio.sleep(0)  # hold the slot while others run
            held -= 1
            assert await core.release_slot(answer.lease.id, True, 1.0)

    await asyncio.gather(*(client() for _ in range(100)))
    assert granted == 100_000 and peak == 10
    assert slots.in_use == 0 and slots.waiting == 0 and not core.admission.leases


async def test_priority_then_fifo_under_saturation() -> None:
    core = make(max_concurrency=1)
    first = await core.acquire(req(), None)
    assert isinstance(first, Granted)
    order: list[str] = []

    async def wait(name: str, priority: int) -> None:
        answer = await core.acquire(req(priority=priority, wait_s=30.0), None)
        assert isinstance(answer, Granted)
        order.append(name)
        await asyncio.sleep(0)
        await core.release_slot(answer.lease.id, True, 1.0)

    tasks = []
    for name, priority in (("low-1", 0), ("mid-1", 5), ("mid-2", 5), ("top", 9), ("low-2", 0)):
        tasks.append(asyncio.create_task(wait(name, priority)))
        await asyncio.sleep(0)  # enqueue in this order
    assert core.pool("p").slots.waiting == 5
    await core.release_slot(first.lease.id, True, 1.0)
    await asyncio.gather(*tasks)
    assert order == ["top", "mid-1", "mid-2", "low-1", "low-2"]


async def test_cancelled_waiters_never_consume_slots() -> None:
    core = make(max_concurrency=2)
    slots = core.pool("p").slots
    holders = [await grant(core) for _ in range(2)]
    waiters = [asyncio.create_task(core.acquire(req(wait_s=30.0), None)) for _ in range(20)]
    await asyncio.sleep(0)
    assert slots.waiting == 20
    for task in waiters[::2]:
        task.cancel()
    await asyncio.gather(*waiters[::2], return_exceptions=True)
    assert slots.waiting == 10
    for holder in holders:
        await core.release_slot(holder.lease.id, True, 1.0)
    done = 0
    for task in waiters[1::2]:
        while not task.done():
            await asyncio.sleep(0)
        answer = task.result()
        assert isinstance(answer, Granted)
        await core.release_slot(answer.lease.id, True, 1.0)
        done += 1
    assert done == 10
    assert all(t.cancelled() for t in waiters[::2])
    assert slots.in_use == 0 and slots.waiting == 0


async def test_a_grant_racing_a_cancellation_is_given_back() -> None:
    core = make(max_concurrency=1)
    slots = core.pool("p").slots
    holder = await grant(core)
    waiter = asyncio.create_task(core.acquire(req(wait_s=30.0), None))
    await asyncio.sleep(0)
    await core.release_slot(holder.lease.id, True, 1.0)  # grants the waiter...
    waiter.cancel()  # ...whose caller goes away before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.in_use == 0 and not core.admission.leases


async def test_wait_ends_with_a_denial_not_an_error() -> None:
    core = make(max_concurrency=1)
    await core.acquire(req(), None)
    answer = await core.acquire(req(wait_s=0.01), None)
    assert isinstance(answer, Denied) and answer.denial is Denial.QUEUE_TIMEOUT
    assert answer.retry_after_s > 0 and answer.queue_wait_s >= 0
    now = await core.acquire(req(), None)
    assert isinstance(now, Denied) and now.denial is Denial.AT_CAPACITY
    assert core.pool("p").slots.waiting == 0


async def test_call_deadline_bounds_the_wait() -> None:
    core = make(max_concurrency=1)
    await core.acquire(req(), None)
    loop = asyncio.get_running_loop()
    began = loop.time()
    answer = await core.acquire(req(wait_s=30.0), time_left_s=0.1)
    assert isinstance(answer, Denied) and answer.denial is Denial.QUEUE_TIMEOUT
    assert loop.time() - began < 5.0


async def test_full_queue_is_resource_exhausted_with_retry_after() -> None:
    core = make(max_concurrency=1, max_queue_length=2)
    await core.acquire(req(), None)
    waiters = [asyncio.create_task(core.acquire(req(wait_s=30.0), None)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted, match="max_queue_length") as err:
        await core.acquire(req(wait_s=30.0), None)
    assert err.value.retry_after_s and err.value.retry_after_s > 0
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_lease_expires_and_capacity_returns(tmp_path: object) -> None:
    clock = ManualClock()
    core = make(clock, max_concurrency=1, lease_ttl_ms=2_000)
    lease = (await grant(core)).lease
    assert isinstance(await core.acquire(req(), None), Denied)
    clock.advance(1.5)
    await core.renew_lease(lease.id, None)  # renewal keeps it alive past the first TTL
    clock.advance(1.5)
    core.expire()
    assert core.pool("p").slots.in_use == 1
    clock.advance(0.6)
    core.expire()
    assert core.pool("p").slots.in_use == 0 and core.admission.reclaimed_total == 1
    assert await core.release_slot(lease.id, True, 1.0) is False  # already reclaimed: says so
    with pytest.raises(NotFound, match="released or reclaimed"):
        await core.renew_lease(lease.id, None)
    assert isinstance(await core.acquire(req(), None), Granted)


async def test_expiry_hands_the_slot_to_a_waiter() -> None:
    clock = ManualClock()
    core = make(clock, max_concurrency=1, lease_ttl_ms=1_000)
    await core.acquire(req(), None)
    waiter = asyncio.create_task(core.acquire(req(wait_s=30.0), None))
    await asyncio.sleep(0)
    clock.advance(1.001)
    core.expire()
    assert isinstance(await waiter, Granted)


async def test_same_request_id_never_takes_two_slots() -> None:
    core = make(max_concurrency=5)
    first = await core.acquire(req(request_id="job-1"), None)
    retry = await core.acquire(req(request_id="job-1"), None)
    assert isinstance(first, Granted) and isinstance(retry, Granted)
    assert retry.lease is first.lease and core.pool("p").slots.in_use == 1
    other = await grant(core, req(request_id="job-2"))
    assert other.lease is not first.lease


async def test_retry_while_waiting_joins_the_same_wait() -> None:
    core = make(max_concurrency=1)
    holder = await grant(core)
    a = asyncio.create_task(core.acquire(req(request_id="r", wait_s=30.0), None))
    await asyncio.sleep(0)
    b = asyncio.create_task(core.acquire(req(request_id="r", wait_s=30.0), None))
    await asyncio.sleep(0)
    assert core.pool("p").slots.waiting == 1
    await core.release_slot(holder.lease.id, True, 1.0)
    first, second = await a, await b
    assert isinstance(first, Granted) and isinstance(second, Granted) and first.lease is second.lease
    assert core.pool("p").slots.in_use == 1


async def test_second_release_is_a_no_op_that_says_so_and_unknown_is_not_found() -> None:
    core = make()
    lease = (await grant(core)).lease
    assert await core.release_slot(lease.id, True, 3.0) is True
    assert await core.release_slot(lease.id, True, 3.0) is False
    with pytest.raises(NotFound) as err:
        await core.release_slot("never-issued", True, 1.0)
    assert err.value.field == "lease_id"


async def test_acquire_with_select_picks_a_server_and_release_reports_it() -> None:
    core = make()
    answer = await core.acquire(req(select_server=True), None)
    assert isinstance(answer, Granted) and answer.lease.server is not None
    server = answer.lease.server
    # The selection lives with the lease, not among the decisions that expire at decision_ttl_ms.
    assert server.in_flight == 1 and len(core.pending) == 0
    await core.release_slot(answer.lease.id, False, 40.0)
    assert server.in_flight == 0 and len(core.pending) == 0 and server.ewma_latency_ms == 40.0


async def test_no_eligible_server_denies_without_taking_a_slot() -> None:
    core = make()
    for sid in ("s1", "s2"):
        core.drain_server("p", sid, True)
    answer = await core.acquire(req(select_server=True), None)
    assert isinstance(answer, Denied) and answer.denial is Denial.NO_ELIGIBLE_SERVER
    assert core.pool("p").slots.in_use == 0


async def test_wait_longer_than_pool_maximum_is_invalid() -> None:
    core = make(max_wait_ms=1_000)
    with pytest.raises(InvalidArgument) as err:
        await core.acquire(req(wait_s=1.5), None)
    assert err.value.field == "max_wait_ms"


async def test_rate_limit_per_client_key() -> None:
    clock = ManualClock()
    core = make(clock, max_concurrency=0, rate_limit=RateLimit(count=30, per_s=60.0, burst=5))
    for _ in range(5):
        lease = (await grant(core, req(client_key="alice"))).lease
        await core.release_slot(lease.id, True, 1.0)
    with pytest.raises(ResourceExhausted, match="rate limit") as err:
        await core.acquire(req(client_key="alice"), None)
    assert err.value.retry_after_s == pytest.approx(2.0)
    assert isinstance(await core.acquire(req(client_key="bob"), None), Granted)  # keys are independent
    clock.advance(2.0)
    assert isinstance(await core.acquire(req(client_key="alice"), None), Granted)


async def test_unlimited_pool_grants_everything() -> None:
    core = make(max_concurrency=0)
    answers = [await core.acquire(req(), None) for _ in range(500)]
    assert all(isinstance(a, Granted) for a in answers)


async def test_aimd_limit_shrinks_on_failures_without_revoking_leases() -> None:
    core = make(max_concurrency=10, limit_algorithm="aimd", limit_params={"min_limit": 2, "max_limit": 20})
    slots = core.pool("p").slots
    leases = [(await grant(core)).lease for _ in range(10)]
    for lease in leases[:5]:
        await core.release_slot(lease.id, False, 10.0)  # failures: x0.9 each
    assert slots.limit.limit < 10 and slots.in_use == 5
    assert slots.limit.limit >= 2


async def test_raising_the_limit_admits_waiters() -> None:
    core = make(max_concurrency=1)
    await core.acquire(req(), None)
    waiter = asyncio.create_task(core.acquire(req(wait_s=30.0), None))
    await asyncio.sleep(0)
    core.configure_pool(PoolSettings(name="p", max_concurrency=2), None)
    assert isinstance(await waiter, Granted)


async def test_deleting_a_pool_answers_its_waiters() -> None:
    core = make(max_concurrency=1)
    await core.acquire(req(), None)
    waiter = asyncio.create_task(core.acquire(req(wait_s=30.0), None))
    await asyncio.sleep(0)
    core.delete_pool("p")
    answer = await waiter
    assert isinstance(answer, Denied) and "deleted" in answer.reason


async def test_lease_cap() -> None:
    core = DecisionCore(CoreLimits(max_leases=3), clock=ManualClock())
    core.configure_pool(PoolSettings(name="p"), None)
    for _ in range(3):
        await core.acquire(req(), None)
    with pytest.raises(ResourceExhausted, match="max_leases"):
        await core.acquire(req(), None)


async def test_release_after_ttl_reports_the_reclaim_even_before_a_sweep() -> None:
    clock = ManualClock()
    core = make(clock, max_concurrency=1, lease_ttl_ms=1_000)
    lease = (await grant(core)).lease
    clock.advance(1.001)  # no sweep has run
    assert await core.release_slot(lease.id, True, 1.0) is False
    assert core.admission.reclaimed_total == 1


async def test_an_ended_lease_is_told_apart_from_a_never_issued_one_however_many_ended_since() -> None:
    core = make(max_concurrency=1)
    first = (await grant(core)).lease
    assert await core.release_slot(first.id, True, 1.0) is True
    for _ in range(5_000):  # no memory of ended leases to fill or evict
        lease = (await grant(core)).lease
        await core.release_slot(lease.id, True, 1.0)
    assert await core.release_slot(first.id, True, 1.0) is False  # already ended: not an error
    with pytest.raises(NotFound, match="was released or reclaimed"):
        await core.renew_lease(first.id, None)
    decision_id = core.select("p").decision_id  # issued, but a decision's id, not a lease's
    prefix = first.id.rsplit("-", 1)[0]
    for unknown in (decision_id, f"{prefix}-{10**6:x}", f"{prefix}-0", f"{prefix}-01", "x", "-1", first.id.upper()):
        with pytest.raises(NotFound, match="does not exist"):
            await core.release_slot(unknown, True, 1.0)
