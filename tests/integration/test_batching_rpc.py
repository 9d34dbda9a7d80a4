"""GetBatchSize / ReportBatch / operation admin over a real grpc.aio server on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest

from loadwarden.policy._operations import OperationSettings
from loadwarden.server import PoolSettings, PoolSpec, RunningService, ServerSpec
from loadwarden.server.app._config import MonitorSettings
from loadwarden.v1 import admin_pb2 as admin
from loadwarden.v1 import admin_pb2_grpc as admin_grpc
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

OPERATIONS = (
    OperationSettings(
        name="import", min_batch_size=5, max_batch_size=100, default_batch_size=25, load_source="pool", pool="workers"
    ),
    OperationSettings(
        name="transcribe",
        min_batch_size=1,
        max_batch_size=50,
        default_batch_size=10,
        mode="latency_target",
        target_latency_ms=200.0,
        additive_step=2,
    ),
)


async def wait_until(condition, timeout_s: float = 10.0, step_s: float = 0.02):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await condition()
        if value:
            return value
        assert loop.time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(step_s)


@pytest.fixture
async def service(start) -> RunningService:
    workers = PoolSpec(PoolSettings(name="workers"), (ServerSpec("w1", "h:1"), ServerSpec("w2", "h:2")))
    return await start(workers, operations=OPERATIONS, monitor=MonitorSettings(enabled=False))


@pytest.fixture
def stubs(service: RunningService, channel_to):
    channel = channel_to(service)
    return pb_grpc.DecisionServiceStub(channel), admin_grpc.AdminServiceStub(channel)


def report(server: str, cpu: float, memory: float) -> common.LoadReport:
    return common.LoadReport(pool="workers", server_id=server, cpu_percent=cpu, memory_percent=memory)


async def test_pool_load_drives_the_batch_size(stubs) -> None:
    decision, _ = stubs
    first = await decision.GetBatchSize(pb.GetBatchSizeRequest(operation="import"))
    assert first.batch_size == 25 and first.fallback and first.load_level == common.LOAD_LEVEL_UNKNOWN
    assert "no server of pool 'workers' reported" in first.reason and first.decision_id
    await decision.ReportLoad(pb.ReportLoadRequest(reports=[report("w1", 20, 10), report("w2", 30, 20)]))
    low = await decision.GetBatchSize(pb.GetBatchSizeRequest(operation="import"))
    assert low.batch_size == 100 and low.load_level == common.LOAD_LEVEL_LOW and not low.fallback
    await decision.ReportLoad(pb.ReportLoadRequest(reports=[report("w1", 97, 90), report("w2", 92, 85)]))
    high = await decision.GetBatchSize(pb.GetBatchSizeRequest(operation="import"))
    assert high.batch_size == 5 and high.load_level == common.LOAD_LEVEL_HIGH and high.load_score > 80
    status = (await decision.GetLoadStatus(pb.GetLoadStatusRequest())).status
    op = next(o for o in status.operations if o.name == "import")
    assert op.batch_size == 5 and op.adjustments_total == 2 and op.load_source == common.LOAD_SOURCE_POOL
    assert [(a.previous_size, a.new_size) for a in op.recent_adjustments] == [(25, 100), (100, 5)]
    assert not status.HasField("host")  # the host monitor is off in this service


async def test_latency_target_learns_from_report_batch(stubs) -> None:
    decision, _ = stubs
    assert (await decision.GetBatchSize(pb.GetBatchSizeRequest(operation="transcribe"))).batch_size == 10
    under = [pb.BatchReport(operation="transcribe", batch_size=10, duration_ms=150, success=True)] * 3
    assert (await decision.ReportBatch(pb.ReportBatchRequest(reports=under))).applied == 3
    grown = await decision.GetBatchSize(pb.GetBatchSizeRequest(operation="transcribe"))
    assert grown.batch_size == 16 and not grown.fallback
    breach = pb.BatchReport(operation="transcribe", batch_size=16, duration_ms=500, success=True)
    await decision.ReportBatch(pb.ReportBatchRequest(reports=[breach]))
    assert (await decision.GetBatchSize(pb.GetBatchSizeRequest(operation="transcribe"))).batch_size == 14


async def test_operation_admin(stubs) -> None:
    decision, admin_stub = stubs
    config = common.OperationConfig(
        name="sync",
        min_batch_size=2,
        max_batch_size=20,
        default_batch_size=4,
        cooldown_ms=1000,
        load_source=common.LOAD_SOURCE_POOL,
        pool="workers",
    )
    created = await admin_stub.ConfigureOperation(admin.ConfigureOperationRequest(operation=config))
    assert (
        created.created and created.operation.batch_size == 4 and created.operation.mode == common.BATCH_MODE_THRESHOLD
    )
    again = await admin_stub.ConfigureOperation(admin.ConfigureOperationRequest(operation=config))
    assert not again.created
    await admin_stub.DeleteOperation(admin.DeleteOperationRequest(operation="sync"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await decision.GetBatchSize(pb.GetBatchSizeRequest(operation="sync"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and (err.value.details() or "").startswith("operation:")


BAD = grpc.StatusCode.INVALID_ARGUMENT
MISSING = grpc.StatusCode.NOT_FOUND
D, A = "decision", "admin"
CASES = [
    (D, "GetBatchSize", pb.GetBatchSizeRequest(operation=""), BAD, "operation"),
    (D, "GetBatchSize", pb.GetBatchSizeRequest(operation="unknown"), MISSING, "operation"),
    (D, "ReportBatch", pb.ReportBatchRequest(), BAD, "reports"),
    (
        D,
        "ReportBatch",
        pb.ReportBatchRequest(reports=[pb.BatchReport(operation="transcribe", batch_size=5, duration_ms=-1)]),
        BAD,
        "reports[0].duration_ms",
    ),
    (
        D,
        "ReportBatch",
        pb.ReportBatchRequest(reports=[pb.BatchReport(operation="transcribe", batch_size=5, duration_ms=float("nan"))]),
        BAD,
        "reports[0].duration_ms",
    ),
    (
        D,
        "ReportBatch",
        pb.ReportBatchRequest(reports=[pb.BatchReport(operation="transcribe", batch_size=0)]),
        BAD,
        "reports[0].batch_size",
    ),
    (
        D,
        "ReportBatch",
        pb.ReportBatchRequest(reports=[pb.BatchReport(operation="nope", batch_size=1)]),
        MISSING,
        "reports[0].operation",
    ),
    (
        A,
        "ConfigureOperation",
        admin.ConfigureOperationRequest(
            operation=common.OperationConfig(name="x", min_batch_size=50, max_batch_size=10)
        ),
        BAD,
        "operation.min_batch_size",
    ),
    (
        A,
        "ConfigureOperation",
        admin.ConfigureOperationRequest(
            operation=common.OperationConfig(name="x", min_batch_size=5, max_batch_size=10, default_batch_size=20)
        ),
        BAD,
        "operation.default_batch_size",
    ),
    (
        A,
        "ConfigureOperation",
        admin.ConfigureOperationRequest(
            operation=common.OperationConfig(name="x", low_threshold_percent=90, high_threshold_percent=60)
        ),
        BAD,
        "operation.high_threshold_percent",
    ),
    (
        A,
        "ConfigureOperation",
        admin.ConfigureOperationRequest(operation=common.OperationConfig(name="x", high_threshold_percent=150)),
        BAD,
        "operation.high_threshold_percent",
    ),
    (
        A,
        "ConfigureOperation",
        admin.ConfigureOperationRequest(
            operation=common.OperationConfig(name="x", mode=common.BATCH_MODE_LATENCY_TARGET)
        ),
        BAD,
        "operation.target_latency_ms",
    ),
    (
        A,
        "ConfigureOperation",
        admin.ConfigureOperationRequest(operation=common.OperationConfig(name="x", target_latency_ms=-5)),
        BAD,
        "operation.target_latency_ms",
    ),
    (
        A,
        "ConfigureOperation",
        admin.ConfigureOperationRequest(
            operation=common.OperationConfig(name="x", load_source=common.LOAD_SOURCE_POOL)
        ),
        BAD,
        "operation.pool",
    ),
    (
        A,
        "ConfigureOperation",
        admin.ConfigureOperationRequest(operation=common.OperationConfig(name="")),
        BAD,
        "operation.name",
    ),
    (A, "DeleteOperation", admin.DeleteOperationRequest(operation="nope"), MISSING, "operation"),
]


@pytest.mark.parametrize(
    ("stub_name", "method", "request_", "code", "field"),
    CASES,
    ids=[f"{m}-{f}-{i}" for i, (_, m, _, _, f) in enumerate(CASES)],
)
async def test_bad_batch_input_names_the_field(stubs, stub_name, method, request_, code, field) -> None:
    decision, admin_stub = stubs
    stub = decision if stub_name == D else admin_stub
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(stub, method)(request_)
    assert err.value.code() == code and (err.value.details() or "").startswith(f"{field}: "), err.value.details()
    assert (await decision.GetBatchSize(pb.GetBatchSizeRequest(operation="transcribe"))).batch_size >= 1


@pytest.fixture
def cpu_burners() -> Iterator[list[subprocess.Popen[str]]]:
    burners: list[subprocess.Popen[str]] = []
    yield burners
    for proc in burners:
        proc.kill()
        proc.wait(10)


BURN = "import time; print('burning', flush=True); end = time.monotonic() + 60\nwhile time.monotonic() < end: pass"


@pytest.mark.serial  # other tests' processes would keep the host above the threshold
async def test_host_cpu_burner_shrinks_the_batch_and_it_grows_back_after_cooldown(
    start,
    channel_to,
    cpu_burners,
) -> None:
    # High threshold 90: two burners on two cores read ~100 %, while the test need not own an idle machine.
    host_op = OperationSettings(
        name="host",
        min_batch_size=5,
        max_batch_size=100,
        default_batch_size=25,
        low_threshold_percent=60,
        high_threshold_percent=90,
        cooldown_ms=1_000,
    )
    # CPU only in the score, so the test reads the burner and not the machine's memory.
    monitor = MonitorSettings(interval_ms=250, cpu_weight=1.0, memory_weight=0.0, load_average_weight=0.0)
    running = await start(operations=(host_op,), monitor=monitor)
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    host = running.core.monitor
    assert host is not None

    async def size() -> int:
        return (await stub.GetBatchSize(pb.GetBatchSizeRequest(operation="host"))).batch_size

    await wait_until(lambda: _true_if(size, lambda s: s > 5), timeout_s=30)  # below the high threshold
    operation = running.core.operations["host"]

    async def cooled_down() -> bool:  # so the cooldown cannot be what delays the shrink
        return operation.last_change is None or running.core.clock.monotonic() - operation.last_change >= 1.0

    await wait_until(cooled_down)
    for _ in range(2):  # one per core
        proc = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
        cpu_burners.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "burning"
    samples_at_start = host.samples_total
    before = operation.size
    await wait_until(lambda: _true_if(size, lambda s: s < before))
    # Within two polling intervals: at most two samples after the burners started. (A sample
    # that straddles the start may read a middling load and shrink part way; the cooldown then
    # holds that size before the next step, as it should.)
    assert host.samples_total - samples_at_start <= 2, host.samples_total - samples_at_start
    await wait_until(lambda: _true_if(size, lambda s: s == 5))
    status = (await stub.GetLoadStatus(pb.GetLoadStatusRequest())).status
    assert status.host.cpu_percent > 80 and not status.host.stale
    for proc in cpu_burners:
        proc.kill()
    await wait_until(lambda: _true_if(size, lambda s: s > 5), timeout_s=30)
    op = next(o for o in (await stub.GetLoadStatus(pb.GetLoadStatusRequest())).status.operations if o.name == "host")
    shrink, grow = op.recent_adjustments[-2], op.recent_adjustments[-1]
    assert shrink.new_size == 5 and grow.previous_size == 5 and grow.new_size > 5
    gap_ms = (grow.at.ToNanoseconds() - shrink.at.ToNanoseconds()) / 1e6
    assert gap_ms >= 1_000  # the cooldown held the small size at least this long


async def _true_if(fetch, predicate):
    return predicate(await fetch())


async def test_monitor_weights_score_pool_reports_with_the_host_sampler_off(start, channel_to) -> None:
    workers = PoolSpec(PoolSettings(name="workers"), (ServerSpec("w1", "h:1"),))
    # CPU only: a report of 100 % CPU and 0 % memory scores 100, not the default weights' 75.
    monitor = MonitorSettings(enabled=False, cpu_weight=1.0, memory_weight=0.0, load_average_weight=0.0)
    running = await start(workers, operations=OPERATIONS, monitor=monitor)
    decision = pb_grpc.DecisionServiceStub(channel_to(running))
    await decision.ReportLoad(pb.ReportLoadRequest(reports=[report("w1", 100.0, 0.0)]))
    reading = running.core.load_reading(OPERATIONS[0], running.core.clock.monotonic())
    assert reading.score == 100.0 and running.core.monitor is None
