"""Issue 14 against a real ``loadwarden serve`` with two named callers: each defect the attack
found, reproduced, and shown fixed.

A victim and an attacker hold different tokens of the same service. The attacker speaks
the protocol directly (raw stubs), as an attacker would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from loadwarden.v1 import admin_pb2, admin_pb2_grpc, common_pb2, decision_pb2, decision_pb2_grpc

from ._harness import Processes, Service

pytestmark = pytest.mark.e2e

VICTIM_TOKEN = "victim-token-0123456789abcdef"
ATTACKER_TOKEN = "attacker-token-0123456789abcd"
ADMIN_TOKEN = "admin-token-0123456789abcdefgh"
CAPACITY = 10

CONFIG = f"""\
[service]
shutdown_grace_ms = 1000

[limits]
decision_ttl_ms = 1000

[admin]
token = "{ADMIN_TOKEN}"

[auth.clients]
victim = "{VICTIM_TOKEN}"
attacker = "{ATTACKER_TOKEN}"

[pools.jobs]
max_concurrency = {CAPACITY}
lease_ttl_ms = 2000
max_lease_ttl_ms = 60000
servers = [
  {{ id = "w1", address = "127.0.0.1:9001" }},
  {{ id = "w2", address = "127.0.0.1:9002" }},
]

[pools.api]
servers = [
  {{ id = "a1", address = "127.0.0.1:9101" }},
  {{ id = "a2", address = "127.0.0.1:9102" }},
]

[pools.limited]
rate_limit = "60/minute"
rate_burst = 1

