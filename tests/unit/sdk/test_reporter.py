"""BackendReporter over a fake channel: tracking, the report it builds, failures that never raise.

Request latency comes from a fake perf counter and the host sample from a fake
sampler, so every figure is asserted exactly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

import grpc
import grpc.aio
import pytest

from loadwarden.sdk import AsyncClient, Client, LoadReport, UnavailableError
from loadwarden.sdk._reporter import BackendReporter, PsutilSampler, ReporterStats
from loadwarden.v1 import decision_pb2 as _pb

from .conftest import FakeChannel, FakeClock, as_channel

NEVER_S = 3600.0
NO_RESILIENCE: dict = {"breaker": None, "retry": None}
DEADLINE_S = 5.0


class Boom(Exception):
    pass


class FakeSampler:
    def __init__(self, cpu: float = 12.5, memory: float = 40.0) -> None:
        self.sample: tuple[float, float] | Exception = (cpu, memory)
        self.calls = 0

    def __call__(self) -> tuple[float, float]:
        self.calls += 1
        if isinstance(self.sample, Exception):
            raise self.sample
        return self.sample


@pytest.fixture
def client(fake_channel: FakeChannel) -> Iterator[Client]:
    # No client retries or breaker: each push is one call, so every failure is the reporter's to count.
    client = Client(channel=as_channel(fake_channel), timeout_s=0.5, outcome_flush_interval_s=NEVER_S, **NO_RESILIENCE)
    yield client
    client.close()


@pytest.fixture
def sampler() -> FakeSampler:
    return FakeSampler()


@pytest.fixture
def reporter(client: Client, sampler: FakeSampler, fake_clock: FakeClock) -> BackendReporter:
    return BackendReporter(
        client, "api", "s1", interval_s=NEVER_S, latency_ewma_weight=0.5, error_ewma_weight=0.25,
        sampler=sampler, clock=fake_clock, perf_counter=fake_clock,
    )  # fmt: skip


def pushed(channel: FakeChannel) -> list[_pb.ReportLoadRequest]:
    return channel.requests("ReportLoad", _pb.ReportLoadRequest)


def unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, details="connection refused")


def test_track_counts_in_flight_and_folds_latency_and_failures(reporter, fake_clock) -> None:
    assert reporter.current_report().active_requests == 0
    with reporter.track():
        with reporter.track():
            assert reporter.current_report().active_requests == 2
            fake_clock.advance(0.100)
        # The first finished request seeds both EWMAs.
        report = reporter.current_report()
        assert (report.active_requests, report.mean_latency_ms, report.error_rate) == (1, pytest.approx(100.0), 0.0)
        fake_clock.advance(0.200)  # the outer one ran 300 ms in all
    report = reporter.current_report()
    assert report.mean_latency_ms == pytest.approx(100 + 0.5 * (300 - 100))
    assert report.error_rate == 0.0

    with pytest.raises(Boom), reporter.track():
        fake_clock.advance(0.040)
        raise Boom()
    report = reporter.current_report()
    assert report.active_requests == 0
    assert report.mean_latency_ms == pytest.approx(200 + 0.5 * (40 - 200))
    assert report.error_rate == pytest.approx(0.25)

    with reporter.track() as request:
        request.fail()  # e.g. answered 503 without raising
    assert reporter.current_report().error_rate == pytest.approx(0.25 + 0.25 * (1 - 0.25))


def test_first_finished_request_that_fails_seeds_the_error_rate(reporter) -> None:
    with pytest.raises(Boom), reporter.track():
        raise Boom()
    assert reporter.current_report().error_rate == 1.0


def test_decorator_tracks_sync_functions(reporter, fake_clock) -> None:
    @reporter.tracked
    def handle(x: int, *, fail: bool = False) -> int:
        """Doubles x."""
        assert reporter.current_report().active_requests == 1
        fake_clock.advance(0.010)
        if fail:
            raise Boom()
        return 2 * x

    assert handle.__name__ == "handle" and handle.__doc__ == "Doubles x."
    assert handle(21) == 42
    with pytest.raises(Boom):
        handle(1, fail=True)
    report = reporter.current_report()
    assert (report.active_requests, report.mean_latency_ms, report.error_rate) == (0, pytest.approx(10.0), 0.25)


async def test_decorator_and_track_async_track_coroutines(reporter, fake_clock) -> None:
    @reporter.tracked
    async def handle(x: int) -> int:
        assert reporter.current_report().active_requests == 1
        await asyncio.sleep(0)
        fake_clock.advance(0.020)
        if x < 0:
            raise Boom()
        return x

    assert asyncio.iscoroutinefunction(handle)
    assert await handle(5) == 5
    with pytest.raises(Boom):
        await handle(-1)
    async with reporter.track_async():
        assert reporter.current_report().active_requests == 1
        fake_clock.advance(0.060)
    report = reporter.current_report()
    assert report.active_requests == 0
    assert report.mean_latency_ms == pytest.approx(20 + 0.5 * (60 - 20))
    assert report.error_rate == pytest.approx(0.25 * 0.75)


async def test_a_cancelled_request_only_leaves_in_flight(reporter, fake_clock) -> None:
    started = asyncio.Event()

    @reporter.tracked
    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await started.wait()
    assert reporter.current_report().active_requests == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    report = reporter.current_report()
    assert (report.active_requests, report.mean_latency_ms, report.error_rate) == (0, 0.0, 0.0)


def test_report_now_pushes_the_current_load(reporter, fake_channel, fake_clock) -> None:
    with reporter.track():
        fake_clock.advance(0.050)
    with reporter.track():
        assert reporter.report_now() is True
    [request] = pushed(fake_channel)
    [report] = request.reports
    assert (report.pool, report.server_id, report.cpu_percent, report.memory_percent) == ("api", "s1", 12.5, 40.0)
    assert (report.active_requests, report.error_rate) == (1, 0.0)
    assert report.mean_latency_ms == pytest.approx(50.0)
    assert fake_channel.calls[-1].timeout == 0.5  # the client's deadline: shorter than the interval
    assert reporter.stats() == ReporterStats(pushed=1, failed=0, last_error=None)


def test_push_deadline_never_exceeds_the_interval(client, fake_channel, sampler) -> None:
    BackendReporter(client, "api", "s1", interval_s=0.2, sampler=sampler).report_now()
    assert fake_channel.calls[-1].timeout == 0.2


def test_report_values_are_clamped_into_the_contract(reporter, sampler) -> None:
    sampler.sample = (150.0, float("nan"))
    report = reporter.current_report()
    assert report == LoadReport(pool="api", server_id="s1", cpu_percent=100.0, memory_percent=0.0)
    sampler.sample = (-3.0, 101.0)
    assert (reporter.current_report().cpu_percent, reporter.current_report().memory_percent) == (0.0, 100.0)


def test_failed_pushes_are_counted_logged_once_per_outage_and_never_raised(
    reporter, fake_channel, sampler, caplog
) -> None:
    caplog.set_level(logging.DEBUG, logger="loadwarden.sdk")
    fake_channel.answers["ReportLoad"] = unavailable()
    assert reporter.report_now() is False
    assert reporter.report_now() is False
    sampler.sample = RuntimeError("psutil broke")
    assert reporter.report_now() is False

    stats = reporter.stats()
    assert (stats.pushed, stats.failed) == (0, 3)
    assert isinstance(stats.last_error, RuntimeError)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "api/s1" in warnings[0].getMessage()
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 2

    caplog.clear()
    sampler.sample = (1.0, 2.0)
    del fake_channel.answers["ReportLoad"]
    assert reporter.report_now() is True
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    fake_channel.answers["ReportLoad"] = unavailable()
    assert reporter.report_now() is False  # a new outage: warned again
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.WARNING]
    stats = reporter.stats()
    assert (stats.pushed, stats.failed) == (1, 4)
    assert isinstance(stats.last_error, UnavailableError)


def test_a_closed_client_is_a_failed_push_not_an_exception(reporter, client) -> None:
    client.close()
    assert reporter.report_now() is False
    assert isinstance(reporter.stats().last_error, RuntimeError)


def test_background_thread_pushes_every_interval_and_survives_failures(client, fake_channel, sampler) -> None:
    answers = iter([unavailable(), unavailable()])

    def flaky(request: _pb.ReportLoadRequest) -> object:
        return next(answers, None) or _pb.ReportLoadResponse(applied=len(request.reports))

    fake_channel.answers["ReportLoad"] = flaky
    with BackendReporter(client, "api", "s1", interval_s=0.005, sampler=sampler) as reporter:
        assert reporter.running
        deadline = time.monotonic() + DEADLINE_S
        while reporter.stats().pushed < 3:
            assert time.monotonic() < deadline, reporter.stats()
            time.sleep(0.001)
        thread = reporter._thread
    assert thread is not None and not thread.is_alive()
    assert not reporter.running
    assert reporter.stats().failed == 2
    calls = len(pushed(fake_channel))
    time.sleep(0.02)
    assert len(pushed(fake_channel)) == calls  # stopped means stopped


def test_pushes_keep_to_the_interval_grid(reporter, fake_clock) -> None:
    reporter.interval_s = 1.0
    start = fake_clock.now
    fake_clock.advance(0.3)  # the push took 300 ms
    assert reporter._next_push_at(start) == start + 1.0
    fake_clock.advance(2.0)  # it overran: the next one goes now, missed ones are not caught up
    assert reporter._next_push_at(start) == fake_clock.now


async def test_async_client_pushes_from_a_task(fake_aio_channel, sampler) -> None:
    client = AsyncClient(channel=fake_aio_channel, timeout_s=0.5, **NO_RESILIENCE)
    fake_aio_channel.answers["ReportLoad"] = unavailable()
    reporter = BackendReporter(client, "api", "s2", interval_s=0.005, sampler=sampler)
    with pytest.raises(TypeError, match="report_now_async"):
        reporter.report_now()
    assert await reporter.report_now_async() is False
    del fake_aio_channel.answers["ReportLoad"]
    async with reporter:
        assert reporter._task is not None and reporter._thread is None
        async with asyncio.timeout(DEADLINE_S):
            while reporter.stats().pushed < 2:
                await asyncio.sleep(0.001)
    assert not reporter.running
    assert reporter.stats().failed == 1
    assert {r.server_id for request in pushed(fake_aio_channel) for r in request.reports} == {"s2"}
    await client.close()


async def test_sync_client_reporter_stops_from_async_code(client, sampler) -> None:
    reporter = BackendReporter(client, "api", "s1", interval_s=NEVER_S, sampler=sampler)
    async with reporter:
        await asyncio.to_thread(lambda: None)
    assert not reporter.running and reporter.stats().pushed == 1
    with pytest.raises(TypeError, match="report_now\\(\\)"):
        await reporter.report_now_async()


def test_start_without_a_loop_needs_one_for_async_clients(fake_aio_channel, sampler) -> None:
    reporter = BackendReporter(AsyncClient(channel=fake_aio_channel, **NO_RESILIENCE), "api", "s1", sampler=sampler)
    with pytest.raises(RuntimeError):
        reporter.start()


def test_psutil_sampler_reads_the_host() -> None:
    cpu, memory = PsutilSampler()()
    assert 0.0 <= cpu <= 100.0 and 0.0 < memory <= 100.0


@pytest.mark.parametrize(
    ("override", "name"),
    [
        ({"client": object()}, "client"),
        ({"pool": ""}, "pool"),
        ({"server_id": 7}, "server_id"),
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": float("inf")}, "interval_s"),
        ({"interval_s": True}, "interval_s"),
        ({"latency_ewma_weight": 0.0}, "latency_ewma_weight"),
        ({"latency_ewma_weight": 1.5}, "latency_ewma_weight"),
        ({"error_ewma_weight": float("nan")}, "error_ewma_weight"),
        ({"sampler": "psutil"}, "sampler"),
        ({"clock": 1.0}, "clock"),
        ({"perf_counter": None}, "perf_counter"),
        ({"clock": None}, "clock"),
    ],
)
def test_constructor_errors_name_the_parameter(client, sampler, override: dict, name: str) -> None:
    args = {"client": client, "pool": "api", "server_id": "s1", "sampler": sampler, **override}
    with pytest.raises(ValueError, match=name):
        BackendReporter(args.pop("client"), args.pop("pool"), args.pop("server_id"), **args)


def test_track_is_thread_safe(reporter) -> None:
    def work() -> None:
        for _ in range(2000):
            with reporter.track():
                pass

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert reporter.current_report().active_requests == 0
    assert reporter._requests._finished == 16_000


async def test_async_reporter_restarts_right_after_stop(fake_aio_channel, sampler) -> None:
    client = AsyncClient(channel=fake_aio_channel, **NO_RESILIENCE)
    reporter = BackendReporter(client, "api", "s1", interval_s=NEVER_S, sampler=sampler)
    reporter.start()
    reporter.stop()  # the task is cancelled, not yet done
    reporter.start()
    async with asyncio.timeout(DEADLINE_S):
        while reporter.stats().pushed < 1:
            await asyncio.sleep(0.001)
    assert reporter.running
    await reporter.stop_async()
    assert not reporter.running
    await client.close()
