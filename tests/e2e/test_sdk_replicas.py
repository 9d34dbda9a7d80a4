"""One client over three real ``loadwarden serve`` replicas rides out one of them being SIGKILLed.

A `Client` (from threads) and an `AsyncClient` (from tasks) are each given the
three replica addresses, which become one round-robin channel. Their
route()/select()/slot() calls are spread over all three; one replica is killed
in the middle of the load, and the calls go on. The application sees no
exception and no local fallback, no breaker opens, and the two survivors answer
everything after the kill. The RPCs that were in flight on the killed process
fail UNAVAILABLE; the SDK's retry sends them to a survivor, and a call a retry
saved is a success to the breaker.

The replicas run on the memory store: each is its own service, so a slot's
release that round robin sends to another replica is answered NOT_FOUND (taken
as "no longer held") and the lease ends at its short TTL on the replica that
granted it. `tests/e2e/test_replicas_redis.py` covers replicas acting as one.

The same holds when the client is given one DNS name that resolves to the three
replicas (``dns://<server>/name:port`` with round robin): a small DNS server in the
test answers the name with 127.0.0.1, 127.0.0.2 and 127.0.0.3, where the replicas
listen on one port. (This machine's /etc/hosts maps ``localhost`` to 127.0.0.1
alone, and a test does not rewrite the machine's hosts file.)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from loadwarden.sdk import AsyncClient, BreakerState, Client, TlsConfig

from .._certs import make_certs
from ._harness import API_CONFIG, Processes, Service, free_loopback_port

pytestmark = pytest.mark.e2e

CONFIG = API_CONFIG.replace("shutdown_grace_ms = 1000", "shutdown_grace_ms = 200")  # replicas stop fast
THREADS = 3
TASKS = 3
TIMEOUT_S = 1.0
LEASE_TTL_S = 1.0  # a lease whose release reached another replica ends this soon on its own
SPREAD_SELECTIONS = 30  # each replica has served this many before the kill
SURVIVOR_SELECTIONS = 100  # ... and each survivor this many more after it
AFTER_KILL_S = 2.5  # calls go on at least this long after the kill: past two reconnect attempts (1 s apart at most)
PHASE_TIMEOUT_S = 10.0
GUARDED = ("SelectServer", "AcquireSlot", "ReleaseSlot", "ReportOutcome")


@dataclass
class Tally:
    """What the application saw, shared by the workers; `killed` splits it in two."""

    killed: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: Counter[str] = field(default_factory=Counter)
    answered_after_kill: Counter[str] = field(default_factory=Counter)
    fallbacks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def answer(self, kind: str, fallback: bool) -> None:
        with self.lock:
            self.answered[kind] += 1
            if self.killed.is_set():
                self.answered_after_kill[kind] += 1
            if fallback:
                self.fallbacks.append(kind)

    def error(self, worker: str, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{worker}: {exc!r}")

    def after_kill(self) -> int:
        with self.lock:
            return sum(self.answered_after_kill.values())


def sync_worker(client: Client, tally: Tally, name: str) -> None:
    while not tally.stop.is_set():
        try:
            with client.route("api") as route:
                tally.answer("route", route.selection.fallback)
            tally.answer("select", client.select("api").fallback)
            with client.slot("api", lease_ttl_s=LEASE_TTL_S) as lease:
                tally.answer("slot", lease.fallback)
        except Exception as exc:  # noqa: BLE001 - anything reaching the application is the finding
            tally.error(name, exc)


async def async_worker(client: AsyncClient, tally: Tally, name: str) -> None:
    while not tally.stop.is_set():
        try:
            async with client.route("api") as route:
                tally.answer("route", route.selection.fallback)
            tally.answer("select", (await client.select("api")).fallback)
            async with client.slot("api", lease_ttl_s=LEASE_TTL_S) as lease:
                tally.answer("slot", lease.fallback)
        except Exception as exc:  # noqa: BLE001 - anything reaching the application is the finding
            tally.error(name, exc)


def run_async_workers(
    target: str | list[str],
    tally: Tally,
    breakers: dict[str, tuple[BreakerState, float, float]],
    load_balancing: str | None = None,
) -> None:
    async def main() -> None:
        async with AsyncClient(target, timeout_s=TIMEOUT_S, load_balancing=load_balancing) as client:
            await asyncio.gather(*(async_worker(client, tally, f"task-{i}") for i in range(TASKS)))
            breakers.update(breaker_summary(client))

    try:
        asyncio.run(main())
    except Exception as exc:  # noqa: BLE001 - reported by the test
        tally.error("event loop", exc)


def breaker_summary(client: Client | AsyncClient) -> dict[str, tuple[BreakerState, float, float]]:
    """(state, state changes, failed calls) of each guarded method's breaker."""
    summary = {}
    for method in GUARDED:
        breaker = client.breaker(method)
        assert breaker is not None
        stats = breaker.stats()
        summary[method] = (breaker.state, stats["state_changes"], stats["total_failures"])
    return summary


