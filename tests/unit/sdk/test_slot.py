"""Client slots over a fake channel: acquire / renew / release and the slot() block.

Renewals are driven by a fake scheduler fired by hand, so nothing sleeps.
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import grpc.aio
import pytest

from loadwarden.sdk import (
    Client,
    InvalidArgumentError,
    Lease,
    LeaseLostError,
    NotFoundError,
    ResourceExhaustedError,
    ServiceError,
    SlotDenied,
)
from loadwarden.sdk._errors import is_transport_failure
from loadwarden.sdk._synchronization import ThreadScheduler
from loadwarden.v1 import decision_pb2 as _pb

from .conftest import release_retries

NEVER_S = 3600.0


@pytest.fixture
def client(fake_channel, fake_scheduler, fake_clock) -> Iterator[Client]:
    client = Client(channel=fake_channel, timeout_s=0.5, outcome_flush_interval_s=NEVER_S, retry=None)
    client._renewal_scheduler = fake_scheduler
    client._clock = fake_clock
    yield client
    client.close()


def calls(channel, method: str) -> list:
    return [call for call in channel.calls if call.method == method]


def denial(**fields) -> _pb.AcquireSlotResponse:
    return _pb.AcquireSlotResponse(granted=False, **fields)


# --- acquire_slot / renew_lease / release_slot -------------------------------------------


def test_acquire_slot_sends_the_request_and_returns_the_lease(client: Client, fake_channel) -> None:
    lease = client.acquire_slot(
        "ml", priority=7, wait_s=2.5, lease_ttl_s=10.0, client_key="tenant-a", select_server=True, request_id="r-1"
    )

    [call] = fake_channel.calls
    assert call.request == _pb.AcquireSlotRequest(
        pool="ml",
        request_id="r-1",
        priority=7,
        max_wait_ms=2500,
        lease_ttl_ms=10_000,
        client_key="tenant-a",
        select_server=True,
    )
    assert lease == Lease(
        lease_id="l-1",
        pool="ml",
        ttl_s=10.0,
        expires_at=datetime.fromtimestamp(1_700_000_010, UTC),
        server_id="s1",
        address="10.0.0.1:80",
        decision_id="d-1",
        queue_wait_s=0.007,
    )


def test_acquire_slot_without_select_server_has_no_server(client: Client) -> None:
    lease = client.acquire_slot("ml")

    assert (lease.server_id, lease.address, lease.fallback) == (None, None, False)
    assert lease.ttl_s == 30.0


def test_acquire_slot_sends_a_fresh_request_id_unless_given_one(client: Client, fake_channel) -> None:
    client.acquire_slot("ml")
    client.acquire_slot("ml")
    client.acquire_slot("ml", request_id="mine")
    client.acquire_slot("ml", request_id="")  # no idempotency

    first, second, third, fourth = (call.request.request_id for call in fake_channel.calls)
    assert len(first) == 32 and int(first, 16) >= 0
    assert first != second
    assert (third, fourth) == ("mine", "")


def test_the_acquire_deadline_covers_the_wait_plus_the_call_timeout(client: Client, fake_channel) -> None:
    client.acquire_slot("ml")
    client.acquire_slot("ml", wait_s=30.0)
    client.acquire_slot("ml", wait_s=2.0, timeout_s=0.25)

    assert [call.timeout for call in fake_channel.calls] == [0.5, 30.5, 2.25]
    assert all(call.timeout >= call.request.max_wait_ms / 1000 for call in fake_channel.calls)


def test_a_denial_raises_slot_denied_with_the_answer(client: Client, fake_channel) -> None:
    fake_channel.answers["AcquireSlot"] = denial(
        decision_id="d-9",
        denial_reason=_pb.DENIAL_REASON_QUEUE_TIMEOUT,
        reason="waited 2000 ms",
        retry_after_ms=1500,
        queue_wait_ms=2000,
    )

    with pytest.raises(SlotDenied) as raised:
        client.acquire_slot("ml", wait_s=2.0)

    denied = raised.value
    assert (denied.denial, denied.reason, denied.retry_after_s, denied.pool) == (
        "QUEUE_TIMEOUT",
        "waited 2000 ms",
        1.5,
        "ml",
    )
    assert (denied.decision_id, denied.queue_wait_s) == ("d-9", 2.0)
    assert str(denied) == "slot denied in pool 'ml': QUEUE_TIMEOUT: waited 2000 ms (retry after 1.5 s)"


@pytest.mark.parametrize(
    ("reason", "name"),
    [
        (_pb.DENIAL_REASON_AT_CAPACITY, "AT_CAPACITY"),
        (_pb.DENIAL_REASON_NO_ELIGIBLE_SERVER, "NO_ELIGIBLE_SERVER"),
        (_pb.DENIAL_REASON_UNSPECIFIED, "UNSPECIFIED"),
        (99, "UNSPECIFIED"),  # a newer service's reason
    ],
)
def test_denial_reasons_are_named_without_their_prefix(client: Client, fake_channel, reason: int, name: str) -> None:
    fake_channel.answers["AcquireSlot"] = denial(denial_reason=reason)

    with pytest.raises(SlotDenied) as raised:
        client.acquire_slot("ml")

    assert raised.value.denial == name
    assert raised.value.retry_after_s is None  # 0 is "no hint"


def test_a_denial_is_an_answer_not_a_transport_failure(client: Client, fake_channel) -> None:
    fake_channel.answers["AcquireSlot"] = denial(denial_reason=_pb.DENIAL_REASON_AT_CAPACITY)

    with pytest.raises(SlotDenied) as raised:
        client.acquire_slot("ml")

    assert not is_transport_failure(raised.value)
    copy = pickle.loads(pickle.dumps(raised.value))
    assert (copy.denial, copy.pool, copy.retry_after_s) == ("AT_CAPACITY", "ml", None)


def test_a_rate_limited_acquire_raises_resource_exhausted_with_its_retry_after(client: Client, fake_channel) -> None:
    fake_channel.answers["AcquireSlot"] = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("loadwarden-retry-after-ms", "2000")),
        details="rate limit 30/minute exhausted for client key 'tenant-a'",
    )

    with pytest.raises(ResourceExhaustedError) as raised:
        client.acquire_slot("ml", client_key="tenant-a")

    assert raised.value.retry_after_s == 2.0


def test_a_grant_without_a_lease_is_a_service_error(client: Client, fake_channel) -> None:
    fake_channel.answers["AcquireSlot"] = _pb.AcquireSlotResponse(granted=True, decision_id="d-1")

    with pytest.raises(ServiceError, match="without a lease id"):
        client.acquire_slot("ml")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"priority": 10}, "priority"),
        ({"priority": -1}, "priority"),
        ({"priority": True}, "priority"),
        ({"wait_s": -0.1}, "wait_s"),
        ({"wait_s": float("nan")}, "wait_s"),
        ({"wait_s": 3600.5}, "wait_s"),
        ({"lease_ttl_s": 0.05}, "lease_ttl_s"),
        ({"lease_ttl_s": 86_401.0}, "lease_ttl_s"),
        ({"request_id": "x" * 129}, "request_id"),
        ({"client_key": None}, "client_key"),
        ({"timeout_s": 0}, "timeout_s"),
    ],
)
def test_acquire_slot_refuses_bad_arguments_by_name(client: Client, fake_channel, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        client.acquire_slot("ml", **kwargs)

    assert fake_channel.calls == []


def test_renew_lease_keeps_or_sets_the_ttl(client: Client, fake_channel) -> None:
    lease = client.acquire_slot("ml")

    kept = client.renew_lease(lease.lease_id)
    changed = client.renew_lease(lease.lease_id, ttl_s=5.0, timeout_s=0.2)

    requests = [call.request for call in calls(fake_channel, "RenewLease")]
    assert requests == [_pb.RenewLeaseRequest(lease_id="l-1"), _pb.RenewLeaseRequest(lease_id="l-1", ttl_ms=5000)]
    assert [call.timeout for call in calls(fake_channel, "RenewLease")] == [0.5, 0.2]
    assert (kept.lease_id, kept.ttl_s, changed.ttl_s) == ("l-1", 30.0, 5.0)
    assert (changed.server_id, changed.decision_id) == (None, "")


def test_renewing_an_unknown_lease_raises_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError):
        client.renew_lease("l-404")
    with pytest.raises(ValueError, match="lease_id"):
        client.renew_lease("")
    with pytest.raises(ValueError, match="ttl_s"):
        client.renew_lease("l-1", ttl_s=0.0)


def test_release_slot_answers_whether_this_call_ended_the_lease(client: Client, fake_channel) -> None:
    lease = client.acquire_slot("ml")

    assert client.release_slot(lease.lease_id, success=False, latency_ms=12.5, request_id="r-9") is True
    assert client.release_slot(lease.lease_id) is False  # already released

    first, second = (call.request for call in calls(fake_channel, "ReleaseSlot"))
    assert first == _pb.ReleaseSlotRequest(lease_id="l-1", request_id="r-9", success=False, latency_ms=12.5)
    assert second.success is True and len(second.request_id) == 32


def test_release_slot_refuses_bad_arguments_by_name(client: Client) -> None:
    with pytest.raises(ValueError, match="latency_ms"):
        client.release_slot("l-1", latency_ms=-1.0)
    with pytest.raises(ValueError, match="request_id"):
        client.release_slot("l-1", request_id="x" * 129)
    with pytest.raises(ValueError, match="lease_id"):
        client.release_slot("")


# --- slot() ------------------------------------------------------------------------------


def test_slot_acquires_once_and_releases_once_with_the_block_latency(
    client: Client, fake_channel, fake_clock, fake_scheduler
) -> None:
    with client.slot("ml", priority=3, wait_s=1.0, lease_ttl_s=4.0) as lease:
        assert fake_channel.methods() == ["AcquireSlot"]
        assert lease.lease_id == "l-1"
        fake_clock.advance(0.25)

    assert fake_channel.methods() == ["AcquireSlot", "ReleaseSlot"]
    acquire, release = fake_channel.calls
    assert (acquire.request.priority, acquire.request.max_wait_ms, acquire.request.lease_ttl_ms) == (3, 1000, 4000)
    assert (release.request.lease_id, release.request.success, release.request.latency_ms) == ("l-1", True, 250.0)
    assert fake_channel.leases == {"l-1": True}
    assert fake_scheduler.pending == []


def test_slot_releases_as_a_failure_and_reraises_an_escaping_exception_unchanged(
    client: Client, fake_channel, fake_scheduler
) -> None:
    error = KeyError("boom")

    with pytest.raises(KeyError) as raised, client.slot("ml"):
        raise error

    assert raised.value is error
    assert raised.value.__context__ is None
    [release] = calls(fake_channel, "ReleaseSlot")
    assert release.request.success is False
    assert fake_scheduler.pending == []


def test_slot_releases_on_base_exceptions_too(client: Client, fake_channel) -> None:
    with pytest.raises(KeyboardInterrupt), client.slot("ml"):
        raise KeyboardInterrupt

    [release] = calls(fake_channel, "ReleaseSlot")
    assert release.request.success is False


def test_a_denied_slot_raises_and_never_runs_the_block(client: Client, fake_channel, fake_scheduler) -> None:
    fake_channel.answers["AcquireSlot"] = denial(denial_reason=_pb.DENIAL_REASON_AT_CAPACITY, reason="pool full")

    with pytest.raises(SlotDenied, match="AT_CAPACITY"), client.slot("ml"):
        pytest.fail("the block must not run")

    assert fake_channel.methods() == ["AcquireSlot"]
    assert fake_scheduler.timers == []


def test_slot_renews_at_three_quarters_of_the_ttl_until_released(client: Client, fake_channel, fake_scheduler) -> None:
    with client.slot("ml", lease_ttl_s=2.0) as lease:
        assert fake_scheduler.delays == [1.5]
        assert calls(fake_channel, "RenewLease") == []

        fake_scheduler.fire()
        fake_scheduler.fire()

        renewals = calls(fake_channel, "RenewLease")
        assert [call.request for call in renewals] == [_pb.RenewLeaseRequest(lease_id=lease.lease_id)] * 2
        assert fake_scheduler.delays == [1.5, 1.5, 1.5]

    [last] = fake_scheduler.timers[-1:]
    assert last.cancelled
    assert fake_scheduler.pending == []
    assert fake_channel.methods() == ["AcquireSlot", "RenewLease", "RenewLease", "ReleaseSlot"]


def test_the_next_renewal_follows_the_ttl_the_service_answers(client: Client, fake_channel, fake_scheduler) -> None:
    lease_msg = _pb.RenewLeaseResponse().lease
    lease_msg.lease_id, lease_msg.pool, lease_msg.ttl_ms = "l-1", "ml", 400
    fake_channel.answers["RenewLease"] = _pb.RenewLeaseResponse(lease=lease_msg)

    with client.slot("ml", lease_ttl_s=8.0):
        fake_scheduler.fire()

    assert fake_scheduler.delays == [6.0, pytest.approx(0.3)]


def test_a_renewal_after_release_makes_no_call(client: Client, fake_channel, fake_scheduler) -> None:
    with client.slot("ml"):
        [timer] = fake_scheduler.timers

    timer.callback()  # a timer that was already running when the slot was released

    assert "RenewLease" not in fake_channel.methods()
    assert len(fake_scheduler.timers) == 1


def test_a_renewal_answered_not_found_loses_the_lease_without_interrupting_the_block(
    client: Client, fake_channel, fake_scheduler, caplog
) -> None:
    fake_channel.answers["RenewLease"] = grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, details="lease 'l-1' expired")
    finished = False

    with (
        caplog.at_level(logging.WARNING, logger="loadwarden.sdk"),
        pytest.raises(LeaseLostError) as raised,
        client.slot("ml") as lease,
    ):
        fake_scheduler.fire()
        assert fake_scheduler.pending == []
        assert lease.lost
        finished = True

    assert finished
    assert raised.value is lease.lost_error
    assert raised.value.why == "reclaimed" and isinstance(raised.value.__cause__, NotFoundError)
    assert not is_transport_failure(raised.value)
    assert f"lease {lease.lease_id} in pool 'ml' was reclaimed by the service" in caplog.text
    assert fake_channel.methods() == ["AcquireSlot", "RenewLease"]


def test_an_unexpected_renewal_error_loses_the_lease_and_is_logged_with_its_traceback(
    client: Client, fake_channel, fake_scheduler, caplog
) -> None:
    fake_channel.answers["RenewLease"] = RuntimeError("bug")

    with (
        caplog.at_level(logging.WARNING, logger="loadwarden.sdk"),
        pytest.raises(LeaseLostError) as raised,
        client.slot("ml"),
    ):
        fake_scheduler.fire()

    assert raised.value.why == "renewal_refused"
    [record] = [r for r in caplog.records if "renewing lease" in r.getMessage()]
    assert record.exc_info is not None
    assert fake_scheduler.pending == []


def test_a_failed_release_never_masks_the_block_exception_and_is_retried(client: Client, fake_channel) -> None:
    fake_channel.answers["ReleaseSlot"] = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, details="connection reset")
    error = ValueError("work failed")

    with pytest.raises(ValueError) as raised, client.slot("ml"):
        raise error
    with client.slot("ml"):
        pass  # a successful block is not failed by its release either

    assert raised.value is error
    assert release_retries(client).pending() == 2


def test_a_release_after_the_client_closed_is_logged(client: Client, fake_channel, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="loadwarden.sdk"), client.slot("ml"):
        client.close()

    assert "releasing lease l-1" in caplog.text
    assert "ReleaseSlot" not in fake_channel.methods()


def test_a_fallback_lease_is_neither_renewed_nor_released(fake_scheduler) -> None:
    from loadwarden.sdk._sync.leases import LeaseKeeper

    lease = Lease("", "ml", 30.0, datetime.now(UTC), None, None, "", 0.0, fallback=True)
    keeper = LeaseKeeper(lease, lambda lease_id: pytest.fail("no renewal"), fake_scheduler)
    keeper.start()

    assert fake_scheduler.timers == []


def test_the_thread_scheduler_runs_later_off_the_callers_thread_and_can_cancel() -> None:
    ran = threading.Event()
    threads: list[threading.Thread] = []

    def callback() -> None:
        threads.append(threading.current_thread())
        ran.set()

    ThreadScheduler().call_later(0.001, callback)
    assert ran.wait(5.0)
    assert threads[0] is not threading.current_thread() and threads[0].daemon

    cancelled = threading.Event()
    ThreadScheduler().call_later(0.05, cancelled.set).cancel()
    assert not cancelled.wait(0.1)


def test_a_service_error_on_acquire_propagates_typed(client: Client, fake_channel) -> None:
    fake_channel.answers["AcquireSlot"] = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT, details="client_key: must match [A-Za-z0-9._:@/-]"
    )

    with pytest.raises(InvalidArgumentError, match="client_key"), client.slot("ml", client_key="a b"):
        pytest.fail("the block must not run")

    assert fake_channel.methods() == ["AcquireSlot"]


def test_a_renewal_answered_after_stop_schedules_nothing(fake_scheduler) -> None:
    from loadwarden.sdk._sync.leases import LeaseKeeper

    lease = Lease("l-1", "ml", 2.0, datetime.now(UTC), None, None, "d-1", 0.0)
    keeper: LeaseKeeper

    def renew(lease_id: str) -> Lease:
        keeper.stop()  # the slot is released while the renewal is in flight
        return lease

    keeper = LeaseKeeper(lease, renew, fake_scheduler)
    keeper.start()
    fake_scheduler.fire()

    assert keeper.renewals == 0
    assert fake_scheduler.pending == []
