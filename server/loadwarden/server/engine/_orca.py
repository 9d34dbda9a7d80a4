"""ORCA ingestion: backends' out-of-band load reports (gRFC A51) taken in as load reports.

For each pool with ORCA ingestion on, one ``xds.service.orca.v3.OpenRcaService/
StreamCoreMetrics`` stream is kept open to each of its servers, asking for a report
every ``report_interval_ms`` (the backend may send less often: its own minimum wins).
Each report becomes the server's load report (``sample_from_orca``), stamped when it
arrives, exactly as a ``ReportLoad`` push is; so gRPC's ``weighted_round_robin``
clients, which read the same stream, and loadwarden see the same numbers.

Streams go only to addresses in the pool's configuration (the config file's server
list), as active health checks do: a server registered over RPC at another address is
never contacted. A stream that fails (refused, reset, ``UNIMPLEMENTED``, a message that
does not parse or carries impossible values) is logged on the change and retried with
exponential backoff and jitter; nothing is ever raised into the service. While no
report arrives, the last one ages: past the pool's ``load_report_ttl_ms`` the server
is STALE (unknown, never idle). A report that carries no number at all (a backend whose
ORCA service has nothing recorded) is not taken as an idle one: it is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from xds.data.orca.v3 import orca_load_report_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs, no py.typed
from xds.service.orca.v3 import orca_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs, no py.typed

from loadwarden.policy import (
    LoadReportIn,
    LoadSample,
    NotFound,
    Pool,
)

from ._orca_limits import (
    MAX_APPLICATION_UTILIZATION,
    MAX_NAMED_METRICS,
    MAX_RATE,
    NAMED_METRIC_PATTERN,
    OrcaSettings,
)

log = logging.getLogger("loadwarden.server")


SERVICE = "xds.service.orca.v3.OpenRcaService"
STREAM_CORE_METRICS = f"/{SERVICE}/StreamCoreMetrics"

# The contract's bounds on LoadReport's ORCA fields (common.proto); ReportLoad checks them too.

MAX_LATENCY_MS = 86_400_000.0
MAX_ACTIVE_REQUESTS = 1_000_000

# named_metrics keys loadwarden's BackendReporter sends for what ORCA has no field for;
# ingestion takes them into the load report's own fields (and out of named_metrics).
ACTIVE_REQUESTS_METRIC = "loadwarden.active_requests"
MEAN_LATENCY_METRIC = "loadwarden.mean_latency_ms"
ERROR_RATE_METRIC = "loadwarden.error_rate"
OWN_METRICS = (ACTIVE_REQUESTS_METRIC, MEAN_LATENCY_METRIC, ERROR_RATE_METRIC)
# ORCA's utilization map (named utilisations, 0-1) lands in named_metrics under this prefix,
# Envoy's name for them.
UTILIZATION_PREFIX = "utilization."

# Largest ORCA message taken, bytes: a report is a few hundred; more is not a load report.
MAX_MESSAGE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class PoolOrca:
    """One pool's ORCA ingestion and the addresses it may stream from."""

    pool: str
    settings: OrcaSettings
    addresses: frozenset[str]


class BadReport(ValueError):
    """An ORCA report with values no backend can mean (negative, NaN, infinite)."""


def _fraction(report: Any, name: str, high: float) -> float:
    value = float(getattr(report, name))
    if not value >= 0.0 or math.isinf(value):  # NaN fails the first test
        raise BadReport(f"{name} is {value!r}")
    return min(value, high)


def named_metrics_of(report: Any) -> dict[str, float]:
    """A report's named metrics (and its named utilisations, prefixed) as LoadReport carries them.

    Loadwarden's own keys (``OWN_METRICS``) are left out: they have fields of their own.
    Entries whose name breaks the contract's rules or whose value is not finite are
    dropped; past ``MAX_NAMED_METRICS`` the first names in sorted order are kept.
    """
    found: dict[str, float] = {}
    entries = [(k, v) for k, v in report.named_metrics.items() if k not in OWN_METRICS]
    entries += [(UTILIZATION_PREFIX + k, v) for k, v in report.utilization.items()]
    for name, value in sorted(entries):
        if len(found) >= MAX_NAMED_METRICS:
            break
        if NAMED_METRIC_PATTERN.fullmatch(name) and math.isfinite(value):
            found[name] = float(value)
    return found


