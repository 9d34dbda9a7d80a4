"""Seed 004's admin page, as a console dashboard of the loadwarden service.

The seed's admin page fetches its data through a client-side request queue (at
most a few requests in flight, 100 ms between starts, by priority) and a
circuit breaker, and keeps showing fallback data when the backend is down
instead of failing. Here the "backend" is the loadwarden service itself:

- every ``--refresh-s`` the page fetches ``client.load_status()`` through a
  ``RequestQueue(max_concurrent=2, min_spacing_s=0.1)`` (priority 1), and routes
  a few demo requests with ``client.route(pool)`` through the same queue
  (priority 0);
- it renders pools, servers, their state, in-flight work and reported load;
- when the service is down, or the ``GetLoadStatus`` circuit breaker is open,
  it keeps showing the last good snapshot, marked
  ``STALE (service unavailable since HH:MM:SS; breaker OPEN, next probe in N s)``;
  the demo requests still get a server, from the SDK's local fallback (round
  robin over the servers the service last returned), and each says where its
  answer came from;
- it shows the state of each circuit breaker (``client.breaker(method)``) and
  the last breaker state changes (``CircuitBreaker.add_listener``).

Run it against a local service (``./scripts/serve`` in another terminal):

    python examples/seed004_admin_dashboard.py [--target 127.0.0.1:50051] [--refresh-s 1] [--iterations N]

It runs until Ctrl-C (or ``--iterations`` renders). Stop the service while it
runs to see the STALE page and the local fallback, start it again to see the
page go live. If the service has no pool ``--pool`` (default ``api``), the page
creates it through ``AdminService.ConfigurePool`` (never replacing an existing
one); the same pool in a service config file would be::

    [pools.api]
    servers = [
      { id = "api-1", address = "127.0.0.1:9001" },
      { id = "api-2", address = "127.0.0.1:9002" },
      { id = "api-3", address = "127.0.0.1:9003" },
    ]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import grpc

from loadwarden.sdk import (
    BreakerConfig,
    BreakerEvent,
    BreakerState,
    Client,
    LoadStatus,
    LoadwardenError,
    NotFoundError,
    PoolStatus,
    QueueFull,
    QueueTimeout,
    RequestQueue,
    RetryConfig,
    ServerStatus,
)
from loadwarden.v1 import admin_pb2, admin_pb2_grpc, common_pb2

DEMO_ROUTES = 3  # demo requests routed per refresh
DEMO_SERVERS = 3  # servers of the pool the page creates when it is missing
CALL_TIMEOUT_S = 0.5  # deadline of each SDK call, seconds
WATCHED_METHODS = ("GetLoadStatus", "SelectServer")

# A dashboard should notice a dead service after a few refreshes and probe it every few
# seconds, not hammer it: 3 failures in a row open a breaker for 3 s (doubling on each
# failed probe, at most 30 s), and one successful probe closes it.
BREAKER = BreakerConfig(consecutive_failures=3, open_wait_s=3.0, max_open_wait_s=30.0, half_open_probes=1)
RETRY = RetryConfig(max_attempts=2, initial_backoff_s=0.05, max_backoff_s=0.2)


def clock() -> str:
    return datetime.now().strftime("%H:%M:%S")


@dataclass(frozen=True)
class Fetch:
    """One attempt to read the service's status: the snapshot, or why there is none."""

    status: LoadStatus | None
    error: str = ""


