"""Active health checks (Envoy's shape): each configured pool's servers are checked over
HTTP (GET a path) or gRPC (``grpc.health.v1.Health/Check``) every interval, and the
answers go to the kernel, whose ``ProbeRecord`` turns them into healthy, degraded or
unhealthy (thresholds and their meaning: ``loadwarden.policy._probes``).

Checks go only to addresses in the pool's configuration (the config file's server
list): a server registered over RPC at another address is never checked, so no
caller can make the service connect where an operator did not list. A check's
error of any kind is a failed check, logged on state changes by the kernel, never
raised into the service.

An HTTP check passes on a 2xx status. It says the server is degraded when the
answer carries ``x-envoy-degraded`` (Envoy's convention) or a JSON object whose
``status`` is ``"degraded"`` (seed 002's ``/health``); a ``status`` of
``"unhealthy"`` (or ``"down"``, ``"fail"``) fails it whatever the HTTP status. A
gRPC check passes on ``SERVING``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # grpcio-health-checking: no stubs, no py.typed

from loadwarden.policy import Answer, Clock, Pool, ProbeRules

log = logging.getLogger("loadwarden.server")

PROTOCOLS = ("http", "grpc")
# Bytes of an HTTP answer read at most (status line, headers and body together).
MAX_ANSWER_BYTES = 64 * 1024
_FAILED_STATUSES = frozenset({"unhealthy", "down", "fail", "failed", "error"})


@dataclass(frozen=True, slots=True)
class HealthCheckSettings:
    """A pool's active health check (``[pools.<name>.health_check]``).

    Attributes:
        protocol: ``http`` (GET ``path``; 2xx passes) or ``grpc`` (``grpc.health.v1`` Check of
            ``service``; SERVING passes).
        path: The HTTP path to GET, starting with ``/``.
        service: The gRPC service name to check; empty checks the server as a whole.
        interval_ms: Time between the starts of two checks of one server.
        timeout_ms: A check that has not answered by then fails; at most ``interval_ms``.
        unhealthy_threshold: Failed checks in a row that make a server unhealthy (never chosen).
        healthy_threshold: Passing checks in a row that bring it back.
        jitter_ms: Each check starts up to this much after its interval, at random, so checks
            of many servers (and replicas) spread out.
        degraded_latency_ms: A passing check slower than this makes the server degraded; 0 is off.
        degraded_weight_percent: A degraded server's share of its weight, percent.
        max_concurrent: Checks of the pool in flight at once.
    """

    protocol: str = "http"
    path: str = "/health"
    service: str = ""
    interval_ms: int = 1_000
    timeout_ms: int = 500
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2
    jitter_ms: int = 100
    degraded_latency_ms: int = 0
    degraded_weight_percent: int = 25
    max_concurrent: int = 16

    @property
    def rules(self) -> ProbeRules:
        return ProbeRules(
            self.unhealthy_threshold,
            self.healthy_threshold,
            float(self.degraded_latency_ms),
            self.degraded_weight_percent / 100.0,
        )


class CheckResult(NamedTuple):
    """One check's answer: the kernel's verdict input and why it is not GOOD."""

    answer: Answer
    problem: str = ""


Check = Callable[[str, HealthCheckSettings, float], Awaitable[CheckResult]]
"""Checks one address with the settings and a timeout (s); raises or answers."""


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) <= 65535):
        raise ValueError(f"address {address!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _dechunk(body: bytes) -> bytes:
    """A chunked transfer-encoded body's data, as much as arrived whole."""
    out, rest = bytearray(), body
    while True:
        size_line, sep, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16) if sep else 0
        except ValueError:
            return bytes(out)
        if size <= 0 or len(rest) < size:
            return bytes(out)
        out += rest[:size]
        rest = rest[size + 2 :]


def classify_http(status: int, headers: Mapping[str, str], body: bytes) -> CheckResult:
    """An HTTP check's answer from the status, the (lower-cased) headers and the body."""
    said = ""
    if body[:1] == b"{":
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            document = json.loads(body)
            if isinstance(document, dict) and isinstance(document.get("status"), str):
                said = document["status"].strip().lower()
    if not 200 <= status <= 299:
        return CheckResult(Answer.FAILED, f"HTTP {status}")
    if said in _FAILED_STATUSES:
        return CheckResult(Answer.FAILED, f"HTTP {status}, status {said!r}")
    if "x-envoy-degraded" in headers:
        return CheckResult(Answer.DEGRADED, "x-envoy-degraded")
    if said == "degraded":
        return CheckResult(Answer.DEGRADED, "status 'degraded'")
    return CheckResult(Answer.GOOD)


