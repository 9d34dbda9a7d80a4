"""batch_size / report_batch over a fake channel: local answers only when the service is unreachable."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator

import grpc
import grpc.aio
import pytest

from loadwarden.sdk import (
    AsyncClient,
    BatchReport,
    BatchSize,
    Client,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from loadwarden.sdk._batching import MAX_KNOWN_OPERATIONS, LastKnownSizes
from loadwarden.sdk._errors import UNAVAILABLE_REASON_METADATA_KEY
from loadwarden.v1 import common_pb2 as _common
from loadwarden.v1 import decision_pb2 as _pb

from .conftest import DEFAULT_BATCH_SIZE

NEVER_S = 3600.0


def unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, details="failed to connect to all addresses")


def deadline_exceeded() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, details="Deadline Exceeded")


def not_found() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, details="operation: no operation named 'import'")


def invalid_argument() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, details="operation: must match [A-Za-z0-9._:@/-]")


def service_unavailable() -> grpc.aio.AioRpcError:
    # UNAVAILABLE decided by the service itself: an answer, not a transport failure.
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((UNAVAILABLE_REASON_METADATA_KEY, "draining")),
        details="the service is draining",
    )


@pytest.fixture
def client(fake_channel) -> Iterator[Client]:
    client = Client(channel=fake_channel, timeout_s=0.5, outcome_flush_interval_s=NEVER_S, retry=None)
    yield client
    client.close()


@pytest.fixture
async def aclient(fake_aio_channel) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(channel=fake_aio_channel, timeout_s=0.5, outcome_flush_interval_s=NEVER_S, retry=None)
    yield client
    await client.close()


# --- batch_size, sync ----------------------------------------------------------------------------


def test_batch_size_is_the_services_answer(client: Client, fake_channel) -> None:
    answer = client.batch_size("import", timeout_s=0.25)

    assert answer == BatchSize(
        size=DEFAULT_BATCH_SIZE,
        load_score=30.0,
        load_level="low",
        reason="load 30.0 <= low threshold 50.0",
        fallback=False,
        decision_id="d-1",
        source="service",
    )
    [call] = fake_channel.calls
    assert (call.method, call.request, call.timeout) == (
        "GetBatchSize",
        _pb.GetBatchSizeRequest(operation="import"),
        0.25,
    )


@pytest.mark.parametrize("failure", [unavailable, deadline_exceeded])
def test_unreachable_service_answers_the_last_known_size(client: Client, fake_channel, failure) -> None:
    fake_channel.answers["GetBatchSize"] = _pb.GetBatchSizeResponse(decision_id="d-7", batch_size=40)
    client.batch_size("import")
    fake_channel.answers["GetBatchSize"] = failure()

    answer = client.batch_size("import", default=5)

    assert answer.size == 40  # the last known size wins over the default
    assert (answer.source, answer.fallback, answer.decision_id) == ("last_known", True, "")
    assert (answer.load_score, answer.load_level) == (None, "unknown")
    assert "service unreachable" in answer.reason


def test_unreachable_service_answers_the_default_when_nothing_is_known(client: Client, fake_channel) -> None:
    client.batch_size("other")  # known sizes are per operation
    fake_channel.answers["GetBatchSize"] = unavailable()

    answer = client.batch_size("import", default=25)

    assert (answer.size, answer.source, answer.fallback, answer.decision_id) == (25, "default", True, "")


@pytest.mark.parametrize(
    ("failure", "error"), [(unavailable, UnavailableError), (deadline_exceeded, DeadlineExceededError)]
)
def test_unreachable_service_reraises_without_a_known_size_or_default(
    client: Client, fake_channel, failure, error
) -> None:
    fake_channel.answers["GetBatchSize"] = failure()

    with pytest.raises(error) as raised:
        client.batch_size("import")

    assert isinstance(raised.value.__cause__, grpc.RpcError)


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (not_found, NotFoundError),
        (invalid_argument, InvalidArgumentError),
        (service_unavailable, UnavailableError),
    ],
)
def test_business_errors_never_fall_back(client: Client, fake_channel, failure, error) -> None:
    client.batch_size("import")  # a known size exists
    fake_channel.answers["GetBatchSize"] = failure()

    with pytest.raises(error):
        client.batch_size("import", default=10)


def test_a_local_answer_does_not_replace_the_last_known_size(client: Client, fake_channel) -> None:
    fake_channel.answers["GetBatchSize"] = _pb.GetBatchSizeResponse(batch_size=40)
    client.batch_size("import")
    fake_channel.answers["GetBatchSize"] = unavailable()
    client.batch_size("import", default=5)

    assert client.batch_size("import").size == 40


def test_the_services_fallback_is_reported_and_remembered(client: Client, fake_channel) -> None:
    # The service answered its default because the load is unknown: still a service answer.
    fake_channel.answers["GetBatchSize"] = _pb.GetBatchSizeResponse(
        decision_id="d-1",
        batch_size=10,
        load_score=0.0,
        load_level=_common.LOAD_LEVEL_UNKNOWN,
        reason="load unknown",
        fallback=True,
    )
    answer = client.batch_size("import")
    assert (answer.source, answer.fallback, answer.load_score) == ("service", True, None)
    assert answer.load_level == "unknown"

    fake_channel.answers["GetBatchSize"] = unavailable()
    assert client.batch_size("import").size == 10


@pytest.mark.parametrize("default", [0, -1, 1.5, True, "10", 1_000_001])
def test_a_bad_default_is_refused_by_name_before_any_call(client: Client, fake_channel, default) -> None:
    with pytest.raises(ValueError, match="default"):
        client.batch_size("import", default=default)
    assert fake_channel.calls == []


def test_known_sizes_are_bounded(client: Client, fake_channel) -> None:
    for i in range(MAX_KNOWN_OPERATIONS + 1):
        client.batch_size(f"op-{i}")

    assert len(client._batch_sizes) == MAX_KNOWN_OPERATIONS
    fake_channel.answers["GetBatchSize"] = unavailable()
    with pytest.raises(UnavailableError):
        client.batch_size("op-0")  # the least recently used was forgotten
    assert client.batch_size(f"op-{MAX_KNOWN_OPERATIONS}").source == "last_known"


def test_last_known_sizes_forget_the_least_recently_used() -> None:
    sizes = LastKnownSizes(capacity=2)
    err = UnavailableError("down")
    for name, size in (("a", 1), ("b", 2)):
        sizes.remember(name, BatchSize(size, None, "unknown", "", False, "", "service"))
    assert sizes.local_answer("a", None, err) is not None  # a is now the most recently used
    sizes.remember("c", BatchSize(3, None, "unknown", "", False, "", "service"))

    assert sizes.local_answer("b", None, err) is None
    a, c = (sizes.local_answer(name, None, err) for name in ("a", "c"))
    assert a is not None and c is not None
    assert (a.size, c.size) == (1, 3)


# --- report_batch, sync --------------------------------------------------------------------------


def test_report_batch_makes_one_call(client: Client, fake_channel) -> None:
    applied = client.report_batch(
        "import", batch_size=40, duration_ms=123.5, success=False, decision_id="d-1", timeout_s=0.25
    )

    assert applied == 1
    [call] = fake_channel.calls
    assert (call.method, call.timeout) == ("ReportBatch", 0.25)
    assert call.request == _pb.ReportBatchRequest(
        reports=[
            _pb.BatchReport(operation="import", decision_id="d-1", batch_size=40, duration_ms=123.5, success=False)
        ]
    )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -3}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"batch_size": 1_000_001}, "batch_size"),
        ({"duration_ms": -1.0}, "duration_ms"),
        ({"duration_ms": math.nan}, "duration_ms"),
        ({"duration_ms": math.inf}, "duration_ms"),
        ({"duration_ms": 86_400_001}, "duration_ms"),
        ({"duration_ms": "12"}, "duration_ms"),
        ({"operation": ""}, "operation"),
        ({"decision_id": None}, "decision_id"),
    ],
)
def test_report_batch_refuses_bad_arguments_by_name(client: Client, fake_channel, kwargs: dict, name: str) -> None:
    fields = {"operation": "import", "batch_size": 10, "duration_ms": 5.0} | kwargs
    operation = fields.pop("operation")

    with pytest.raises(ValueError, match=rf"^{name} "):
        client.report_batch(operation, **fields)
    assert fake_channel.calls == []


def test_report_batches_sends_them_in_one_call(client: Client, fake_channel) -> None:
    reports = [BatchReport("import", batch_size=n, duration_ms=float(n)) for n in (1, 2, 3)]

    assert client.report_batches(iter(reports)) == 3
    [call] = fake_channel.calls
    assert [report.batch_size for report in call.request.reports] == [1, 2, 3]
    assert all(report.success for report in call.request.reports)


def test_report_batches_of_nothing_makes_no_call(client: Client, fake_channel) -> None:
    assert client.report_batches([]) == 0
    assert fake_channel.calls == []


def test_report_batches_refuses_more_than_one_batch(client: Client, fake_channel) -> None:
    with pytest.raises(ValueError, match="reports"):
        client.report_batches([BatchReport("import", batch_size=1, duration_ms=1.0)] * 1001)
    assert fake_channel.calls == []


def test_report_batches_refuses_a_single_report(client: Client) -> None:
    with pytest.raises(TypeError, match="reports"):
        client.report_batches(BatchReport("import", batch_size=1, duration_ms=1.0))  # type: ignore[arg-type]  # not a list, on purpose


def test_report_batch_errors_are_typed(client: Client, fake_channel) -> None:
    fake_channel.answers["ReportBatch"] = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND, details="reports[0].operation: no operation named 'import'"
    )

    with pytest.raises(NotFoundError, match=r"reports\[0\]\.operation"):
        client.report_batch("import", batch_size=1, duration_ms=1.0)


# --- the same through AsyncClient ------------------------------------------------------------------


async def test_async_batch_size_is_the_services_answer(aclient: AsyncClient, fake_aio_channel) -> None:
    answer = await aclient.batch_size("import")

    assert (answer.size, answer.source, answer.decision_id, answer.load_level) == (
        DEFAULT_BATCH_SIZE,
        "service",
        "d-1",
        "low",
    )
    assert fake_aio_channel.methods() == ["GetBatchSize"]


async def test_async_unreachable_service_answers_last_known_then_default_then_raises(
    aclient: AsyncClient, fake_aio_channel
) -> None:
    await aclient.batch_size("import")
    fake_aio_channel.answers["GetBatchSize"] = unavailable()

    known = await aclient.batch_size("import")
    assert (known.size, known.source, known.fallback) == (DEFAULT_BATCH_SIZE, "last_known", True)
    default = await aclient.batch_size("export", default=7)
    assert (default.size, default.source, default.fallback) == (7, "default", True)
    with pytest.raises(UnavailableError):
        await aclient.batch_size("export")


async def test_async_not_found_never_falls_back(aclient: AsyncClient, fake_aio_channel) -> None:
    await aclient.batch_size("import")
    fake_aio_channel.answers["GetBatchSize"] = not_found()

    with pytest.raises(NotFoundError):
        await aclient.batch_size("import", default=10)


async def test_async_report_batch_and_validation(aclient: AsyncClient, fake_aio_channel) -> None:
    assert await aclient.report_batch("import", batch_size=3, duration_ms=9.0, decision_id="d-1") == 1
    assert await aclient.report_batches([]) == 0
    with pytest.raises(ValueError, match="duration_ms"):
        await aclient.report_batch("import", batch_size=3, duration_ms=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        await aclient.report_batch("import", batch_size=0, duration_ms=1.0)

    [call] = fake_aio_channel.calls
    assert call.request.reports[0] == _pb.BatchReport(
        operation="import", decision_id="d-1", batch_size=3, duration_ms=9.0, success=True
    )