class AdminDashboard:
    """The admin page: fetches, remembers the last good snapshot, renders text."""

    def __init__(self, client: Client, target: str, pool: str, refresh_s: float) -> None:
        self.client = client
        self.target = target
        self.pool = pool
        self.refresh_s = refresh_s
        # Seed 004's request queue: 2 calls in flight at most, starts 100 ms apart.
        self.queue = RequestQueue(max_concurrent=2, min_spacing_s=0.1, max_queue=4 * DEMO_ROUTES)
        self.queue_wait_s = max(refresh_s, 1.0)  # a call not started by then is skipped this round
        self.workers = ThreadPoolExecutor(max_workers=DEMO_ROUTES, thread_name_prefix="admin-page")
        self.last_good: LoadStatus | None = None
        self.last_good_at: str = ""
        self.down_since: str | None = None
        self.events: deque[str] = deque(maxlen=4)
        self._events_lock = threading.Lock()
        for method in WATCHED_METHODS:
            breaker = client.breaker(method)
            if breaker is not None:
                breaker.add_listener(self._on_breaker_change)

    def close(self) -> None:
        self.workers.shutdown(wait=True)

    # --- fetching -------------------------------------------------------------------

    def fetch_status(self) -> Fetch:
        try:
            status = self.queue.run(self.client.load_status, priority=1, timeout_s=self.queue_wait_s)
        except (QueueTimeout, QueueFull) as err:
            return Fetch(None, f"request queue: {err}")
        except LoadwardenError as err:  # unreachable, deadline, breaker open, ...
            return Fetch(None, f"{type(err).__name__}: {err}")
        return Fetch(status)

    def route_once(self) -> str:
        """Routes one demo request; says which server and who decided."""
        try:
            with self.queue.slot(priority=0, timeout_s=self.queue_wait_s), self.client.route(self.pool) as route:
                pass  # the request's own work against route.address would run here
        except (QueueTimeout, QueueFull) as err:
            return f"skipped ({type(err).__name__})"
        except NotFoundError:
            return f"pool {self.pool!r} not found"
        except LoadwardenError as err:  # unreachable and no server of the pool known yet
            return f"failed ({type(err).__name__})"
        source = "local fallback" if route.selection.fallback else "service"
        return f"{route.server_id} ({source})"

    def refresh(self) -> tuple[Fetch, list[str]]:
        fetch = self.fetch_status()
        if fetch.status is not None:
            taken_at = fetch.status.generated_at.astimezone().strftime("%H:%M:%S")  # the service's clock
            self.last_good, self.last_good_at, self.down_since = fetch.status, taken_at, None
            if not any(p.name == self.pool for p in fetch.status.pools):
                self._create_pool()
        elif self.down_since is None:
            self.down_since = clock()
        routes = [self.workers.submit(self.route_once) for _ in range(DEMO_ROUTES)]
        return fetch, [r.result() for r in routes]

    def _create_pool(self) -> None:
        pool = common_pb2.PoolConfig(
            name=self.pool,
            servers=[
                common_pb2.ServerSpec(id=f"{self.pool}-{i}", address=f"127.0.0.1:{9000 + i}")
                for i in range(1, DEMO_SERVERS + 1)
            ],
        )
        try:
            with grpc.insecure_channel(self.target) as channel:
                admin_pb2_grpc.AdminServiceStub(channel).ConfigurePool(
                    admin_pb2.ConfigurePoolRequest(pool=pool), timeout=CALL_TIMEOUT_S
                )
        except grpc.RpcError as err:
            self._event(f"creating pool {self.pool!r} failed: {err.code().name}")
        else:
            self._event(f"created pool {self.pool!r} with {DEMO_SERVERS} demo servers")

    def _on_breaker_change(self, event: BreakerEvent) -> None:
        method = event.name.split("@", 1)[0]
        self._event(f"breaker {method}: {event.previous.name} -> {event.current.name} ({event.reason})")

    def _event(self, text: str) -> None:
        with self._events_lock:
            self.events.append(f"{clock()} {text}")

    # --- rendering ------------------------------------------------------------------

    def render(self, n: int, fetch: Fetch, routes: list[str]) -> str:
        lines = [f"=== loadwarden admin @ {self.target} | render {n} | {clock()} ==="]
        if fetch.status is not None:
            lines.append(f"status: LIVE (snapshot {self.last_good_at})")
        else:
            why = f"service unavailable since {self.down_since}; {self._breaker_summary('GetLoadStatus')}"
            if self.last_good is None:
                lines.append(f"status: NO DATA ({why})")
            else:
                lines.append(f"status: STALE ({why}) - last good snapshot from {self.last_good_at}")
            lines.append(f"  last error: {fetch.error[:120]}")
        if self.last_good is not None:
            lines += render_snapshot(self.last_good)
        lines.append("breakers: " + " | ".join(f"{m} {self._breaker_detail(m)}" for m in WATCHED_METHODS))
        lines.append(f"routes ({self.pool}): " + ", ".join(routes))
        q = self.queue.stats()
        lines.append(
            f"request queue: started {q.started}, max in flight {q.max_in_flight_seen}/2, "
            f"waiting {q.waiting}, timeouts {q.timeouts}, full {q.rejected}"
        )
        with self._events_lock:
            events = list(self.events)
        lines += [f"  event {e}" for e in events]
        return "\n".join(lines)

    def _breaker_summary(self, method: str) -> str:
        breaker = self.client.breaker(method)
        if breaker is None:
            return "no breaker"
        state = breaker.state
        if state is BreakerState.OPEN:
            return f"breaker OPEN, next probe in {breaker.retry_after_s():.1f} s"
        return f"breaker {state.name}"

    def _breaker_detail(self, method: str) -> str:
        breaker = self.client.breaker(method)
        if breaker is None:
            return "off"
        state = breaker.state
        stats = breaker.stats()
        detail = f"{state.name}"
        if state is BreakerState.OPEN:
            detail += f" (next probe in {stats['retry_after_s']:.1f} s, refused {stats['rejected']:.0f} calls so far)"
        elif stats["consecutive_failures"]:
            detail += f" ({stats['consecutive_failures']:.0f} failures in a row)"
        return detail