[pools.adaptive]
max_concurrency = {CAPACITY}
limit_algorithm = "aimd"
"""


def _md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class Caller:
    """Raw DecisionService calls under one token."""

    def __init__(self, target: str, token: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = decision_pb2_grpc.DecisionServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.md = _md(token)

    def call(self, method: str, request: object, timeout_s: float = 5.0) -> Any:
        """The response message of ``method`` (its type depends on the method named)."""
        return getattr(self.stub, method)(request, metadata=self.md, timeout=timeout_s)

    def code_of(self, method: str, request: object) -> grpc.StatusCode:
        try:
            self.call(method, request)
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    def acquire(self, pool: str, **kw: Any) -> decision_pb2.AcquireSlotResponse:
        return self.call("AcquireSlot", decision_pb2.AcquireSlotRequest(pool=pool, **kw))

    def pool_status(self, pool: str) -> common_pb2.PoolStatus:
        response = self.call("GetLoadStatus", decision_pb2.GetLoadStatusRequest(pool=pool))
        (status,) = [p for p in response.status.pools if p.name == pool]
        return status


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    procs = Processes(tmp_path_factory.mktemp("ownership"))
    try:
        yield procs.serve(CONFIG)
    finally:
        procs.close()


@pytest.fixture
def victim(service: Service) -> Iterator[Caller]:
    caller = Caller(service.target, VICTIM_TOKEN)
    yield caller
    caller.channel.close()


@pytest.fixture
def attacker(service: Service) -> Iterator[Caller]:
    caller = Caller(service.target, ATTACKER_TOKEN)
    yield caller
    caller.channel.close()


def test_another_caller_cannot_release_or_renew_a_lease_and_the_cap_holds(victim: Caller, attacker: Caller) -> None:
    leases = []
    for _ in range(CAPACITY):
        answer = victim.acquire("jobs")
        assert answer.granted
        leases.append(answer.lease.lease_id)
    try:
        for lease_id in leases:
            for method, request in (
                ("ReleaseSlot", decision_pb2.ReleaseSlotRequest(lease_id=lease_id, success=True)),
                ("RenewLease", decision_pb2.RenewLeaseRequest(lease_id=lease_id, ttl_ms=86_400_000)),
                ("RenewLease", decision_pb2.RenewLeaseRequest(lease_id=lease_id)),
            ):
                assert attacker.code_of(method, request) == grpc.StatusCode.NOT_FOUND
        # The attacker cannot take a slot either: the victim still holds all ten.
        assert not attacker.acquire("jobs").granted
        status = victim.pool_status("jobs")
        assert status.active_leases == CAPACITY
        for lease_id in leases:  # and the victim's own renewals still work
            victim.call("RenewLease", decision_pb2.RenewLeaseRequest(lease_id=lease_id))
    finally:
        for lease_id in leases:
            victim.call("ReleaseSlot", decision_pb2.ReleaseSlotRequest(lease_id=lease_id, success=True))


def test_an_unknown_and_another_callers_lease_look_the_same(victim: Caller, attacker: Caller) -> None:
    lease_id = victim.acquire("jobs").lease.lease_id
    try:
        messages = []
        for probe in (lease_id, lease_id[:-1] + ("0" if lease_id[-1] != "0" else "1"), "never-issued"):
            with pytest.raises(grpc.RpcError) as err:
                attacker.call("ReleaseSlot", decision_pb2.ReleaseSlotRequest(lease_id=probe))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            messages.append((err.value.details() or "").replace(probe, "<id>"))
        assert len(set(messages)) == 1, messages
    finally:
        victim.call("ReleaseSlot", decision_pb2.ReleaseSlotRequest(lease_id=lease_id, success=True))


def test_ids_are_unguessable(victim: Caller) -> None:
    denied_or_granted = [victim.acquire("api") for _ in range(3)]
    ids = [a.decision_id for a in denied_or_granted]
    tags = {i.rpartition("-")[2] for i in ids}
    assert len(tags) == 3 and all(len(tag) == 24 for tag in tags), ids  # 96 bits each
    for answer in denied_or_granted:
        victim.call("ReleaseSlot", decision_pb2.ReleaseSlotRequest(lease_id=answer.lease.lease_id, success=True))


def test_another_caller_cannot_report_outcomes_on_a_decision(victim: Caller, attacker: Caller) -> None:
    choices = [victim.call("SelectServer", decision_pb2.SelectServerRequest(pool="api")) for _ in range(40)]
    failures = decision_pb2.ReportOutcomeRequest(
        outcomes=[decision_pb2.Outcome(decision_id=c.decision_id, success=False, latency_ms=1.0) for c in choices]
    )
    assert attacker.code_of("ReportOutcome", failures) == grpc.StatusCode.NOT_FOUND
    status = victim.pool_status("api")
    assert status.eligible_servers == 2  # nothing was ejected
    # The victim's own outcomes still apply.
    report = decision_pb2.ReportOutcomeRequest(
        outcomes=[decision_pb2.Outcome(decision_id=c.decision_id, success=True, latency_ms=1.0) for c in choices]
    )
    assert victim.call("ReportOutcome", report).applied == 40


def test_a_request_id_is_the_callers_own(victim: Caller, attacker: Caller) -> None:
    first = victim.acquire("api", request_id="order-17")
    retried = victim.acquire("api", request_id="order-17")
    other = attacker.acquire("api", request_id="order-17")
    try:
        assert first.granted and other.granted
        assert retried.lease.lease_id == first.lease.lease_id  # idempotent for its owner
        assert other.lease.lease_id != first.lease.lease_id  # never the victim's lease
    finally:
        victim.call("ReleaseSlot", decision_pb2.ReleaseSlotRequest(lease_id=first.lease.lease_id, success=True))
        attacker.call("ReleaseSlot", decision_pb2.ReleaseSlotRequest(lease_id=other.lease.lease_id, success=True))


def test_rotating_client_keys_gets_no_more_than_the_callers_rate(attacker: Caller) -> None:
    codes = [
        attacker.code_of("AcquireSlot", decision_pb2.AcquireSlotRequest(pool="limited", client_key=f"k{i}"))
        for i in range(200)
    ]
    assert codes.count(grpc.StatusCode.OK) <= 2, codes  # 60/minute, burst 1 (a second token may refill)
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 198


def test_lease_ttls_are_bounded(victim: Caller) -> None:
    with pytest.raises(grpc.RpcError) as err:
        victim.acquire("jobs", lease_ttl_ms=86_400_000)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "lease_ttl_ms" in (err.value.details() or "")
    lease_id = victim.acquire("jobs").lease.lease_id
    try:
        with pytest.raises(grpc.RpcError) as renew_err:
            victim.call("RenewLease", decision_pb2.RenewLeaseRequest(lease_id=lease_id, ttl_ms=86_400_000))
        assert renew_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (renew_err.value.details() or "").startswith("ttl_ms:")
    finally:
        victim.call("ReleaseSlot", decision_pb2.ReleaseSlotRequest(lease_id=lease_id, success=True))


def test_a_lease_with_a_selection_keeps_its_in_flight_past_the_decision_ttl(victim: Caller) -> None:
    # decision_ttl_ms is 1 s here: the lease is held 3.5 s, renewed every 0.5 s.
    answer = victim.acquire("jobs", select_server=True)
    assert answer.granted and answer.server_id
    end = time.monotonic() + 3.5
    while time.monotonic() < end:
        victim.call("RenewLease", decision_pb2.RenewLeaseRequest(lease_id=answer.lease.lease_id))
        status = victim.call("GetLoadStatus", decision_pb2.GetLoadStatusRequest(pool="jobs"))
        (server,) = [s for p in status.status.pools for s in p.servers if s.id == answer.server_id]
        assert server.in_flight == 1 and server.consecutive_failures == 0
        time.sleep(0.5)  # renewal cadence of a real long job
    victim.call(
        "ReleaseSlot", decision_pb2.ReleaseSlotRequest(lease_id=answer.lease.lease_id, success=True, latency_ms=3500.0)
    )
    status = victim.call("GetLoadStatus", decision_pb2.GetLoadStatusRequest(pool="jobs"))
    (server,) = [s for p in status.status.pools for s in p.servers if s.id == answer.server_id]
    assert server.in_flight == 0 and server.consecutive_failures == 0


def test_recreating_a_pool_keeps_counting_the_leases_held(service: Service, victim: Caller, attacker: Caller) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(victim.channel)
    config = common_pb2.PoolConfig(name="recreated", max_concurrency=CAPACITY)
    admin.ConfigurePool(admin_pb2.ConfigurePoolRequest(pool=config), metadata=_md(ADMIN_TOKEN), timeout=5)
    leases = [victim.acquire("recreated").lease.lease_id for _ in range(CAPACITY)]
    admin.DeletePool(admin_pb2.DeletePoolRequest(pool="recreated"), metadata=_md(ADMIN_TOKEN), timeout=5)
    admin.ConfigurePool(admin_pb2.ConfigurePoolRequest(pool=config), metadata=_md(ADMIN_TOKEN), timeout=5)
    assert victim.pool_status("recreated").active_leases == CAPACITY
    assert not attacker.acquire("recreated").granted  # the cap did not double
    victim.call("RenewLease", decision_pb2.RenewLeaseRequest(lease_id=leases[0]))  # still valid
    for lease_id in leases:
        victim.call("ReleaseSlot", decision_pb2.ReleaseSlotRequest(lease_id=lease_id, success=True))
    assert victim.pool_status("recreated").active_leases == 0


def test_max_concurrency_is_the_ceiling_of_an_adaptive_limit(victim: Caller) -> None:
    # Fast, successful work at full use is what grew AIMD from 10 to 177.
    for _ in range(60):
        held = []
        while True:
            answer = victim.acquire("adaptive")
            if not answer.granted:
                break
            held.append(answer.lease.lease_id)
        assert len(held) <= CAPACITY
        for lease_id in held:
            victim.call("ReleaseSlot", decision_pb2.ReleaseSlotRequest(lease_id=lease_id, success=True, latency_ms=1.0))
    assert victim.pool_status("adaptive").concurrency_limit <= CAPACITY