def selections(service: Service, tls: TlsConfig | None = None) -> int:
    """SelectServer answers `service` (one replica) has given for pool api since it started."""
    with Client(service.target, timeout_s=TIMEOUT_S, retry=None, breaker=None, tls=tls) as observer:
        status = observer.load_status("api")
    return sum(server.selections_total for pool in status.pools for server in pool.servers)


def wait_until(condition: Callable[[], bool], what: str, tally: Tally, timeout_s: float = PHASE_TIMEOUT_S) -> None:
    """Polls `condition` until it holds; fails naming `what` (and what the workers saw) at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if tally.errors or time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s; answered {dict(tally.answered)}, errors {tally.errors[:5]}")
        tally.stop.wait(0.05)  # a poll interval, not a wait for time to pass: the condition decides


def test_a_killed_replica_costs_the_application_nothing(processes: Processes, tmp_path: Path) -> None:
    config = tmp_path / "replica.toml"
    config.write_text(CONFIG, encoding="utf-8")
    replicas = [processes.serve(None, extra_args=["--config", str(config)]) for _ in range(3)]
    ride_out_a_kill(replicas, [replica.target for replica in replicas])


def dns_answer(query: bytes, addresses: list[str]) -> bytes:
    """The answer to one DNS query: every A question gets ``addresses`` (TTL 1 s), others none."""
    ident, flags = struct.unpack(">HH", query[:4])
    end = 12
    while query[end]:  # the question's name, label by label
        end += query[end] + 1
    end += 5  # its root label, type and class
    (qtype,) = struct.unpack(">H", query[end - 4 : end - 2])
    records = [socket.inet_aton(a) for a in addresses] if qtype == 1 else []  # 1: A; AAAA and the rest: none
    header = struct.pack(">HHHHHH", ident, 0x8580 | (flags & 0x0100), 1, len(records), 0, 0)
    answers = b"".join(struct.pack(">HHHIH", 0xC00C, 1, 1, 1, 4) + record for record in records)
    return header + query[12:end] + answers


@contextlib.contextmanager
def dns_server(addresses: list[str]) -> Iterator[tuple[str, list[str]]]:
    """A DNS server on 127.0.0.1 (UDP) answering every name with ``addresses``; yields
    its ``host:port`` and the names it was asked, as they come."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    asked: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                query, peer = sock.recvfrom(2048)
            except TimeoutError:
                continue
            labels, i = [], 12
            while query[i]:
                labels.append(query[i + 1 : i + 1 + query[i]].decode("ascii", "replace"))
                i += query[i] + 1
            asked.append(".".join(labels))
            sock.sendto(dns_answer(query, addresses), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}", asked
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def free_port_on(hosts: list[str]) -> int:
    """A TCP port free a moment ago on every one of ``hosts`` (loopback addresses)."""
    for _ in range(50):
        port = free_loopback_port()
        try:
            for host in hosts:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError(f"no port was free on all of {hosts}")


