"""BackendReporter fed from outside its `track()` wrappers, and reporting the process's own CPU."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, cast

import psutil
import pytest

from loadwarden.sdk import Client
from loadwarden.sdk._reporter import BackendReporter, ProcessSampler, PsutilSampler

from .conftest import FakeChannel, FakeClock, as_channel


@pytest.fixture
def client(fake_channel: FakeChannel) -> Iterator[Client]:
    client = Client(channel=as_channel(fake_channel), breaker=None, retry=None)
    yield client
    client.close()


@pytest.fixture
def reporter(client: Client, fake_clock: FakeClock) -> BackendReporter:
    return BackendReporter(client, "api", "s1", sampler=lambda: (10.0, 20.0), perf_counter=fake_clock)


def test_set_in_flight_replaces_the_tracked_count(reporter: BackendReporter) -> None:
    with reporter.track():
        assert reporter.current_report().active_requests == 1
        reporter.set_in_flight(7)
        assert reporter.current_report().active_requests == 7
    reporter.set_in_flight(0)

    assert reporter.current_report().active_requests == 0


def test_observe_folds_latency_and_failures_without_touching_in_flight(reporter: BackendReporter) -> None:
    reporter.observe(0.100)  # the first sample seeds both EWMAs
    first = reporter.current_report()
    reporter.observe(0.200, ok=False)
    second = reporter.current_report()

    assert (first.mean_latency_ms, first.error_rate, first.active_requests) == (100.0, 0.0, 0)
    assert second.mean_latency_ms == pytest.approx(100.0 + 0.2 * (200.0 - 100.0))
    assert second.error_rate == pytest.approx(0.2)
    assert second.active_requests == 0


def test_observe_and_track_feed_the_same_figures(reporter: BackendReporter, fake_clock: FakeClock) -> None:
    with reporter.track():
        fake_clock.advance(0.050)
    reporter.observe(0.150)

    assert reporter.current_report().mean_latency_ms == pytest.approx(50.0 + 0.2 * (150.0 - 50.0))


@pytest.mark.parametrize("latency_s", [-0.001, math.nan, math.inf, "1", True, None])
def test_observe_refuses_a_latency_that_is_not_one(reporter: BackendReporter, latency_s: Any) -> None:
    with pytest.raises(ValueError, match="latency_s must be a finite number of seconds >= 0"):
        reporter.observe(latency_s)

    assert reporter.current_report().mean_latency_ms == 0.0


def test_observe_refuses_an_ok_that_is_not_a_bool(reporter: BackendReporter) -> None:
    with pytest.raises(ValueError, match="ok must be True or False"):
        reporter.observe(0.1, ok=1)  # type: ignore[arg-type]  # the mistake under test


@pytest.mark.parametrize("count", [-1, 1.5, "3", None, True])
def test_set_in_flight_refuses_a_count_that_is_not_one(reporter: BackendReporter, count: Any) -> None:
    with pytest.raises(ValueError, match="count must be an integer >= 0"):
        reporter.set_in_flight(count)


class FakeProcess:
    def __init__(self, percent: float) -> None:
        self.percent = percent
        self.calls = 0

    def cpu_percent(self, interval: float | None = None) -> float:
        self.calls += 1
        return self.percent


def test_process_sampler_divides_by_the_cpus_like_the_host_figure() -> None:
    process = FakeProcess(150.0)  # one and a half cores busy
    sampler = ProcessSampler(cast(psutil.Process, process), cpu_count=4)

    cpu, memory = sampler()

    assert process.calls == 2  # the first reading, taken when built, is what the first sample is measured from
    assert cpu == 37.5
    assert 0.0 <= memory <= 100.0


def test_process_sampler_reads_this_process() -> None:
    cpu, memory = ProcessSampler()()

    assert 0.0 <= cpu <= 100.0
    assert 0.0 <= memory <= 100.0


def test_cpu_option_chooses_the_sampler(client: Client) -> None:
    assert isinstance(BackendReporter(client, "api", "s1")._sampler, PsutilSampler)  # the default is unchanged
    assert isinstance(BackendReporter(client, "api", "s1", cpu="process")._sampler, ProcessSampler)


def test_cpu_option_is_checked(client: Client) -> None:
    with pytest.raises(ValueError, match="cpu must be 'host' or 'process'"):
        BackendReporter(client, "api", "s1", cpu="container")
    with pytest.raises(ValueError, match="pass either cpu or sampler"):
        BackendReporter(client, "api", "s1", cpu="process", sampler=lambda: (1.0, 2.0))