def sample_from_orca(report: Any) -> LoadSample | None:
    """The load sample an ORCA ``OrcaLoadReport`` says, or None when it says nothing at all.

    ORCA's fractions become loadwarden's percentages (``cpu_utilization`` 0.42 is
    ``cpu_percent`` 42; above 1, allowed by ORCA past a soft limit, is 100 %), its
    ``rps_fractional`` (or the deprecated integer ``rps``) and ``eps`` the per-second
    rates, and the error rate is ``eps / rps`` unless the backend sent loadwarden's own
    ``loadwarden.error_rate``. In-flight requests and mean latency come from loadwarden's
    named metrics when present, else 0 (ORCA has no field for them).

    Raises:
        BadReport: A core value is negative, NaN or infinite.
    """
    cpu = _fraction(report, "cpu_utilization", 1.0)
    memory = _fraction(report, "mem_utilization", 1.0)
    application = _fraction(report, "application_utilization", MAX_APPLICATION_UTILIZATION)
    rps = _fraction(report, "rps_fractional", MAX_RATE) or min(float(report.rps), MAX_RATE)
    eps = _fraction(report, "eps", MAX_RATE)
    own: Mapping[str, float] = report.named_metrics
    named = named_metrics_of(report)
    if not (cpu or memory or application or rps or eps or named or any(k in own for k in OWN_METRICS)):
        return None
    error_rate = own.get(ERROR_RATE_METRIC)
    if error_rate is None or not math.isfinite(error_rate):
        error_rate = eps / rps if rps > 0 else 0.0
    active = own.get(ACTIVE_REQUESTS_METRIC, 0.0)
    latency_ms = own.get(MEAN_LATENCY_METRIC, 0.0)
    return LoadSample(
        cpu_percent=cpu * 100.0,
        memory_percent=memory * 100.0,
        active_requests=int(_bounded(active, MAX_ACTIVE_REQUESTS)),
        mean_latency_ms=_bounded(latency_ms, MAX_LATENCY_MS),
        error_rate=_bounded(error_rate, 1.0),
        application_utilization=application,
        requests_per_second=rps,
        errors_per_second=eps,
        named_metrics=named,
    )


def _bounded(value: float, high: float) -> float:
    return min(max(value, 0.0), high) if math.isfinite(value) else 0.0


FindPool = Callable[[str], "Pool[Any] | None"]
ReportLoad = Callable[[Sequence[LoadReportIn]], object]
Connect = Callable[[str], grpc.aio.Channel]


