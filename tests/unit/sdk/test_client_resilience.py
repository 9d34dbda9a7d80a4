"""The clients' resilience wiring, with a fake channel: retries, breakers, local fallbacks, deadlines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from loadwarden.sdk import (
    BreakerConfig,
    BreakerOpenError,
    BreakerState,
    Client,
    DeadlineExceededError,
    NotFoundError,
    RetryConfig,
    SlotDenied,
    UnavailableError,
    deadline,
)
from loadwarden.v1 import decision_pb2 as _pb

from .conftest import FakeChannel, as_channel

NEVER_S = 3600.0
FAST_RETRY = RetryConfig(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.002)
TRIP_AT_ONCE = BreakerConfig(consecutive_failures=1, open_wait_s=NEVER_S, max_open_wait_s=NEVER_S)


def unavailable() -> grpc.RpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down")


def make(fake_channel: FakeChannel, **options: Any) -> Client:
    values: dict[str, Any] = {"timeout_s": 0.5, "outcome_flush_interval_s": NEVER_S, "server_refresh_s": 0}
    values.update(options)
    return Client(channel=as_channel(fake_channel), **values)


@pytest.fixture
def closing() -> Iterator[list[Client]]:
    clients: list[Client] = []
    yield clients
    for client in clients:
        client.close()


def test_acquire_and_release_retries_reuse_their_request_id(fake_channel, closing) -> None:
    client = make(fake_channel, retry=FAST_RETRY, breaker=None)
    closing.append(client)
    granted = _pb.AcquireSlotResponse(granted=True)
    granted.lease.lease_id, granted.lease.pool, granted.lease.ttl_ms = "L1", "ml", 30_000
    answers = iter([unavailable(), granted])
    fake_channel.answers["AcquireSlot"] = lambda request: next(answers)
    lease = client.acquire_slot("ml", request_id="job-7")
    acquires = [c.request for c in fake_channel.calls if c.method == "AcquireSlot"]
    assert lease.lease_id == "L1" and len(acquires) == 2
    assert {r.request_id for r in acquires} == {"job-7"}  # the retry cannot take a second slot
    releases = iter([unavailable(), _pb.ReleaseSlotResponse(released=True)])
    fake_channel.answers["ReleaseSlot"] = lambda request: next(releases)
    assert client.release_slot("L1")
    sent = [c.request.request_id for c in fake_channel.calls if c.method == "ReleaseSlot"]
    assert len(sent) == 2 and sent[0] == sent[1] != ""


def test_business_errors_are_never_retried(fake_channel, closing) -> None:
    client = make(fake_channel, retry=FAST_RETRY)
    closing.append(client)
    fake_channel.answers["SelectServer"] = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), details="pool: no pool named 'x'"
    )
    with pytest.raises(NotFoundError):
        client.select("x")
    assert fake_channel.methods() == ["SelectServer"]
    breaker = client.breaker("SelectServer")
    assert breaker is not None and breaker.state is BreakerState.CLOSED  # the service answered


def test_open_breaker_answers_locally_without_the_network(fake_channel, closing) -> None:
    client = make(fake_channel, retry=None, breaker=TRIP_AT_ONCE)
    closing.append(client)
    learned = {client.select("api").server_id for _ in range(3)}
    fake_channel.answers["SelectServer"] = unavailable()
    first = client.select("api")  # fails over the network, trips the breaker, answers locally
    assert first.fallback and first.decision_id == "" and first.server_id in learned
    breaker = client.breaker("SelectServer")
    assert breaker is not None and breaker.state is BreakerState.OPEN
    calls = len(fake_channel.calls)
    local = [client.select("api") for _ in range(30)]
    assert len(fake_channel.calls) == calls  # no network round trip while open
    assert {s.server_id for s in local} == learned and all(s.fallback for s in local)
    with client.route("api") as route:
        assert route.selection.fallback
    assert client.outcome_stats().pending == 0  # a local answer reports nothing


def test_unknown_pool_with_service_down_raises(fake_channel, closing) -> None:
    client = make(fake_channel, retry=None, breaker=TRIP_AT_ONCE)
    closing.append(client)
    fake_channel.answers["SelectServer"] = unavailable()
    with pytest.raises(UnavailableError):
        client.select("never-seen")
    with pytest.raises(BreakerOpenError) as err:
        client.select("never-seen")
    assert err.value.method == "SelectServer" and err.value.retry_after_s > 0


@pytest.mark.parametrize(("policy", "granted"), [("local_limit", 2), ("fail_open", 5), ("fail_closed", 0)])
def test_slot_fallback_policies(fake_channel, closing, policy: str, granted: int) -> None:
    client = make(fake_channel, retry=None, breaker=TRIP_AT_ONCE, slot_fallback=policy, local_slot_limit=2)
    closing.append(client)
    fake_channel.answers["AcquireSlot"] = unavailable()
    leases, denials = [], []
    for _ in range(5):
        try:
            leases.append(client.acquire_slot("ml"))
        except SlotDenied as denied:
            denials.append(denied.denial)
    assert len(leases) == granted and all(lease.fallback and lease.lease_id.startswith("local-") for lease in leases)
    assert set(denials) <= {"LOCAL_LIMIT", "CONTROL_PLANE_UNAVAILABLE"}
    calls = len(fake_channel.calls)
    for lease in leases:
        assert client.release_slot(lease.lease_id) is True  # released locally
        assert client.release_slot(lease.lease_id) is False
    assert len(fake_channel.calls) == calls
    if policy == "local_limit":
        with client.slot("ml") as lease:
            assert lease.fallback
        assert client._local_slots.held("ml") == 0


def test_report_load_bypasses_breaker_and_retries(fake_channel, closing) -> None:
    client = make(fake_channel, retry=FAST_RETRY, breaker=TRIP_AT_ONCE)
    closing.append(client)
    fake_channel.answers["ReportLoad"] = unavailable()
    for _ in range(3):
        with pytest.raises(UnavailableError):
            client.report_load("api", "s1", cpu_percent=1, memory_percent=1)
    assert fake_channel.methods() == ["ReportLoad"] * 3  # one attempt each, never short-circuited
    assert client.breaker("ReportLoad") is None


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_deadline_scope_bounds_every_call(fake_channel, closing, monkeypatch) -> None:
    clock = FakeMonotonic()
    monkeypatch.setattr("loadwarden.sdk._resilience.time.monotonic", clock)
    client = make(fake_channel, retry=None, timeout_s=5.0)
    closing.append(client)
    with deadline(0.2):
        clock.now += 0.05
        client.select("api")
        assert fake_channel.calls[-1].timeout == pytest.approx(0.15)
        clock.now += 0.2  # the caller's own work used up its budget
        with pytest.raises(DeadlineExceededError):
            client.load_status()
        local = client.select("api")  # no time for the service: a local answer costs none
        assert local.fallback
    assert len(fake_channel.calls) == 1  # no call was made without time left
    with pytest.raises(ValueError, match="seconds"), deadline(0):
        pass


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"slot_fallback": "maybe"}, "slot_fallback"),
        ({"local_slot_limit": 0}, "local_slot_limit"),
        ({"server_refresh_s": -1}, "server_refresh_s"),
        ({"breaker": "on"}, "breaker"),
        ({"retry": 3}, "retry"),
    ],
)
def test_constructor_errors_name_the_parameter(fake_channel, kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        make(fake_channel, **kwargs)


async def test_background_outcome_sender_does_not_inherit_the_callers_deadline(fake_aio_channel) -> None:
    from loadwarden.sdk import AsyncClient

    client = AsyncClient(
        channel=fake_aio_channel, timeout_s=0.5, outcome_flush_interval_s=0.001, retry=None, server_refresh_s=0
    )
    with deadline(0.05):
        async with client.route("api"):
            pass  # starts the background sender inside the caller's deadline scope
    await client.flush_outcomes(5.0)
    [report] = [c for c in fake_aio_channel.calls if c.method == "ReportOutcome"]
    assert report.timeout == pytest.approx(0.5)  # the client's timeout, not what was left of the caller's
    await client.close()