async def http_check(address: str, settings: HealthCheckSettings, timeout_s: float) -> CheckResult:
    """GETs ``settings.path`` from ``address`` over HTTP/1.1 (one connection per check)."""
    host, port = _split(address)
    reader, writer = await asyncio.open_connection(host, port, limit=MAX_ANSWER_BYTES)
    try:
        request = (
            f"GET {settings.path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: loadwarden-health-check\r\n"
            "Accept: application/json\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode("ascii"))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return CheckResult(Answer.FAILED, f"not an HTTP answer: {status_line[:60]!r}")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        budget = MAX_ANSWER_BYTES - len(head)
        length = headers.get("content-length", "")
        if length.isdigit():
            body = await reader.readexactly(min(int(length), budget))
        else:
            body = await reader.read(budget)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = _dechunk(body)
        return classify_http(int(parts[1]), headers, body)
    finally:
        writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await writer.wait_closed()


class GrpcChecks:
    """``grpc.health.v1`` checks, one channel per checked address (closed when unused)."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def __call__(self, address: str, settings: HealthCheckSettings, timeout_s: float) -> CheckResult:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address)
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=settings.service), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            details = (exc.details() or "")[:80]
            return CheckResult(Answer.FAILED, f"{exc.code().name}: {details}" if details else exc.code().name)
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            return CheckResult(Answer.FAILED, health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
        return CheckResult(Answer.GOOD)

    async def keep_only(self, addresses: Collection[str]) -> None:
        """Closes the channels of addresses no longer checked."""
        for address in [a for a in self._channels if a not in addresses]:
            await self._channels.pop(address).close()

    async def close(self) -> None:
        await self.keep_only(())


@dataclass(frozen=True, slots=True)
class PoolChecks:
    """One pool's health check and the addresses it may check."""

    pool: str
    settings: HealthCheckSettings
    addresses: frozenset[str]


class HealthChecker:
    """Runs the configured pools' health checks until cancelled.

    Args:
        pools: Finds a pool by name (the core's ``find_pool``); a pool that is gone is skipped.
        checks: The pools' checks.
        clock: Times checks (monotonic) and stamps them (wall).
        rng: Draws the jitter.
        http: Checks an address over HTTP; ``http_check`` by default.
        grpc_check: Checks one over gRPC; a ``GrpcChecks`` by default.
    """

    def __init__(
        self,
        pools: Callable[[str], Pool[Any] | None],
        checks: Collection[PoolChecks],
        clock: Clock,
        rng: random.Random,
        *,
        http: Check = http_check,
        grpc_check: Check | None = None,
    ) -> None:
        self._pools = pools
        self.checks = tuple(checks)
        self._clock = clock
        self._rng = rng
        self._grpc = GrpcChecks()
        self._by_protocol: dict[str, Check] = {"http": http, "grpc": grpc_check or self._grpc}

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for check in self.checks:
                    group.create_task(self._run_pool(check), name=f"loadwarden-health-check-{check.pool}")
        finally:
            await self._grpc.close()

    async def _run_pool(self, check: PoolChecks) -> None:
        settings = check.settings
        limit = asyncio.Semaphore(settings.max_concurrent)
        interval_s = settings.interval_ms / 1000.0
        while True:
            started = self._clock.monotonic()
            await self.check_pool(check, limit)
            if settings.protocol == "grpc":
                await self._grpc.keep_only(check.addresses)
            await asyncio.sleep(max(0.0, interval_s - (self._clock.monotonic() - started)))

    async def check_pool(self, check: PoolChecks, limit: asyncio.Semaphore | None = None) -> None:
        """Checks every server of the pool at a configured address once (jitter included)."""
        pool = self._pools(check.pool)
        if pool is None:
            return
        targets = []
        for server in list(pool.servers.values()):
            if server.address in check.addresses:
                targets.append((server.id, server.address))
            elif server.probe is not None:
                pool.forget_probe(server)  # its address changed to one no check may reach
        limit = limit or asyncio.Semaphore(check.settings.max_concurrent)
        await asyncio.gather(*(self._check_one(check, sid, address, limit) for sid, address in targets))

    async def _check_one(self, check: PoolChecks, server_id: str, address: str, limit: asyncio.Semaphore) -> None:
        settings = check.settings
        if settings.jitter_ms:
            await asyncio.sleep(self._rng.uniform(0.0, settings.jitter_ms / 1000.0))
        async with limit:
            timeout_s = settings.timeout_ms / 1000.0
            started = self._clock.monotonic()
            try:
                async with asyncio.timeout(timeout_s):
                    answer = await self._by_protocol[settings.protocol](address, settings, timeout_s)
            except TimeoutError:
                answer = CheckResult(Answer.FAILED, f"timed out after {settings.timeout_ms} ms")
            except Exception as exc:  # noqa: BLE001 - any error of a check is a failed check, never the service's
                answer = CheckResult(Answer.FAILED, _problem(exc))
            latency_ms = (self._clock.monotonic() - started) * 1000.0
        pool = self._pools(check.pool)
        server = pool.servers.get(server_id) if pool is not None else None
        if pool is None or server is None or server.address != address:
            return  # removed or moved while it was checked
        pool.record_probe(server, answer.answer, latency_ms, answer.problem, self._clock.wall(), settings.rules)


def _problem(exc: Exception) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the connection closed before a whole answer"
    if isinstance(exc, asyncio.LimitOverrunError):
        return f"the answer's head is over {MAX_ANSWER_BYTES} bytes"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(exc) or type(exc).__name__
    return text[:120]
