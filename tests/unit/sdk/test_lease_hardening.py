"""Lost leases are told, failed releases are retried, the local limit counts service slots.

Over a fake channel, with a fake clock, seeded RNGs and schedulers fired by hand:
nothing sleeps and nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import grpc
import grpc.aio
import pytest

from loadwarden.sdk import AsyncClient, BreakerConfig, Client, LeaseLostError, SlotDenied
from loadwarden.sdk._async.leases import AsyncLeaseKeeper
from loadwarden.sdk._leases import release_retry_delay_s, renewal_retry_delay_s
from loadwarden.sdk._sync.leases import LeaseKeeper, ReleaseRetries
from loadwarden.sdk._types import Lease

from .conftest import FakeChannel, FakeClock, FakeScheduler, as_aio_channel, as_channel, release_retries

NEVER_S = 3600.0
NO_BREAKER = None


def unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down")


def not_found() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), details="gone")


def wire(client: Client | AsyncClient, scheduler: FakeScheduler, clock: FakeClock, releases: FakeScheduler) -> None:
    client._renewal_scheduler = scheduler
    client._clock = clock
    client._rng.seed(7)
    release_retries(client)._scheduler = releases


@pytest.fixture
def releases() -> FakeScheduler:
    return FakeScheduler()


@pytest.fixture
def client(fake_channel: FakeChannel, fake_scheduler, fake_clock, releases) -> Iterator[Client]:
    client = Client(
        channel=as_channel(fake_channel),
        timeout_s=0.5,
        outcome_flush_interval_s=NEVER_S,
        retry=None,
        breaker=NO_BREAKER,
        local_slot_limit=2,
    )
    wire(client, fake_scheduler, fake_clock, releases)
    yield client
    client.close()


@pytest.fixture
async def aclient(fake_aio_channel: FakeChannel, fake_scheduler, fake_clock, releases) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(
        channel=as_aio_channel(fake_aio_channel),
        timeout_s=0.5,
        outcome_flush_interval_s=NEVER_S,
        retry=None,
        breaker=NO_BREAKER,
        local_slot_limit=2,
    )
    wire(client, fake_scheduler, fake_clock, releases)
    yield client
    await client.close()


def methods(channel: FakeChannel, name: str) -> list:
    return [call for call in channel.calls if call.method == name]


# --- lost leases ---------------------------------------------------------------------------


def test_an_unanswered_renewal_is_retried_within_the_ttl_and_a_later_success_keeps_the_lease(
    client: Client, fake_channel: FakeChannel, fake_scheduler: FakeScheduler, fake_clock: FakeClock
) -> None:
    fake_channel.answers["RenewLease"] = unavailable()

    with client.slot("ml", lease_ttl_s=10.0) as lease:
        fake_clock.advance(7.5)
        fake_scheduler.fire()  # the renewal at 75 % of the TTL gets no answer
        retry_s = fake_scheduler.delays[-1]
        assert 0.25 <= retry_s <= 0.5  # [0.5, 1] x 5 % of the TTL
        del fake_channel.answers["RenewLease"]
        fake_clock.advance(retry_s)
        fake_scheduler.fire()
        assert not lease.lost
        assert fake_scheduler.delays[-1] == 7.5  # back on the normal schedule

    assert fake_channel.methods() == ["AcquireSlot", "RenewLease", "RenewLease", "ReleaseSlot"]


def test_a_lease_that_no_renewal_reaches_within_its_ttl_is_lost_once_and_its_exit_raises(
    client: Client, fake_channel: FakeChannel, fake_scheduler: FakeScheduler, fake_clock: FakeClock
) -> None:
    fake_channel.answers["RenewLease"] = unavailable()
    told: list[LeaseLostError] = []

    with pytest.raises(LeaseLostError) as raised, client.slot("ml", lease_ttl_s=4.0, on_lost=told.append) as lease:
        while fake_scheduler.pending:  # every retry fails; the last one is at the TTL's end
            [timer] = fake_scheduler.pending
            assert fake_clock.now + timer.delay_s <= 1000.0 + 4.0 + 1e-9
            fake_clock.advance(timer.delay_s)
            fake_scheduler.fire()
        assert lease.lost

    assert told == [raised.value]
    assert raised.value.why == "expired" and "not renewed within its TTL of 4 s" in str(raised.value)
    assert len(methods(fake_channel, "RenewLease")) >= 3
    assert "ReleaseSlot" not in fake_channel.methods()
    assert client._local_slots.held_from_service("ml") == 0


def test_a_block_that_raises_keeps_its_exception_even_when_the_lease_was_lost(
    client: Client, fake_channel: FakeChannel, fake_scheduler: FakeScheduler
) -> None:
    fake_channel.answers["RenewLease"] = not_found()
    error = KeyError("work failed")

    with pytest.raises(KeyError) as raised, client.slot("ml") as lease:
        fake_scheduler.fire()
        raise error

    assert raised.value is error and lease.lost


def test_an_on_lost_callback_that_raises_is_logged_and_the_exit_still_raises(
    client: Client, fake_channel: FakeChannel, fake_scheduler: FakeScheduler, caplog
) -> None:
    fake_channel.answers["RenewLease"] = not_found()

    def broken(error: LeaseLostError) -> None:
        raise RuntimeError("callback bug")

    with (
        caplog.at_level(logging.ERROR, logger="loadwarden.sdk"),
        pytest.raises(LeaseLostError),
        client.slot("ml", on_lost=broken),
    ):
        fake_scheduler.fire()

    assert "on_lost callback of lease l-1 failed" in caplog.text


def test_a_non_callable_on_lost_is_refused_before_anything_is_acquired(client: Client, fake_channel) -> None:
    with pytest.raises(ValueError, match="on_lost"), client.slot("ml", on_lost="nope"):  # type: ignore[arg-type]  # not callable on purpose
        pytest.fail("the block must not run")

    assert fake_channel.calls == []


async def test_the_async_keeper_loses_a_lease_whose_renewals_never_answer_within_its_ttl(
    aclient: AsyncClient, fake_aio_channel: FakeChannel, fake_scheduler: FakeScheduler, fake_clock: FakeClock
) -> None:
    fake_aio_channel.answers["RenewLease"] = unavailable()
    told: list[LeaseLostError] = []

    with pytest.raises(LeaseLostError) as raised:
        async with aclient.slot("ml", lease_ttl_s=2.0, on_lost=told.append) as lease:
            while fake_scheduler.pending:
                fake_clock.advance(fake_scheduler.pending[0].delay_s)
                await fake_scheduler.afire()
            assert lease.lost

    assert told == [raised.value] and raised.value.why == "expired"
    assert "ReleaseSlot" not in fake_aio_channel.methods()


def test_renewal_retry_waits_are_jittered_and_never_pass_the_ttl() -> None:
    rng = random.Random(3)
    waits = [renewal_retry_delay_s(60.0, 100.0, rng) for _ in range(200)]

    assert all(0.5 <= wait <= 1.0 for wait in waits)  # 5 % of 60 s is 3 s, capped at 1 s
    assert len(set(waits)) == 200
    assert renewal_retry_delay_s(60.0, 0.2, rng) == 0.2


def test_a_keeper_stopped_while_a_failed_renewal_is_in_flight_is_not_lost(fake_scheduler, fake_clock) -> None:
    lease = Lease("l-1", "ml", 2.0, datetime.now(UTC), None, None, "d-1", 0.0)
    told: list[LeaseLostError] = []
    keeper: LeaseKeeper

    def renew(lease_id: str) -> Lease:
        keeper.stop()  # the block ended while the renewal was in flight
        raise LeaseLostError("gone")

    keeper = LeaseKeeper(lease, renew, fake_scheduler, on_lost=told.append, clock=fake_clock)
    keeper.start()
    fake_scheduler.fire()

    assert told == [] and keeper.lost is None


async def test_an_async_keeper_renewal_success_moves_its_validity(fake_scheduler, fake_clock) -> None:
    lease = Lease("l-1", "ml", 2.0, datetime.now(UTC), None, None, "d-1", 0.0)

    async def renew(lease_id: str) -> Lease:
        return Lease("l-1", "ml", 8.0, datetime.now(UTC), None, None, "", 0.0)

    keeper = AsyncLeaseKeeper(lease, renew, fake_scheduler, clock=fake_clock)
    keeper.start()
    fake_clock.advance(1.5)
    await fake_scheduler.afire()

    assert keeper.valid_until == fake_clock.now + 8.0
    assert fake_scheduler.delays == [1.5, 6.0]


# --- background releases -------------------------------------------------------------------


def test_a_release_without_an_answer_is_retried_with_the_same_request_id_until_it_lands(
    client: Client, fake_channel: FakeChannel, fake_clock: FakeClock, releases: FakeScheduler
) -> None:
    fake_channel.answers["ReleaseSlot"] = unavailable()

    with client.slot("ml"):
        pass
    assert client._local_slots.held_from_service("ml") == 1  # still held at the service

    for _ in range(3):  # the service stays unreachable: jittered, growing waits
        [timer] = releases.pending
        fake_clock.advance(timer.delay_s)
        releases.fire()
    del fake_channel.answers["ReleaseSlot"]
    [timer] = releases.pending
    fake_clock.advance(timer.delay_s)
    releases.fire()

    sent = methods(fake_channel, "ReleaseSlot")
    assert len(sent) == 5 and len({call.request.request_id for call in sent}) == 1
    assert fake_channel.leases == {"l-1": True}
    assert releases.pending == [] and release_retries(client).pending() == 0
    assert client._local_slots.held_from_service("ml") == 0


def test_a_release_answered_not_found_ends_its_retries(
    client: Client, fake_channel: FakeChannel, fake_clock: FakeClock, releases: FakeScheduler
) -> None:
    fake_channel.answers["ReleaseSlot"] = unavailable()
    with client.slot("ml"):
        pass

    fake_channel.answers["ReleaseSlot"] = not_found()
    fake_clock.advance(releases.pending[0].delay_s)
    releases.fire()

    assert releases.pending == [] and release_retries(client).pending() == 0
    assert client._local_slots.held_from_service("ml") == 0


def test_a_release_is_given_up_without_a_call_once_the_lease_ttl_has_passed(
    client: Client, fake_channel: FakeChannel, fake_clock: FakeClock, releases: FakeScheduler
) -> None:
    fake_channel.answers["ReleaseSlot"] = unavailable()
    with client.slot("ml", lease_ttl_s=1.0):
        pass

    fake_clock.advance(5.0)  # the service has reclaimed it by now
    releases.fire()

    assert len(methods(fake_channel, "ReleaseSlot")) == 1
    retries = release_retries(client)
    assert retries.given_up == 1 and retries.pending() == 0


def test_pending_releases_are_capped(fake_clock, releases) -> None:
    sent: list[str] = []
    retries = ReleaseRetries(
        lambda item, timeout_s: sent.append(item.lease_id), releases, capacity=2, clock=fake_clock, rng=random.Random(1)
    )
    lease = Lease("l-1", "ml", 30.0, datetime.now(UTC), None, None, "", 0.0)

    queued = [
        retries.add(lease, request_id=f"r{i}", success=True, latency_ms=1.0, until=fake_clock.now + 30)
        for i in range(3)
    ]

    assert queued == [True, True, False] and retries.dropped == 1
    assert len(releases.pending) == 1  # one timer for the earliest
    fake_clock.advance(1.0)
    releases.fire()
    assert sent == ["l-1", "l-1"] and retries.pending() == 0


def test_release_retry_waits_use_full_jitter_capped_at_one_second() -> None:
    rng = random.Random(5)

    first = [release_retry_delay_s(0, rng) for _ in range(100)]
    late = [release_retry_delay_s(20, rng) for _ in range(100)]

    assert all(0.01 <= wait <= 0.1 for wait in first)
    assert all(0.01 <= wait <= 1.0 for wait in late) and max(late) > 0.5


def test_close_retries_every_pending_release_once_before_closing_the_channel(
    fake_channel: FakeChannel, fake_clock: FakeClock, releases: FakeScheduler, fake_scheduler
) -> None:
    client = Client(
        channel=as_channel(fake_channel),
        timeout_s=0.5,
        outcome_flush_interval_s=NEVER_S,
        retry=None,
        breaker=NO_BREAKER,
    )
    wire(client, fake_scheduler, fake_clock, releases)
    fake_channel.answers["ReleaseSlot"] = unavailable()
    with client.slot("ml"), client.slot("ml"):
        pass
    del fake_channel.answers["ReleaseSlot"]

    client.close()

    assert fake_channel.leases == {"l-1": True, "l-2": True}
    assert releases.timers and all(timer.cancelled for timer in releases.timers)
    assert release_retries(client).pending() == 0


async def test_async_close_retries_every_pending_release_once(
    aclient: AsyncClient, fake_aio_channel: FakeChannel, releases: FakeScheduler
) -> None:
    fake_aio_channel.answers["ReleaseSlot"] = unavailable()
    async with aclient.slot("ml"):
        pass
    del fake_aio_channel.answers["ReleaseSlot"]

    await aclient.close()

    assert fake_aio_channel.leases == {"l-1": True}
    assert len(methods(fake_aio_channel, "ReleaseSlot")) == 2


async def test_async_retries_run_one_pass_for_every_due_release(
    aclient: AsyncClient, fake_aio_channel: FakeChannel, fake_clock: FakeClock, releases: FakeScheduler
) -> None:
    fake_aio_channel.answers["ReleaseSlot"] = unavailable()
    async with aclient.slot("ml"), aclient.slot("ml"):
        pass
    del fake_aio_channel.answers["ReleaseSlot"]

    fake_clock.advance(1.0)
    await releases.afire()

    assert fake_aio_channel.leases == {"l-1": True, "l-2": True}
    assert release_retries(aclient).pending() == 0 and releases.pending == []


# --- the local limit counts the service's slots --------------------------------------------


def test_a_fallback_slot_is_granted_only_while_service_and_local_slots_are_under_the_limit(
    client: Client, fake_channel: FakeChannel, fake_clock: FakeClock
) -> None:
    held = client.acquire_slot("ml")  # from the service
    fake_channel.answers["AcquireSlot"] = unavailable()

    local = client.acquire_slot("ml")  # 1 service + 0 local < 2
    with pytest.raises(SlotDenied) as raised:
        client.acquire_slot("ml")  # 1 service + 1 local
    assert raised.value.denial == "LOCAL_LIMIT" and "1 local, 1 from the service" in str(raised.value)

    client.release_slot(held.lease_id)
    again = client.acquire_slot("ml")
    assert local.fallback and again.fallback
    assert client.acquire_slot("other").fallback  # per pool


def test_a_service_slot_stops_counting_once_its_ttl_has_passed_or_it_is_lost(
    client: Client, fake_channel: FakeChannel, fake_clock: FakeClock
) -> None:
    client.acquire_slot("ml", lease_ttl_s=5.0)
    renewed = client.acquire_slot("ml", lease_ttl_s=5.0)
    fake_clock.advance(4.0)
    client.renew_lease(renewed.lease_id)
    assert client._local_slots.held_from_service("ml") == 2

    fake_clock.advance(2.0)  # the first one expired unrenewed; the renewed one holds until 9 s
    assert client._local_slots.held_from_service("ml") == 1

    fake_channel.answers["RenewLease"] = not_found()
    with pytest.raises(Exception, match="NOT_FOUND"):
        client.renew_lease(renewed.lease_id)
    assert client._local_slots.held_from_service("ml") == 0


def test_a_held_slot_counts_against_the_local_limit_while_the_block_runs(
    client: Client, fake_channel: FakeChannel
) -> None:
    with client.slot("ml"), client.slot("ml"):
        fake_channel.answers["AcquireSlot"] = unavailable()
        with pytest.raises(SlotDenied, match="2 from the service"), client.slot("ml"):
            pytest.fail("the block must not run")
    with client.slot("ml") as lease:
        assert lease.fallback


# --- probe wiring ----------------------------------------------------------------------------


def test_an_open_breaker_starts_one_background_probe_and_serving_ends_its_wait(
    fake_channel: FakeChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from grpc_health.v1 import health_pb2  # type: ignore[import-untyped]  # no stubs, no py.typed

    client = Client(
        channel=as_channel(fake_channel),
        timeout_s=0.5,
        outcome_flush_interval_s=NEVER_S,
        retry=None,
        breaker=BreakerConfig(
            consecutive_failures=1, open_wait_s=NEVER_S, max_open_wait_s=NEVER_S, probe_interval_s=0.01
        ),
    )
    assert client._prober is not None
    ran: list[float] = []

    def no_sleeping(delay_s: float) -> bool:
        ran.append(delay_s)
        return False

    client._prober._wait = no_sleeping
    monkeypatch.setattr(client._prober, "wake", lambda: None)  # run below on this thread instead of a new one
    fake_channel.health_answer = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
    fake_channel.answers["SelectServer"] = unavailable()
    with pytest.raises(Exception, match="UNAVAILABLE"):
        client.select("api")
    breaker = client.breaker("SelectServer")
    assert breaker is not None and breaker.state.name == "OPEN"

    client._prober.run()

    assert breaker.state.name == "HALF_OPEN"
    [check] = fake_channel.health_calls
    assert isinstance(check.request, health_pb2.HealthCheckRequest)
    assert check.request.service == "loadwarden.v1.DecisionService"
    assert client._prober.recoveries == 1
    client.close()


async def test_background_tasks_run_outside_the_callers_deadline_scope() -> None:
    from loadwarden.sdk import deadline
    from loadwarden.sdk._resilience import bounded_timeout_s
    from loadwarden.sdk._synchronization import TaskScheduler

    seen: list[float] = []

    async def renew() -> None:
        seen.append(bounded_timeout_s(5.0))

    with deadline(0.001):  # spent long before the renewal runs
        timer = TaskScheduler().call_later(0.01, renew)
        assert bounded_timeout_s(5.0) <= 0.001
    async with asyncio.timeout(5.0):
        while timer.task is None:  # type: ignore[attr-defined]  # TaskScheduler's timers have one
            await asyncio.sleep(0.005)
        await timer.task  # type: ignore[attr-defined]  # as above

    assert seen == [5.0]
