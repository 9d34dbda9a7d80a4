"""Seed 000's load manager, written against the loadwarden SDK.

The seed's application code asks ``check_system_load()`` for ``(can_proceed,
message, server)`` before a request, and always calls
``release_server_connection(server)`` when done. Here the decision is the
service's: ``check_system_load`` takes one of the pool's 100 slots and picks a
server in the same call (``acquire_slot(..., select_server=True)``); the "server"
handed back is the lease, so releasing it frees the slot and reports the
outcome to the routing strategy. The seed's 30 s connection timeout is the
lease TTL: a connection never released (a crashed worker) is reclaimed after
30 s.

Run it against a local service (``./scripts/serve`` in another terminal):

    python examples/seed000_load_manager.py [--target 127.0.0.1:50051]

It creates (or replaces) the pool through ``AdminService.ConfigurePool``; the same
pool in a service config file would be::

    [pools.medibot]
    strategy = "least_connections"
    max_concurrency = 100
    lease_ttl_ms = 30000
    servers = [{ id = "medibot-1", address = "127.0.0.1:8001" }, ...]

Then it sends a burst of ``--requests`` requests at once (120 by default: 20
more than fit) and prints what happened to them.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from loadwarden.sdk import Client, Lease, LoadwardenError, ResourceExhaustedError, SlotDenied
from loadwarden.v1 import admin_pb2, admin_pb2_grpc, common_pb2

POOL = "medibot"
MAX_CONNECTIONS = 100  # the seed's LOAD_MANAGER_MAX_CONNECTIONS
TIMEOUT_S = 30  # the seed's LOAD_MANAGER_TIMEOUT, seconds: the lease TTL

# The seed's load manager is a process-wide singleton; so is this client (thread-safe).
_client: Client | None = None


def use_client(client: Client) -> None:
    """Points `check_system_load` and `release_server_connection` at a client."""
    global _client
    _client = client


def check_system_load() -> tuple[bool, str, Lease | None]:
    """Takes a connection slot and a server for one request, if the system has room.

    Returns:
        ``(True, "ok", lease)`` with ``lease.address`` the server to use, or
        ``(False, "system overloaded, retry in N s", None)``. Release a granted
        lease with `release_server_connection`, always.
    """
    assert _client is not None, "call use_client() first"
    try:
        lease = _client.acquire_slot(POOL, select_server=True)
    except (SlotDenied, ResourceExhaustedError) as answer:
        return False, f"system overloaded, retry in {_whole_seconds(answer.retry_after_s)} s", None
    except LoadwardenError:
        # Fail closed: without the service there is no server to hand out, and
        # admitting blindly is what the load manager exists to prevent.
        return False, "load manager unavailable, retry in 1 s", None
    return True, "ok", lease


def release_server_connection(server: Lease | None, *, success: bool = True) -> None:
    """Frees a connection slot taken by `check_system_load`; None is a no-op.

    Never raises: a release that cannot reach the service is reclaimed there when
    the lease's TTL (`TIMEOUT_S`) runs out.
    """
    if server is None or _client is None:
        return
    # No latency given: the service takes the time the slot was held.
    with contextlib.suppress(LoadwardenError):
        _client.release_slot(server.lease_id, success=success)


def process_request(request_data: Any) -> str:
    """The seed's example, unchanged in shape: check, work, always release."""
    can_proceed, message, server = check_system_load()
    if not can_proceed:
        return message
    assert server is not None
    success = False
    try:
        result = do_something_with(request_data, server)
        success = True
        return result
    finally:
        release_server_connection(server, success=success)


# --- the demo: a simulated backend and a burst of concurrent requests -------------------


class Burst:
    """Simulated backend work for a burst of requests that all arrive at once.

    Work starts only after every request of the burst has been admitted or turned
    away, so the burst really is concurrent however threads are scheduled.
    """

    def __init__(self, size: int, work_s: float) -> None:
        self.size = size
        self.work_s = work_s
        self._cond = threading.Condition()
        self._settled = 0  # requests admitted (working) or turned away, count
        self.concurrent = 0
        self.max_concurrent = 0

    def settle(self) -> None:
        with self._cond:
            self._settled += 1
            self._cond.notify_all()

    def work(self, server: Lease) -> None:
        with self._cond:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
            self._settled += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._settled >= self.size, timeout=TIMEOUT_S)
        try:
            time.sleep(self.work_s)  # the request's work on `server.address`
        finally:
            with self._cond:
                self.concurrent -= 1


_burst: Burst | None = None


def do_something_with(request_data: Any, server: Lease) -> str:
    if _burst is not None:
        _burst.work(server)
    return f"request {request_data} handled by {server.server_id}"


def configure_pool(target: str, servers: int, max_connections: int) -> None:
    """Creates or replaces the demo pool through AdminService.ConfigurePool."""
    pool = common_pb2.PoolConfig(
        name=POOL,
        strategy="least_connections",
        max_concurrency=max_connections,
        lease_ttl_ms=TIMEOUT_S * 1000,
        servers=[
            common_pb2.ServerSpec(id=f"{POOL}-{i}", address=f"127.0.0.1:{8000 + i}") for i in range(1, servers + 1)
        ],
    )
    with grpc.insecure_channel(target) as channel:
        admin_pb2_grpc.AdminServiceStub(channel).ConfigurePool(admin_pb2.ConfigurePoolRequest(pool=pool), timeout=5)


def _whole_seconds(seconds: float | None) -> int:
    return max(1, math.ceil(seconds)) if seconds is not None else 1


def main() -> None:
    global _burst
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="loadwarden service address")
    parser.add_argument("--requests", type=int, default=120, help="requests in the burst, count")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, help="pool capacity, count")
    parser.add_argument("--servers", type=int, default=3, help="backend servers in the pool, count")
    parser.add_argument("--work-ms", type=float, default=200.0, help="simulated work per request, milliseconds")
    args = parser.parse_args()

    configure_pool(args.target, args.servers, args.max_connections)
    print(f"pool {POOL!r}: max {args.max_connections} connections, {TIMEOUT_S} s timeout, {args.servers} servers")
    with Client(args.target, timeout_s=5.0) as client:
        use_client(client)
        burst = _burst = Burst(args.requests, args.work_ms / 1000.0)

        def handle(n: int) -> str:
            answer = process_request(n)
            if not answer.startswith("request "):
                burst.settle()
            return answer

        with ThreadPoolExecutor(max_workers=args.requests) as pool:
            answers = list(pool.map(handle, range(args.requests)))
        handled = [a for a in answers if a.startswith("request ")]
        turned_away = Counter(a for a in answers if not a.startswith("request "))
        per_server = Counter(a.rsplit(" ", 1)[1] for a in handled)

        print(f"processed: {len(handled)}")
        print(f"turned away: {sum(turned_away.values())}" + "".join(f" ({m!r} x{n})" for m, n in turned_away.items()))
        print(f"max concurrent: {burst.max_concurrent} (limit {args.max_connections})")
        print("per server: " + " ".join(f"{s}={n}" for s, n in sorted(per_server.items())))
        _burst = None
        print(f"after the burst: {process_request('late')}")
        status = client.load_status(POOL).pools[0]
        print(f"active connections after: {status.active_leases}")


if __name__ == "__main__":
    main()
