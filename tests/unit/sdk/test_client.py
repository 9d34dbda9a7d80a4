"""Client over a fake channel: the caller's path, deadlines, typed errors, lifecycle."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import grpc.aio
import pytest

from loadwarden.sdk import Client, LoadReport, NotFoundError, ResourceExhaustedError, Selection
from loadwarden.v1 import decision_pb2 as _pb

# Outcomes wait for a flush: with this interval nothing is sent by itself during a test.
NEVER_S = 3600.0


@pytest.fixture
def client(fake_channel) -> Iterator[Client]:
    client = Client(channel=fake_channel, timeout_s=0.5, outcome_flush_interval_s=NEVER_S, retry=None)
    yield client
    client.close()


def sent_outcomes(channel) -> list[_pb.Outcome]:
    return [outcome for call in channel.calls if call.method == "ReportOutcome" for outcome in call.request.outcomes]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"target": ""}, "target"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": -1.0}, "timeout_s"),
        ({"timeout_s": float("inf")}, "timeout_s"),
        ({"outcome_batch_size": 0}, "outcome_batch_size"),
        ({"outcome_batch_size": 1.5}, "outcome_batch_size"),
        ({"outcome_flush_interval_s": 0.0}, "outcome_flush_interval_s"),
        ({"outcome_buffer_size": 0}, "outcome_buffer_size"),
        ({"outcome_buffer_size": 10, "outcome_batch_size": 20}, "outcome_buffer_size"),
    ],
)
def test_invalid_arguments_are_refused_by_name(kwargs: dict, name: str, fake_channel) -> None:
    with pytest.raises(ValueError, match=name):
        Client(channel=fake_channel, **kwargs)


def test_route_makes_one_call_and_queues_a_success(client: Client, fake_channel) -> None:
    with client.route("api", exclude=["s9"]) as route:
        assert (route.server_id, route.address) == ("s1", "10.0.0.1:80")
        assert route.selection.decision_id == "d-1"

    assert fake_channel.methods() == ["SelectServer"]
    assert fake_channel.calls[0].request == _pb.SelectServerRequest(pool="api", exclude_server_ids=["s9"])
    assert client.outcome_stats().pending == 1

    assert client.flush_outcomes() is True
    [outcome] = sent_outcomes(fake_channel)
    assert (outcome.decision_id, outcome.success, outcome.status) == ("d-1", True, "")
    assert outcome.latency_ms >= 0.0


def test_route_reports_an_escaping_exception_as_a_failure_and_reraises_it(client: Client, fake_channel) -> None:
    error = KeyError("boom")

    with pytest.raises(KeyError) as raised, client.route("api"):
        raise error

    assert raised.value is error
    assert fake_channel.methods() == ["SelectServer"]
    client.flush_outcomes()
    [outcome] = sent_outcomes(fake_channel)
    assert (outcome.success, outcome.status) == (False, "KeyError")


def test_route_fail_reports_a_failure_without_raising(client: Client, fake_channel) -> None:
    with client.route("api") as route:
        route.fail("503")

    client.flush_outcomes()
    [outcome] = sent_outcomes(fake_channel)
    assert (outcome.success, outcome.status) == (False, "503")


def test_route_reports_nothing_when_selection_fails(client: Client, fake_channel) -> None:
    fake_channel.answers["SelectServer"] = grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, details="pool 'api'")

    with pytest.raises(NotFoundError), client.route("api"):
        pytest.fail("the block must not run")

    assert client.outcome_stats().pending == 0


def test_report_outcome_makes_no_call(client: Client, fake_channel) -> None:
    client.report_outcome("d-7", success=False, latency_ms=12.5, status="timeout")

    assert fake_channel.calls == []
    client.flush_outcomes()
    expected = _pb.Outcome(decision_id="d-7", success=False, latency_ms=12.5, status="timeout")
    assert sent_outcomes(fake_channel) == [expected]


def test_select_uses_the_client_deadline_or_the_call_one(client: Client, fake_channel) -> None:
    assert client.select("api") == Selection("d-1", "s1", "10.0.0.1:80", "round_robin", explored=False)
    client.select("api", timeout_s=0.1)

    assert [call.timeout for call in fake_channel.calls] == [0.5, 0.1]
    with pytest.raises(ValueError, match="timeout_s"):
        client.select("api", timeout_s=0)


def test_a_failed_call_raises_the_typed_error_from_the_grpc_one(client: Client, fake_channel) -> None:
    rpc_error = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("loadwarden-retry-after-ms", "300")),
        details="queue full",
    )
    fake_channel.answers["SelectServer"] = rpc_error

    with pytest.raises(ResourceExhaustedError) as raised:
        client.select("api")

    assert raised.value.retry_after_s == 0.3
    assert raised.value.__cause__ is rpc_error


def test_report_loads(client: Client, fake_channel) -> None:
    assert client.report_loads([]) == 0
    assert fake_channel.calls == []

    applied = client.report_load("api", "s1", cpu_percent=40.0, memory_percent=50.0, active_requests=3)

    assert applied == 1
    [report] = fake_channel.calls[0].request.reports
    assert (report.pool, report.server_id, report.cpu_percent, report.active_requests) == ("api", "s1", 40.0, 3)
    assert client.report_loads([LoadReport("api", "s1"), LoadReport("api", "s2")]) == 2


def test_load_status_asks_for_one_pool_or_all(client: Client, fake_channel) -> None:
    client.load_status()
    client.load_status("api")

    assert [call.request.pool for call in fake_channel.calls] == ["", "api"]


def test_close_sends_queued_outcomes_and_leaves_a_given_channel_open(fake_channel) -> None:
    with Client(channel=fake_channel, outcome_flush_interval_s=NEVER_S, retry=None) as client:
        client.report_outcome("d-1", success=True, latency_ms=1.0)

    assert len(sent_outcomes(fake_channel)) == 1
    assert not fake_channel.closed
    client.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        client.select("api")


def test_close_closes_the_channel_the_client_opened(monkeypatch, fake_channel) -> None:
    monkeypatch.setattr(grpc, "insecure_channel", lambda target, options=(): fake_channel)

    Client("127.0.0.1:7777").close()

    assert fake_channel.closed


def test_outcomes_after_close_are_dropped_and_counted(client: Client) -> None:
    client.close()

    client.report_outcome("d-1", success=True, latency_ms=1.0)

    assert client.outcome_stats().dropped == 1
