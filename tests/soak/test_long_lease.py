"""A 90 s job holding a slot with ``select_server`` keeps its server's in-flight count (issue 14).

At the default ``decision_ttl_ms`` (30 s) the selection used to expire a third of the
way through the job: in-flight dropped to 0 while the work ran, and the strategy
counted a failure. Now the selection lives as long as the lease, which the SDK renews.
A real ``loadwarden serve`` at its defaults; the job runs for real (90 s by default,
``LOADWARDEN_LONG_LEASE_S`` shortens or lengthens it).
"""

from __future__ import annotations

import os
import time

import pytest

from loadwarden.sdk import Client

from ..e2e._harness import Processes

HOLD_S = float(os.environ.get("LOADWARDEN_LONG_LEASE_S", "90"))
pytestmark = [pytest.mark.e2e, pytest.mark.soak, pytest.mark.timeout(HOLD_S + 60)]

CONFIG = """\
[service]
shutdown_grace_ms = 1000

[pools.ml]
strategy = "least_connections"
max_concurrency = 4
lease_ttl_ms = 10000
servers = [
  { id = "gpu-1", address = "127.0.0.1:9001" },
  { id = "gpu-2", address = "127.0.0.1:9002" },
]
"""


def _server(client: Client, server_id: str) -> tuple[int, float]:
    (pool,) = client.load_status("ml").pools
    (server,) = [s for s in pool.servers if s.id == server_id]
    return server.in_flight, server.error_rate


def test_a_90_s_lease_with_select_server_keeps_its_in_flight(processes: Processes) -> None:
    service = processes.serve(CONFIG)
    with Client(service.target, timeout_s=5.0) as client:
        started = time.monotonic()
        with client.slot("ml", select_server=True, lease_ttl_s=10.0) as lease:
            assert lease.server_id is not None
            samples = []
            while time.monotonic() - started < HOLD_S:
                samples.append(_server(client, lease.server_id))
                time.sleep(5.0)  # a long job's work; the SDK renews the lease meanwhile
            assert all(s == (1, 0) for s in samples), samples
            # least_connections sees the busy server: the next pick is the other one.
            other = client.select("ml")
            assert other.server_id != lease.server_id
            client.report_outcome(other.decision_id, success=True, latency_ms=1.0)
        in_flight, failures = _server(client, lease.server_id)
        assert (in_flight, failures) == (0, 0)  # released as a success, never expired
