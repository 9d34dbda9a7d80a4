"""Batch sizing through the SDK's sync and async clients against a real in-process service.

The sync client runs in a worker thread (``asyncio.to_thread``) because the
service under test runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest

from loadwarden.policy._operations import OperationSettings
from loadwarden.sdk import (
    AsyncClient,
    BatchMode,
    BatchReport,
    BatchSize,
    Client,
    DeadlineExceededError,
    InvalidArgumentError,
    LoadSource,
    LoadStatus,
    NotFoundError,
    UnavailableError,
)
from loadwarden.sdk._errors import is_transport_failure
from loadwarden.server import RunningService
from loadwarden.server.app._config import MonitorSettings

# A latency-target operation: sizes 1-100, starting at 20, target 100 ms, +1 / x0.9.
INGEST = OperationSettings(
    name="ingest",
    min_batch_size=1,
    max_batch_size=100,
    default_batch_size=20,
    mode="latency_target",
    target_latency_ms=100.0,
)
# A threshold operation on the host's load; with the monitor off its load is unknown.
EXPORT = OperationSettings(name="export", min_batch_size=10, max_batch_size=500, default_batch_size=50)

TIMEOUT_S = 0.5


class SyncDriver:
    """Drives a sync Client from a worker thread, exposing coroutines."""

    def __init__(self, target: str, **options: Any) -> None:
        self.client = Client(target, **options)

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def batch_size(self, operation: str, **kw: Any) -> BatchSize:
        return await self.run(self.client.batch_size, operation, **kw)

    async def report_batch(self, operation: str, **kw: Any) -> int:
        return await self.run(self.client.report_batch, operation, **kw)

    async def report_batches(self, reports: Iterable[BatchReport]) -> int:
        return await self.run(self.client.report_batches, reports)

    async def load_status(self) -> LoadStatus:
        return await self.run(self.client.load_status)

    async def close(self) -> None:
        await self.run(self.client.close)


class AsyncDriver:
    def __init__(self, target: str, **options: Any) -> None:
        self.client = AsyncClient(target, **options)

    async def batch_size(self, operation: str, **kw: Any) -> BatchSize:
        return await self.client.batch_size(operation, **kw)

    async def report_batch(self, operation: str, **kw: Any) -> int:
        return await self.client.report_batch(operation, **kw)

    async def report_batches(self, reports: Iterable[BatchReport]) -> int:
        return await self.client.report_batches(reports)

    async def load_status(self) -> LoadStatus:
        return await self.client.load_status()

    async def close(self) -> None:
        await self.client.close()


Driver = SyncDriver | AsyncDriver


@pytest.fixture(params=["sync", "async"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Driver]]:
    drivers: list[Driver] = []

    def _connect(target: str, **options: Any) -> Driver:
        driver = (SyncDriver if request.param == "sync" else AsyncDriver)(target, timeout_s=TIMEOUT_S, **options)
        drivers.append(driver)
        return driver

    yield _connect
    for driver in drivers:
        await driver.close()


@pytest.fixture
async def service(start) -> RunningService:
    return await start(operations=(INGEST, EXPORT), monitor=MonitorSettings(enabled=False))


async def test_the_first_answer_is_the_configured_default(service: RunningService, connect) -> None:
    client = connect(service.target)

    ingest = await client.batch_size("ingest")
    export = await client.batch_size("export")

    assert (ingest.size, ingest.source, ingest.fallback) == (20, "service", False)
    assert ingest.decision_id
    # Latency-target sizing needs no load; with the monitor off the load is still unknown.
    assert (ingest.load_score, ingest.load_level) == (None, "unknown")
    # Threshold sizing does: the service answers the default and says it fell back.
    assert (export.size, export.source, export.fallback, export.load_level) == (50, "service", True, "unknown")
    assert "unknown" in export.reason


async def test_latency_target_grows_under_target_and_backs_off_on_a_breach(
    service: RunningService,
    connect,
) -> None:
    client = connect(service.target)
    first = await client.batch_size("ingest")

    applied = await client.report_batch(
        "ingest", batch_size=first.size, duration_ms=40.0, decision_id=first.decision_id
    )
    assert applied == 1
    grown = await client.batch_size("ingest")
    assert grown.size == first.size + 1

    await client.report_batch("ingest", batch_size=grown.size, duration_ms=250.0, decision_id=grown.decision_id)
    shrunk = await client.batch_size("ingest")
    assert shrunk.size == math.floor(grown.size * 0.9)

    await client.report_batch("ingest", batch_size=shrunk.size, duration_ms=10.0, success=False)
    assert (await client.batch_size("ingest")).size == math.floor(shrunk.size * 0.9)  # a failure is a breach too


async def test_load_status_shows_the_operation_and_its_adjustments(service: RunningService, connect) -> None:
    client = connect(service.target)
    await client.batch_size("ingest")
    await client.report_batch("ingest", batch_size=20, duration_ms=40.0)
    await client.batch_size("ingest")  # 20 -> 21
    await client.report_batch("ingest", batch_size=21, duration_ms=400.0)
    await client.batch_size("ingest")  # 21 -> 18

    status = await client.load_status()

    assert status.host is None  # the monitor is off
    assert [operation.name for operation in status.operations] == ["export", "ingest"]
    ingest = status.operations[1]
    assert (ingest.batch_size, ingest.mode, ingest.load_source) == (18, BatchMode.LATENCY_TARGET, LoadSource.HOST)
    assert (ingest.min_batch_size, ingest.max_batch_size, ingest.default_batch_size) == (1, 100, 20)
    assert (ingest.adjustments_total, ingest.decisions_total, ingest.fallback) == (2, 3, False)
    assert [(a.previous_size, a.new_size) for a in ingest.recent_adjustments] == [(20, 21), (21, 18)]
    assert ingest.recent_adjustments[0].at <= ingest.recent_adjustments[1].at <= status.generated_at
    assert "400 ms > target" in ingest.last_reason
    export = status.operations[0]
    assert (export.mode, export.batch_size, export.decisions_total) == (BatchMode.THRESHOLD, 50, 0)


async def test_load_status_shows_the_host_when_the_monitor_is_on(start, connect) -> None:
    running = await start(operations=(EXPORT,))
    client = connect(running.target)

    status = await client.load_status()

    assert status.host is not None
    assert status.host.stale or 0.0 <= status.host.load_score <= 100.0
    assert status.operations[0].load_source is LoadSource.HOST


async def test_an_unknown_operation_is_not_found_even_with_a_default(service: RunningService, connect) -> None:
    client = connect(service.target)

    with pytest.raises(NotFoundError, match="nope"):
        await client.batch_size("nope", default=10)
    with pytest.raises(InvalidArgumentError, match="operation"):
        await client.batch_size("bad name!", default=10)


async def test_bad_reports_are_refused_naming_the_field(service: RunningService, connect) -> None:
    client = connect(service.target)
    crafted = BatchReport("ingest", batch_size=5, duration_ms=1.0)
    # Past the SDK's own check, to see the service's answer to what that check prevents.
    object.__setattr__(crafted, "duration_ms", -1.0)

    with pytest.raises(InvalidArgumentError, match=r"reports\[0\]\.duration_ms"):
        await client.report_batches([crafted])
    with pytest.raises(InvalidArgumentError, match=r"reports\[0\]\.operation"):
        await client.report_batch("bad name!", batch_size=5, duration_ms=1.0)
    good = BatchReport("ingest", batch_size=5, duration_ms=1.0)
    with pytest.raises(NotFoundError, match=r"reports\[1\]\.operation"):
        await client.report_batches([good, BatchReport("nope", batch_size=5, duration_ms=1.0)])

    status = await client.load_status()
    assert status.operations[1].batch_size == 20  # validated whole: nothing was applied
    assert (await client.batch_size("ingest")).size == 20


async def test_a_stopped_service_answers_the_last_known_size_locally(start, connect) -> None:
    running = await start(operations=(INGEST, EXPORT), monitor=MonitorSettings(enabled=False))
    client = connect(running.target)
    await client.report_batch("ingest", batch_size=20, duration_ms=1.0)
    known = await client.batch_size("ingest")
    assert known.size == 21

    await running.stop(0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    local = await client.batch_size("ingest", default=5)
    elapsed = loop.time() - began

    assert (local.size, local.source, local.fallback, local.decision_id) == (21, "last_known", True, "")
    assert (local.load_score, local.load_level) == (None, "unknown")
    assert elapsed < TIMEOUT_S + 0.5  # bounded by the call's deadline
    default = await client.batch_size("export", default=7)
    assert (default.size, default.source, default.fallback) == (7, "default", True)
    with pytest.raises((UnavailableError, DeadlineExceededError)) as raised:
        await client.batch_size("export")
    assert is_transport_failure(raised.value)