def insecure_channel(address: str) -> grpc.aio.Channel:
    """A plaintext channel to ``address`` that takes no message larger than a report can be."""
    return grpc.aio.insecure_channel(address, options=(("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),))


class OrcaIngester:
    """Keeps ORCA streams open to the configured pools' servers until cancelled.

    Args:
        pools: Finds a pool by name (the core's ``find_pool``); a pool that is gone is skipped.
        report_load: Takes load reports (the core's ``report_load``; NotFound for a server
            removed meanwhile is ignored).
        ingest: The pools' ingestion settings and configured addresses; disabled ones are skipped.
        rng: Draws the retry jitter.
        connect: Opens a channel to an address; ``insecure_channel`` by default.
        rescan_s: How often each pool's servers are compared with the open streams, seconds.
    """

    def __init__(
        self,
        pools: FindPool,
        report_load: ReportLoad,
        ingest: Collection[PoolOrca],
        rng: random.Random,
        *,
        connect: Connect = insecure_channel,
        rescan_s: float = 1.0,
    ) -> None:
        self._pools = pools
        self._report_load = report_load
        self.ingest = tuple(p for p in ingest if p.settings.enabled)
        self._rng = rng
        self._connect = connect
        self._rescan_s = rescan_s
        self.reports_total = 0  # reports taken in, count
        self.failures_total = 0  # streams that ended in an error, and reports refused, count
        self._over_bound: set[str] = set()  # pools whose servers max_streams cuts short, warned once

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for ingest in self.ingest:
                group.create_task(self._run_pool(ingest), name=f"loadwarden-orca-{ingest.pool}")

    def targets(self, ingest: PoolOrca) -> list[tuple[str, str]]:
        """(server id, address) of the pool's servers a stream may go to now, by id, bounded."""
        pool = self._pools(ingest.pool)
        if pool is None:
            return []
        found = sorted((s.id, s.address) for s in list(pool.servers.values()) if s.address in ingest.addresses)
        limit = ingest.settings.max_streams
        if len(found) <= limit:
            self._over_bound.discard(ingest.pool)
        elif ingest.pool not in self._over_bound:
            self._over_bound.add(ingest.pool)
            log.warning(
                "pools.%s.orca: %d servers, max_streams is %d; %s and later are not ingested",
                ingest.pool,
                len(found),
                limit,
                found[limit][0],
            )
        return found[:limit]

    async def _run_pool(self, ingest: PoolOrca) -> None:
        streams: dict[tuple[str, str], asyncio.Task[None]] = {}
        try:
            while True:
                wanted = set(self.targets(ingest))
                for key in [k for k in streams if k not in wanted or streams[k].done()]:
                    streams.pop(key).cancel()
                for server_id, address in sorted(wanted - streams.keys()):
                    streams[(server_id, address)] = asyncio.create_task(
                        self.stream(ingest, server_id, address), name=f"loadwarden-orca-{ingest.pool}-{server_id}"
                    )
                await asyncio.sleep(self._rescan_s)
        finally:
            for task in streams.values():
                task.cancel()
            await asyncio.gather(*streams.values(), return_exceptions=True)

    async def stream(self, ingest: PoolOrca, server_id: str, address: str) -> None:
        """Streams one server's reports into its load report, retrying until cancelled."""
        settings = ingest.settings
        request = orca_pb2.OrcaLoadReportRequest(
            report_interval=Duration(
                seconds=settings.report_interval_ms // 1000, nanos=settings.report_interval_ms % 1000 * 1_000_000
            )
        )
        backoff_s = settings.initial_backoff_ms / 1000.0
        failing = False
        where = f"{ingest.pool}/{server_id} at {address}"
        while True:
            problem = ""
            channel = self._connect(address)
            try:
                # Answers are parsed here, not by grpc: one that does not parse is this stream's problem.
                call: grpc.aio.UnaryStreamMultiCallable[Any, bytes] = channel.unary_stream(
                    STREAM_CORE_METRICS, request_serializer=orca_pb2.OrcaLoadReportRequest.SerializeToString
                )
                async for answer in call(request):
                    problem = self._take(ingest, server_id, address, answer)
                    if problem:
                        break
                    backoff_s = settings.initial_backoff_ms / 1000.0  # a report resets the backoff (A51)
                    if failing:
                        failing = False
                        log.info("ORCA reports from %s resumed", where)
                else:
                    problem = "the backend ended the stream"
            except grpc.aio.AioRpcError as exc:
                details = (exc.details() or "")[:120]
                problem = f"{exc.code().name}: {details}" if details else exc.code().name
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any stream error is the backend's, never the service's
                problem = f"{type(exc).__name__}: {str(exc)[:120]}"
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
            self.failures_total += 1
            if not failing:
                failing = True
                log.warning(
                    "ORCA stream from %s failed (%s); retrying with backoff, its load report ages meanwhile",
                    where,
                    problem,
                )
            else:
                log.debug("ORCA stream from %s failed again: %s", where, problem)
            await asyncio.sleep(self._rng.uniform(backoff_s / 2, backoff_s))
            backoff_s = min(backoff_s * 2, settings.max_backoff_ms / 1000.0)

    def _take(self, ingest: PoolOrca, server_id: str, address: str, answer: bytes) -> str:
        """Takes one report in; the problem that ends the stream, or ""."""
        try:
            sample = sample_from_orca(orca_load_report_pb2.OrcaLoadReport.FromString(answer))
        except DecodeError:
            return "an answer that is not an OrcaLoadReport"
        except BadReport as exc:
            return f"a report with {exc}"
        if sample is None:
            return ""  # says nothing: neither taken nor a failure
        pool = self._pools(ingest.pool)
        server = pool.servers.get(server_id) if pool is not None else None
        if server is None or server.address != address:
            return ""  # removed or moved; the next rescan closes this stream
        try:
            self._report_load([LoadReportIn(ingest.pool, server_id, sample)])
        except NotFound:
            return ""
        self.reports_total += 1
        return ""
