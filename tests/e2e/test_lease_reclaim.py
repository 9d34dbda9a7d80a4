"""Leases against a real ``loadwarden serve``: a kill -9'd client's slots come back at
their TTL, and a renewed lease outlives its TTL for as long as its block runs."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from loadwarden.sdk import Client, SlotDenied

from ._harness import Processes, Service

pytestmark = pytest.mark.e2e

POOL = "jobs"
CAPACITY = 5
TTL_S = 2.0
CONFIG = f"""\
[service]
shutdown_grace_ms = 1000

[pools.{POOL}]
max_concurrency = {CAPACITY}
lease_ttl_ms = {int(TTL_S * 1000)}

[pools.solo]
max_concurrency = 1
"""

# Takes every slot with plain acquire_slot (nothing renews them), says so, then hangs
# until killed. `asked_at` is CLOCK_MONOTONIC, shared by every process on the host:
# no lease can have been granted before it.
HOLDER = f"""
import sys, threading, time
from loadwarden.sdk import Client

client = Client(sys.argv[1], timeout_s=5.0)
asked_at = time.monotonic()
leases = [client.acquire_slot({POOL!r}) for _ in range({CAPACITY})]
print(f"holding {{len(leases)}} leases asked_at={{asked_at!r}}", flush=True)
threading.Event().wait(60)  # never outlives a test that forgot it
"""

HOLDING = re.compile(r"^holding (\d+) leases asked_at=(\S+)$", re.MULTILINE)


def take_slots(client: Client, wanted: int, deadline: float) -> tuple[list[str], float]:
    """Takes `wanted` slots without waiting in the queue, retrying denials until
    `deadline` (monotonic); returns the lease ids and when the last was granted."""
    held: list[str] = []
    while len(held) < wanted:
        try:
            held.append(client.acquire_slot(POOL).lease_id)
        except SlotDenied:
            assert time.monotonic() < deadline, f"only {len(held)} of {wanted} slots came back in time"
            time.sleep(0.02)  # poll interval of the condition "a slot is free"
    return held, time.monotonic()


def test_a_killed_clients_leases_are_reclaimed_within_their_ttl(processes: Processes) -> None:
    service = processes.serve(CONFIG)
    holder = processes.spawn([sys.executable, "-c", HOLDER, service.target])
    match = holder.stdout.wait_for(HOLDING, 20)
    assert match is not None and int(match.group(1)) == CAPACITY, holder.describe()
    asked_at = float(match.group(2))

    holder.kill()  # SIGKILL: no release, no goodbye
    killed_at = time.monotonic()
    assert holder.proc.returncode == -9

    with Client(service.target, timeout_s=5.0) as client:
        with pytest.raises(SlotDenied) as full:
            client.acquire_slot(POOL)  # the dead client still holds every slot
        assert full.value.denial == "AT_CAPACITY"
        assert client.load_status(POOL).pools[0].active_leases == CAPACITY

        mine, back_at = take_slots(client, CAPACITY, deadline=killed_at + TTL_S + 5.0)

        assert back_at - killed_at <= TTL_S + 1.0, f"capacity came back {back_at - killed_at:.3f} s after the kill"
        assert back_at >= asked_at + TTL_S  # and not before the leases' TTL ran out
        with pytest.raises(SlotDenied):
            client.acquire_slot(POOL)  # exactly the dead client's slots came back, no more
        assert [client.release_slot(lease_id) for lease_id in mine] == [True] * CAPACITY
    reclaimed = rf"(?s)(lease \S+ in pool {POOL} reclaimed.*){{{CAPACITY}}}"
    assert service.process.stderr.wait_for(reclaimed, 5), service.process.describe()


class ReleaseRecorder(grpc.UnaryUnaryClientInterceptor):
    """Records the `released` answer of every ReleaseSlot made through its channel."""

    def __init__(self) -> None:
        self.released: list[bool] = []

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        if details.method.endswith("/ReleaseSlot"):
            self.released.append(outcome.result().released)
        return outcome


def test_renewal_keeps_a_short_ttl_lease_for_a_block_that_outlives_it(processes: Processes) -> None:
    service: Service = processes.serve(CONFIG)
    ttl_s, work_s = 0.5, 2.0
    recorder = ReleaseRecorder()
    with grpc.insecure_channel(service.target) as raw, Client(channel=grpc.intercept_channel(raw, recorder)) as client:
        active: list[int] = []
        began = time.monotonic()
        with client.slot("solo", lease_ttl_s=ttl_s) as lease:
            assert lease.ttl_s == ttl_s
            # The simulated work: watch the pool while the block runs 4x the TTL.
            while time.monotonic() - began < work_s:
                active.append(client.load_status("solo").pools[0].active_leases)
                # AcquireSlot first reclaims every lease past its TTL: a denial proves ours is alive.
                with pytest.raises(SlotDenied):
                    client.acquire_slot("solo")
                time.sleep(0.05)
        assert time.monotonic() - began >= 4 * ttl_s
        assert len(active) >= 10 and set(active) == {1}, active
        assert recorder.released == [True]  # released by the block, not reclaimed before it
        assert client.load_status("solo").pools[0].active_leases == 0
        assert client.release_slot(lease.lease_id) is False
    assert "reclaimed" not in service.process.stderr.text, service.process.describe()
