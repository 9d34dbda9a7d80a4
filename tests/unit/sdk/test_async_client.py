"""AsyncClient over a fake grpc.aio channel: the same behaviour as Client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from loadwarden.sdk import AsyncClient, LoadReport, UnavailableError
from loadwarden.v1 import decision_pb2 as _pb

NEVER_S = 3600.0


@pytest.fixture
async def client(fake_aio_channel) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(channel=fake_aio_channel, timeout_s=0.5, outcome_flush_interval_s=NEVER_S, retry=None)
    yield client
    await client.close()


def sent_outcomes(channel) -> list[_pb.Outcome]:
    return [outcome for call in channel.calls if call.method == "ReportOutcome" for outcome in call.request.outcomes]


def test_invalid_arguments_are_refused_by_name(fake_aio_channel) -> None:
    with pytest.raises(ValueError, match="outcome_flush_interval_s"):
        AsyncClient(channel=fake_aio_channel, outcome_flush_interval_s=-1)


async def test_route_makes_one_call_and_queues_a_success(client: AsyncClient, fake_aio_channel) -> None:
    async with client.route("api") as route:
        assert route.server_id == "s1"

    assert fake_aio_channel.methods() == ["SelectServer"]
    assert await client.flush_outcomes() is True
    [outcome] = sent_outcomes(fake_aio_channel)
    assert (outcome.decision_id, outcome.success) == ("d-1", True)


async def test_route_reports_an_escaping_exception_as_a_failure_and_reraises_it(
    client: AsyncClient, fake_aio_channel
) -> None:
    error = ConnectionResetError("peer")

    with pytest.raises(ConnectionResetError) as raised:
        async with client.route("api"):
            raise error

    assert raised.value is error
    assert fake_aio_channel.methods() == ["SelectServer"]
    await client.flush_outcomes()
    [outcome] = sent_outcomes(fake_aio_channel)
    assert (outcome.success, outcome.status) == (False, "ConnectionResetError")


async def test_route_fail_reports_a_failure_without_raising(client: AsyncClient, fake_aio_channel) -> None:
    async with client.route("api") as route:
        route.fail()

    await client.flush_outcomes()
    [outcome] = sent_outcomes(fake_aio_channel)
    assert (outcome.success, outcome.status) == (False, "")


async def test_a_failed_call_raises_the_typed_error(client: AsyncClient, fake_aio_channel) -> None:
    rpc_error = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, details="no eligible server in pool 'api'")
    fake_aio_channel.answers["SelectServer"] = rpc_error

    with pytest.raises(UnavailableError) as raised:
        await client.select("api", timeout_s=0.2)

    assert raised.value.__cause__ is rpc_error
    assert fake_aio_channel.calls[0].timeout == 0.2


async def test_report_loads_and_load_status(client: AsyncClient, fake_aio_channel) -> None:
    assert await client.report_loads([]) == 0
    assert await client.report_loads([LoadReport("api", "s1"), LoadReport("api", "s2")]) == 2
    assert await client.report_load("api", "s1", cpu_percent=1.0, memory_percent=2.0) == 1
    status = await client.load_status("api")

    assert status.pools == ()
    assert fake_aio_channel.methods() == ["ReportLoad", "ReportLoad", "GetLoadStatus"]
    assert [call.timeout for call in fake_aio_channel.calls] == [0.5, 0.5, 0.5]


async def test_close_sends_queued_outcomes_and_leaves_a_given_channel_open(fake_aio_channel) -> None:
    async with AsyncClient(channel=fake_aio_channel, outcome_flush_interval_s=NEVER_S, retry=None) as client:
        client.report_outcome("d-1", success=True, latency_ms=1.0)
        assert fake_aio_channel.calls == []

    assert len(sent_outcomes(fake_aio_channel)) == 1
    assert not fake_aio_channel.closed


async def test_the_owned_channel_opens_on_first_call_and_closes_with_the_client(monkeypatch, fake_aio_channel) -> None:
    opened: list[str] = []

    def insecure_channel(target: str, options: object = ()):
        opened.append(target)
        return fake_aio_channel

    monkeypatch.setattr(grpc.aio, "insecure_channel", insecure_channel)
    client = AsyncClient("127.0.0.1:7777")
    assert opened == []

    await client.select("api")
    await client.close()

    assert opened == ["127.0.0.1:7777"]
    assert fake_aio_channel.closed
