"""ORCA both ways, with real parts on 127.0.0.1:0: grpc.aio (and sync) backends whose
BackendReporter serves ORCA's out-of-band stream and per-call trailers, read by a real
grpcio client, by the wire itself, and by grpcio's own weighted_round_robin balancer;
and the Decision service ingesting the stream into GetLoadStatus, where a dead or
garbage-speaking backend goes STALE and an address it was not configured with is never
contacted.

grpcio's client consumes the `endpoint-load-metrics-bin` trailer for its balancers and
never shows it to the application, so the trailers are read off the wire by a minimal
HTTP/2 client (`_raw_call`): it offers gRPC's true-binary metadata setting, so the
report arrives unencoded (no base64, no Huffman) and HPACK needs no Huffman decoder.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import struct
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from xds.data.orca.v3 import orca_load_report_pb2 as orca_pb  # type: ignore[import-untyped]  # xds-protos: no stubs
from xds.service.orca.v3 import orca_pb2 as orca_service_pb  # type: ignore[import-untyped]  # xds-protos: no stubs

from loadwarden.policy import PoolSettings, ServerSpec
from loadwarden.sdk import AsyncClient, BackendReporter, LoadReport
from loadwarden.sdk._convert import load_report_from_proto
from loadwarden.sdk.orca import (
    ACTIVE_REQUESTS_METRIC,
    ERROR_RATE_METRIC,
    STREAM_CORE_METRICS,
    TRAILER_KEY,
    AsyncOrcaInterceptor,
    OrcaInterceptor,
    add_orca_service,
    call_metrics,
    wrr_weight,
)
from loadwarden.server import RunningService
from loadwarden.server.app._settings import PoolSpec
from loadwarden.server.engine._orca import OrcaIngester, OrcaSettings, PoolOrca
from loadwarden.v1 import admin_pb2 as admin_pb
from loadwarden.v1 import admin_pb2_grpc as admin_grpc
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import wait_for

SERVICE = "test.Echo"
MIN_INTERVAL_S = 0.1


def _sampler(cpu: float = 30.0, memory: float = 60.0) -> Callable[[], tuple[float, float]]:
    return lambda: (cpu, memory)


@dataclass
class Backend:
    """A grpc.aio backend with a BackendReporter serving ORCA both ways."""

    reporter: BackendReporter
    server: grpc.aio.Server
    port: int
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends the Hold calls
    echoed: list[bytes] = field(default_factory=list)  # what Echo was called with

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _handlers(backend: Backend) -> dict[str, grpc.RpcMethodHandler]:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        backend.echoed.append(request)
        call_metrics().record_request_cost("bytes", float(len(request)))
        context.set_trailing_metadata((("backend-own", "kept"),))
        return request

    async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded")

    async def boom(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("a bug")

    async def count(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        call_metrics().record_utilization("pool", 0.25)
        for i in range(3):
            yield str(i).encode()

    async def hold(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await backend.release.wait()
        return b"released"

    return {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Boom": grpc.unary_unary_rpc_method_handler(boom),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Hold": grpc.unary_unary_rpc_method_handler(hold),
    }


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Any]]:
    """Starts ORCA backends on 127.0.0.1:0 (each with its own reporter); stops them at teardown."""
    started: list[Backend] = []

    async def _start(
        server_id: str = "s1",
        *,
        cpu: float = 30.0,
        application: float | None = None,
        named: dict[str, float] | None = None,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> Backend:
        reporter = BackendReporter(None, "api", server_id, sampler=_sampler(cpu), rate_window_s=1.0)
        reporter.set_application_utilization(application)
        for name, value in (named or {}).items():
            reporter.set_named_metric(name, value)
        server = grpc.aio.server(interceptors=[AsyncOrcaInterceptor(reporter)])
        backend = Backend(reporter, server, server.add_insecure_port("127.0.0.1:0"))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, _handlers(backend)),))
        add_orca_service(server, reporter, min_interval_s=min_interval_s)
        await server.start()
        started.append(backend)
        return backend

    yield _start
    for backend in started:
        backend.release.set()
        await backend.server.stop(0)


def _method(channel: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(f"/{SERVICE}/{name}")  # bytes in, bytes out


def _stream_core_metrics(channel: grpc.aio.Channel, interval_s: float) -> Any:
    """A real grpcio ORCA client: the generic unary-stream call (xds-protos ships no stub)."""
    call = channel.unary_stream(
        STREAM_CORE_METRICS,
        request_serializer=orca_service_pb.OrcaLoadReportRequest.SerializeToString,
        response_deserializer=orca_pb.OrcaLoadReport.FromString,
    )
    seconds, fraction = divmod(interval_s, 1.0)
    interval = Duration(seconds=int(seconds), nanos=round(fraction * 1e9))
    return call(orca_service_pb.OrcaLoadReportRequest(report_interval=interval))


# -- out of band ----------------------------------------------------------------------


async def test_the_oob_stream_sends_the_reporters_numbers_at_the_asked_interval(backends: Any) -> None:
    backend = await backends(cpu=30.0, application=0.4, named={"queue_depth": 7.0})
    async with grpc.aio.insecure_channel(backend.address) as channel:
        echo = _method(channel, "Echo")
        for _ in range(20):
            await echo(b"abc")
        held = asyncio.ensure_future(_method(channel, "Hold")(b""))
        await wait_for(lambda: _in_flight(backend), lambda n: n == 1, "the Hold call in flight")
        stream = _stream_core_metrics(channel, 0.3)
        loop = asyncio.get_running_loop()
        arrivals, reports = [], []
        async for report in stream:
            arrivals.append(loop.time())
            reports.append(report)
            if len(reports) == 4:
                break
        stream.cancel()
        backend.release.set()
        assert await held == b"released"

    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(0.25 <= gap <= 0.6 for gap in gaps), gaps  # every 0.3 s, on a busy machine
    report = reports[-1]
    assert report.cpu_utilization == pytest.approx(0.30)
    assert report.mem_utilization == pytest.approx(0.60)
    assert report.application_utilization == pytest.approx(0.4)
    assert report.rps_fractional > 0 and report.eps == 0
    assert report.named_metrics["queue_depth"] == 7.0
    assert report.named_metrics[ACTIVE_REQUESTS_METRIC] == 1.0  # the Hold call
    assert report.named_metrics[ERROR_RATE_METRIC] == 0.0
    assert not report.request_cost  # per call only


async def _in_flight(backend: Backend) -> int:
    return backend.reporter.current_report().active_requests


async def test_an_interval_below_the_minimum_gets_the_minimum(backends: Any) -> None:
    backend = await backends(min_interval_s=0.25)
    async with grpc.aio.insecure_channel(backend.address) as channel:
        stream = _stream_core_metrics(channel, 0.01)
        loop = asyncio.get_running_loop()
        arrivals = []
        async for _ in stream:
            arrivals.append(loop.time())
            if len(arrivals) == 3:
                break
        stream.cancel()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(gap >= 0.2 for gap in gaps), gaps


async def test_streams_past_the_bound_are_refused() -> None:
    reporter = BackendReporter(None, "api", "s1", sampler=_sampler())
    bounded = grpc.aio.server()
    add_orca_service(bounded, reporter, min_interval_s=MIN_INTERVAL_S, max_streams=1)
    port = bounded.add_insecure_port("127.0.0.1:0")
    await bounded.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            first = _stream_core_metrics(channel, 1.0)
            await anext(aiter(first))
            second = _stream_core_metrics(channel, 1.0)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await anext(aiter(second))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            first.cancel()
    finally:
        await bounded.stop(0)


# -- per call -------------------------------------------------------------------------


async def test_every_call_carries_the_trailer_with_the_calls_numbers(backends: Any) -> None:
    backend = await backends(cpu=30.0, application=0.4, named={"queue_depth": 7.0})

    ok = await _raw_call(backend.port, f"/{SERVICE}/Echo", b"hello")
    assert ok["grpc-status"] == b"0" and ok["backend-own"] == b"kept"  # the handler's own trailer stays
    report = _report(ok)
    assert (report.cpu_utilization, report.mem_utilization) == (pytest.approx(0.3), pytest.approx(0.6))
    assert report.application_utilization == pytest.approx(0.4)
    assert report.request_cost["bytes"] == 5.0  # recorded by this call's handler
    assert report.named_metrics["queue_depth"] == 7.0
    assert report.rps_fractional > 0  # this call, finished

    for method, status in (("Fail", b"14"), ("Boom", b"2")):
        answer = await _raw_call(backend.port, f"/{SERVICE}/{method}")
        assert answer["grpc-status"] == status, answer
        assert _report(answer).cpu_utilization == pytest.approx(0.3), method

    streamed = await _raw_call(backend.port, f"/{SERVICE}/Count")
    assert streamed["grpc-status"] == b"0"
    assert _report(streamed).utilization["pool"] == 0.25
    # Failures count in the reporter's figures: UNAVAILABLE and a raise (UNKNOWN) are the backend's.
    after = _report(await _raw_call(backend.port, f"/{SERVICE}/Echo"))
    assert after.eps > 0 and after.named_metrics[ERROR_RATE_METRIC] > 0

    # gRPC's own services are neither reported on nor tracked: the OOB stream is no request in flight.
    async with grpc.aio.insecure_channel(backend.address) as channel:
        stream = _stream_core_metrics(channel, 1.0)
        await anext(aiter(stream))
        assert backend.reporter.current_report().active_requests == 0
        stream.cancel()


def test_a_sync_server_gets_the_trailers_too() -> None:
    reporter = BackendReporter(None, "api", "sync-1", sampler=_sampler(cpu=55.0))

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        call_metrics().record_named_metric("rows", 3.0)
        return request

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
        raise AssertionError("abort raises")

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[OrcaInterceptor(reporter)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        ok = asyncio.run(_raw_call(port, f"/{SERVICE}/Echo", b"x"))
        failed = asyncio.run(_raw_call(port, f"/{SERVICE}/Fail"))
    finally:
        server.stop(0)
    assert ok["grpc-status"] == b"0"
    assert _report(ok).cpu_utilization == pytest.approx(0.55) and _report(ok).named_metrics["rows"] == 3.0
    assert failed["grpc-status"] == b"8"
    assert _report(failed).eps > 0  # the sync server sets the trailer after the abort too: this call counts


# -- grpcio's weighted_round_robin reads them -----------------------------------------


@pytest.mark.parametrize("oob", [False, True], ids=["per-call", "out-of-band"])
async def test_grpcio_weighted_round_robin_follows_the_reports(backends: Any, oob: bool) -> None:
    light = await backends("light", application=0.1)
    heavy = await backends("heavy", application=0.9)
    config: dict[str, Any] = {"blackoutPeriod": "0s", "weightUpdatePeriod": "0.1s"}
    if oob:
        config |= {"enableOobLoadReport": True, "oobReportingPeriod": "0.1s"}
    options = [("grpc.service_config", json.dumps({"loadBalancingConfig": [{"weighted_round_robin": config}]}))]
    target = f"ipv4:{light.address},{heavy.address}"
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        echo = _method(channel, "Echo")
        for _ in range(600):  # the weights settle
            await echo(b"warm-up")
        for _ in range(400):
            await echo(b"counted")
    # The light backend reports a ninth of the heavy one's utilisation: it takes the bulk
    # (round robin would give each 200).
    light_share = light.echoed.count(b"counted")
    assert light_share + heavy.echoed.count(b"counted") == 400
    assert light_share > 300, light_share


# -- the service ingests the stream ---------------------------------------------------

FAST = OrcaSettings(report_interval_ms=100, initial_backoff_ms=50, max_backoff_ms=200)


@pytest.fixture
async def ingest() -> AsyncIterator[Callable[..., OrcaIngester]]:
    """Starts the ORCA runner beside a started service, as start_service will."""
    tasks: list[asyncio.Task[None]] = []

    def _ingest(running: RunningService, *pools: PoolSpec, settings: OrcaSettings = FAST) -> OrcaIngester:
        ingester = OrcaIngester(
            running.core.find_pool,
            running.core.report_load,
            [PoolOrca(p.settings.name, settings, frozenset(s.address for s in p.servers)) for p in pools],
            random.Random(7),
            rescan_s=0.1,
        )
        tasks.append(asyncio.create_task(ingester.run(), name="loadwarden-orca"))
        return ingester

    yield _ingest
    for task in tasks:
        assert not task.done(), task  # never ended by an error
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _pool(addresses: list[str], **settings: Any) -> PoolSpec:
    servers = tuple(ServerSpec(f"s{i}", address) for i, address in enumerate(addresses))
    return PoolSpec(PoolSettings(name="api", strategy="round_robin", **settings), servers)


async def _servers(stub: pb_grpc.DecisionServiceAsyncStub) -> dict[str, common.ServerStatus]:
    answer = await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="api"))
    return {s.id: s for s in answer.status.pools[0].servers}


async def test_the_service_shows_the_ingested_utilisation(
    start: Any, channel_to: Any, backends: Any, ingest: Any
) -> None:
    backend = await backends(cpu=42.0, application=0.35, named={"queue_depth": 7.0})
    async with grpc.aio.insecure_channel(backend.address) as channel:
        for _ in range(10):
            await _method(channel, "Echo")(b"abc")
    pool = _pool([backend.address], require_load_report=True)
    running = await start(pool)
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    assert (await _servers(stub))["s0"].state == common.SERVER_STATE_STALE  # no report yet: unknown
    ingester = ingest(running, pool)

    status = await wait_for(lambda: _servers(stub), lambda s: s["s0"].HasField("load"), "an ingested report")
    load = status["s0"].load
    assert status["s0"].state == common.SERVER_STATE_SERVING
    assert load.cpu_percent == pytest.approx(42.0) and load.memory_percent == pytest.approx(60.0)
    assert load.application_utilization == pytest.approx(0.35)
    assert load.requests_per_second > 0 and load.errors_per_second == 0
    assert dict(load.named_metrics) == {"queue_depth": 7.0}  # loadwarden's own keys went to their fields
    assert load.active_requests == 0 and load.mean_latency_ms > 0
    assert ingester.reports_total >= 1

    # The numbers a weighted_round_robin client weighs by, read back from GetLoadStatus.
    async with grpc.aio.insecure_channel(backend.address) as channel:
        stream = _stream_core_metrics(channel, 0.1)
        oob = await anext(aiter(stream))
        stream.cancel()
    ingested = load_report_from_proto(load)
    from_oob = LoadReport(
        "api",
        "s0",
        cpu_percent=oob.cpu_utilization * 100,
        application_utilization=oob.application_utilization,
        requests_per_second=oob.rps_fractional,
        errors_per_second=oob.eps,
    )
    assert wrr_weight(ingested) == pytest.approx(wrr_weight(from_oob), rel=0.5)  # rps moves between reads
    assert wrr_weight(ingested) == pytest.approx(ingested.requests_per_second / 0.35)


async def test_a_dead_or_garbage_backend_goes_stale_never_an_exception(
    start: Any, channel_to: Any, backends: Any, ingest: Any
) -> None:
    alive = await backends("alive")
    dying = await backends("dying", cpu=80.0)
    garbage = await _garbage_backend(b"\xff\xff\xff\xff")
    impossible = await _garbage_backend(orca_pb.OrcaLoadReport(cpu_utilization=float("nan")).SerializeToString())
    refused = await _closed_port()
    no_orca, no_orca_address, _ = await _counting_backend()  # answers UNIMPLEMENTED
    addresses = [alive.address, dying.address, garbage[1], impossible[1], refused, no_orca_address]
    pool = _pool(addresses, load_report_ttl_ms=500, require_load_report=True)
    running = await start(pool)
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    try:
        ingester = ingest(running, pool)
        both = await wait_for(
            lambda: _servers(stub),
            lambda s: s["s0"].HasField("load") and s["s1"].HasField("load"),
            "the two good backends reported",
        )
        assert both["s1"].load.cpu_percent == pytest.approx(80.0)
        await dying.server.stop(0)  # dies: its last report ages
        stale = await wait_for(
            lambda: _servers(stub), lambda s: s["s1"].state == common.SERVER_STATE_STALE, "the dead one stale"
        )
        assert stale["s1"].load.cpu_percent == pytest.approx(80.0)  # the last report, shown as stale: not idle
        assert stale["s0"].state == common.SERVER_STATE_SERVING
        for garbled in ("s2", "s3", "s4", "s5"):  # never a report: unknown, not idle
            assert stale[garbled].state == common.SERVER_STATE_STALE and not stale[garbled].HasField("load")
        assert ingester.failures_total >= 5
    finally:
        for server in (garbage[0], impossible[0], no_orca):
            await server.stop(0)


async def test_a_server_registered_over_rpc_elsewhere_is_never_contacted(
    start: Any, channel_to: Any, backends: Any, ingest: Any
) -> None:
    configured = await backends("configured")
    elsewhere, elsewhere_address, calls = await _counting_backend()
    pool = _pool([configured.address])
    running = await start(pool)
    channel = channel_to(running)
    admin, stub = admin_grpc.AdminServiceStub(channel), pb_grpc.DecisionServiceStub(channel)
    server = common.ServerSpec(id="rpc", address=elsewhere_address)
    await admin.RegisterServer(admin_pb.RegisterServerRequest(pool="api", server=server))
    try:
        ingester = ingest(running, pool)
        await wait_for(lambda: asyncio.sleep(0, ingester.reports_total), lambda n: n >= 5, "five reports of s0")
        assert calls == [] and not (await _servers(stub))["rpc"].HasField("load")
    finally:
        await elsewhere.stop(0)


async def test_a_pushed_report_carries_the_same_fields(start: Any, channel_to: Any) -> None:
    pool = _pool(["127.0.0.1:9"])
    running = await start(pool)
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    async with AsyncClient(running.target) as client:
        reporter = BackendReporter(client, "api", "s0", sampler=_sampler(cpu=20.0), rate_window_s=1.0)
        reporter.set_application_utilization(0.5)
        reporter.set_named_metric("queue_depth", 3.0)
        for _ in range(5):
            reporter.observe(0.002)
        assert await reporter.report_now_async()
    load = (await _servers(stub))["s0"].load
    assert (load.cpu_percent, load.application_utilization, dict(load.named_metrics)) == (
        20.0,
        0.5,
        {"queue_depth": 3.0},
    )
    assert load.requests_per_second > 0


async def _garbage_backend(answer: bytes) -> tuple[grpc.aio.Server, str]:
    """A backend whose StreamCoreMetrics sends `answer` as is, every 50 ms."""

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        while True:
            yield answer
            await asyncio.sleep(0.05)

    method: grpc.RpcMethodHandler[Any, Any] = grpc.unary_stream_rpc_method_handler(
        stream
    )  # no (de)serializers: bytes go out as they are
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("xds.service.orca.v3.OpenRcaService", {"StreamCoreMetrics": method}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _counting_backend() -> tuple[grpc.aio.Server, str, list[str]]:
    """A backend that records every call it gets, of any method."""
    calls: list[str] = []

    class Record(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> None:
            calls.append(details.method)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Record(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}", calls


async def _closed_port() -> str:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    return f"127.0.0.1:{port}"


# -- a minimal HTTP/2 client that reads the trailers off the wire ---------------------


def _report(trailers: dict[str, bytes]) -> Any:
    value = trailers[TRAILER_KEY]
    assert value[:1] == b"\x00", value  # true-binary metadata: a zero byte, then the bytes
    return orca_pb.OrcaLoadReport.FromString(value[1:])


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _literal(name: bytes, value: bytes) -> bytes:
    # HPACK literal header field without indexing, new name, plain strings (each < 127 bytes).
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def _integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    mask = (1 << prefix_bits) - 1
    value, pos = data[pos] & mask, pos + 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        byte, pos = data[pos], pos + 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _string(data: bytes, pos: int) -> tuple[bytes | None, int]:
    huffman = data[pos] & 0x80
    length, pos = _integer(data, pos, 7)
    return (None if huffman else data[pos : pos + length]), pos + length  # Huffman: not needed here


def _decode(block: bytes, table: list[tuple[bytes | None, bytes | None]]) -> list[tuple[bytes | None, bytes | None]]:
    """An HPACK header block; names and values only from literals and the dynamic table."""
    static = 61
    out: list[tuple[bytes | None, bytes | None]] = []
    pos = 0
    while pos < len(block):
        first = block[pos]
        if first & 0x80:  # indexed field
            index, pos = _integer(block, pos, 7)
            out.append(table[index - static - 1] if index > static else (None, None))
        elif first & 0xE0 == 0x20:  # dynamic table size update
            _, pos = _integer(block, pos, 5)
        else:  # literal, with incremental indexing (01), without (0000) or never indexed (0001)
            indexed = bool(first & 0x40)
            index, pos = _integer(block, pos, 6 if indexed else 4)
            if index == 0:
                name, pos = _string(block, pos)
            else:
                name = table[index - static - 1][0] if index > static else None
            value, pos = _string(block, pos)
            out.append((name, value))
            if indexed:
                table.insert(0, (name, value))
    return out


async def _raw_call(port: int, path: str, message: bytes = b"") -> dict[str, bytes]:
    """One gRPC call over a fresh HTTP/2 connection; the trailers it ended with, by name."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    allow_true_binary = struct.pack(">HI", 0xFE03, 1)  # gRPC's GRPC_ALLOW_TRUE_BINARY_METADATA setting
    headers = (
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", f"127.0.0.1:{port}".encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    )
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, allow_true_binary))
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    writer.write(_frame(1, 0x4, 1, b"".join(_literal(k, v) for k, v in headers)) + _frame(0, 0x1, 1, body))
    await writer.drain()
    table: list[tuple[bytes | None, bytes | None]] = []
    try:
        async with asyncio.timeout(5.0):
            while True:
                head = await reader.readexactly(9)
                kind, flags = head[3], head[4]
                stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                payload = await reader.readexactly(int.from_bytes(head[:3], "big"))
                if kind == 4 and not flags & 0x1:  # SETTINGS: acknowledged
                    writer.write(_frame(4, 0x1, 0, b""))
                elif kind == 6 and not flags & 0x1:  # PING: answered
                    writer.write(_frame(6, 0x1, 0, payload))
                elif kind == 1 and stream == 1:  # HEADERS: the response's, then its trailers
                    if flags & 0x8:
                        payload = payload[1 : len(payload) - payload[0]]
                    if flags & 0x20:
                        payload = payload[5:]
                    assert flags & 0x4, "a header block split over CONTINUATION frames"
                    fields = _decode(payload, table)
                    if flags & 0x1:
                        return {n.decode(): v for n, v in fields if n is not None and v is not None}
                elif kind == 3 and stream == 1:
                    raise AssertionError("the server reset the stream")
    finally:
        writer.close()


async def test_a_pool_with_orca_in_its_config_is_ingested_by_the_service_itself(
    start: Any, channel_to: Any, backends: Any
) -> None:
    backend = await backends(cpu=42.0, application=0.35)
    base = _pool([backend.address], require_load_report=True)
    running = await start(PoolSpec(base.settings, base.servers, orca=FAST))  # what [pools.api.orca] makes
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    status = await wait_for(lambda: _servers(stub), lambda s: s["s0"].HasField("load"), "a report the service took")
    assert status["s0"].load.application_utilization == pytest.approx(0.35)
    assert status["s0"].state == common.SERVER_STATE_SERVING