def test_a_dns_name_resolving_to_the_replicas_rides_out_a_killed_one(processes: Processes, tmp_path: Path) -> None:
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]  # all of 127/8 is loopback on Linux
    config = tmp_path / "replica.toml"
    config.write_text(CONFIG, encoding="utf-8")
    port = free_port_on(hosts)
    replicas = [processes.serve(None, listen=f"{host}:{port}", extra_args=["--config", str(config)]) for host in hosts]
    assert [r.target for r in replicas] == [f"{host}:{port}" for host in hosts]
    with dns_server(hosts) as (server, asked):
        # The name is looked up by gRPC's resolver at the given DNS server, not by the SDK.
        ride_out_a_kill(replicas, f"dns://{server}/replicas.loadwarden.test:{port}", "round_robin")
    assert "replicas.loadwarden.test" in asked


def ride_out_a_kill(replicas: list[Service], target: str | list[str], load_balancing: str | None = None) -> None:
    """Load from a Client and an AsyncClient given ``target``, spread over ``replicas``; one is
    SIGKILLed; the application sees nothing of it."""
    victim, survivors = replicas[0], replicas[1:]

    tally = Tally()
    async_breakers: dict[str, tuple[BreakerState, float, float]] = {}
    client = Client(target, timeout_s=TIMEOUT_S, load_balancing=load_balancing)
    workers = [threading.Thread(target=sync_worker, args=(client, tally, f"thread-{i}")) for i in range(THREADS)]
    workers.append(threading.Thread(target=run_async_workers, args=(target, tally, async_breakers, load_balancing)))
    try:
        for worker in workers:
            worker.start()
        wait_until(
            lambda: min(selections(replica) for replica in replicas) >= SPREAD_SELECTIONS,
            f"every replica served {SPREAD_SELECTIONS} selections",
            tally,
        )
        before = {replica.target: selections(replica) for replica in survivors}

        assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
        killed_at = time.monotonic()
        tally.killed.set()
        wait_until(
            lambda: (
                time.monotonic() - killed_at >= AFTER_KILL_S
                and all(selections(s) - before[s.target] >= SURVIVOR_SELECTIONS for s in survivors)
            ),
            f"each survivor served {SURVIVOR_SELECTIONS} more selections, for {AFTER_KILL_S} s",
            tally,
        )
    finally:
        tally.stop.set()
        for worker in workers:
            worker.join(timeout=10.0)
        sync_breakers = breaker_summary(client)
        client.close()

    assert not any(worker.is_alive() for worker in workers)
    assert tally.errors == []
    assert tally.fallbacks == []
    assert set(tally.answered_after_kill) == {"route", "select", "slot"}
    assert tally.after_kill() >= 2 * SURVIVOR_SELECTIONS
    closed = dict.fromkeys(GUARDED, (BreakerState.CLOSED, 0.0, 0.0))
    assert sync_breakers == closed  # never opened, and no call failed as a whole
    assert async_breakers == closed


def test_a_list_over_tls_checks_each_replica_against_its_address(processes: Processes, tmp_path: Path) -> None:
    # Without an authority of its own, a list's channel would check the replicas'
    # certificates against "a,b" (the whole list), which no certificate names.
    certs = make_certs(tmp_path / "certs")
    config = tmp_path / "tls.toml"
    config.write_text(
        f'{CONFIG}\n[tls]\ncert_file = "{certs.server_cert}"\nkey_file = "{certs.server_key}"\n', encoding="utf-8"
    )
    replicas = [processes.serve(None, extra_args=["--config", str(config)]) for _ in range(2)]

    tls = TlsConfig(ca=certs.ca)
    with Client([r.target for r in replicas], tls=tls, retry=None, breaker=None, timeout_s=5.0) as client:
        answers = [client.select("api") for _ in range(20)]

    assert not any(answer.fallback for answer in answers)
    assert all(selections(replica, tls) > 0 for replica in replicas)  # both certificates passed the check