def render_snapshot(status: LoadStatus) -> list[str]:
    lines: list[str] = []
    if status.host is not None and status.host.load_score is not None:
        host = status.host
        lines.append(
            f"service host: load score {host.load_score:.0f} (cpu {host.cpu_percent:.0f}%, "
            f"memory {host.memory_percent:.0f}%, load average {host.load_average_percent:.0f}%)"
        )
    if not status.pools:
        lines.append("(no pools)")
    for pool in status.pools:
        lines += render_pool(pool)
    return lines


def render_pool(pool: PoolStatus) -> list[str]:
    limit = str(pool.concurrency_limit) if pool.concurrency_limit else "no limit"
    lines = [
        f"pool {pool.name} [{pool.strategy}] eligible {pool.eligible_servers}/{len(pool.servers)}, "
        f"in-flight {pool.in_flight}, leases {pool.active_leases} ({limit}), queued {pool.queue_length}",
        f"  {'server':<12} {'address':<22} {'state':<8} {'in-flight':>9}  load",
    ]
    lines += [f"  {s.id:<12} {s.address:<22} {s.state.name:<8} {s.in_flight:>9}  {load_text(s)}" for s in pool.servers]
    return lines


def load_text(server: ServerStatus) -> str:
    if server.load is None:
        return "not reported"
    load = server.load
    return f"cpu {load.cpu_percent:.0f}%, memory {load.memory_percent:.0f}%, active {load.active_requests}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="loadwarden service address")
    parser.add_argument("--refresh-s", type=float, default=1.0, help="seconds between renders")
    parser.add_argument("--iterations", type=int, default=0, help="stop after this many renders; 0 runs forever")
    parser.add_argument("--pool", default="api", help="pool the demo requests are routed in")
    args = parser.parse_args()
    if args.refresh_s <= 0:
        parser.error("--refresh-s must be > 0")
    if args.iterations < 0:
        parser.error("--iterations must be >= 0")

    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
    client = Client(
        args.target,
        timeout_s=CALL_TIMEOUT_S,
        breaker=BREAKER,
        retry=RETRY,
        server_refresh_s=10.0,  # the servers known for the local fallback follow the service
    )
    page = AdminDashboard(client, args.target, args.pool, args.refresh_s)
    try:
        n = 0
        next_at = time.monotonic()
        while not args.iterations or n < args.iterations:
            n += 1
            fetch, routes = page.refresh()
            print(clear + page.render(n, fetch, routes) + "\n", flush=True)
            if args.iterations and n >= args.iterations:
                break
            next_at += args.refresh_s
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()  # a slow round: start the next one now, don't catch up
    except KeyboardInterrupt:
        pass
    finally:
        page.close()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
