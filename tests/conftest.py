"""Fixtures shared by the integration tests: a real grpc.aio service on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import os
import time

# gRPC core logs connection teardown at INFO; keep test output to what tests say.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest

from loadwarden.server import (
    ManualClock,
    PoolSettings,
    PoolSpec,
    RunningService,
    ServerSpec,
    ServiceConfig,
    start_service,
)

StartService = Callable[..., Awaitable[RunningService]]


def three_server_pool(name: str = "api", strategy: str = "round_robin", **settings: Any) -> PoolSpec:
    """A pool of servers s1, s2, s3 at 127.0.0.1:9001-9003."""
    servers = tuple(ServerSpec(f"s{i}", f"127.0.0.1:900{i}") for i in (1, 2, 3))
    return PoolSpec(PoolSettings(name=name, strategy=strategy, **settings), servers)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def start() -> AsyncIterator[StartService]:
    """Starts services on 127.0.0.1:0 with a seeded RNG; stops them all at teardown."""
    started: list[RunningService] = []

    async def _start(*pools: PoolSpec, clock: ManualClock | None = None, **config: Any) -> RunningService:
        cfg = ServiceConfig(listen="127.0.0.1:0", pools=pools, **config)
        running = await start_service(cfg, clock=clock, rng=random.Random(7))
        started.append(running)
        return running

    yield _start
    for running in started:
        await running.stop(0)


@pytest.fixture
async def channel_to() -> AsyncIterator[Callable[[RunningService], grpc.aio.Channel]]:
    """Opens grpc.aio channels to running services; closes them at teardown."""
    channels: list[grpc.aio.Channel] = []

    def _open(running: RunningService) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(running.target)
        channels.append(ch)
        return ch

    yield _open
    for ch in channels:
        await ch.close()


@pytest.fixture
def global_tracing() -> Iterator[None]:
    """Starts the test with no global TracerProvider and restores the previous one after it.

    OpenTelemetry lets a process set its provider once; tests reset its private
    globals so each can install its own.
    """
    from opentelemetry import trace
    from opentelemetry.util._once import Once

    from loadwarden.observability import shutdown_tracing

    saved = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE
    trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = None, Once()
    try:
        yield
    finally:
        shutdown_tracing()
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved


async def wait_for(
    fetch: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], what: str, *, timeout_s: float = 5.0
) -> Any:
    """Awaits ``fetch()`` until ``done`` holds for its value, which it returns; fails after ``timeout_s``.

    ``what`` names the condition in the failure message, with the last value seen.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = await fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout_s} s (last: {value!r})"
        await asyncio.sleep(0.02)


@pytest.fixture
def spans(global_tracing: None) -> Iterator[Any]:
    """Installs a global TracerProvider exporting to memory (undone by `global_tracing`);
    yields its ``InMemorySpanExporter``."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()


@pytest.fixture
def processes(tmp_path: Any) -> Iterator[Any]:
    """Starts real processes in ``tmp_path`` (``tests/e2e/_harness.Processes``); all are
    stopped at teardown (SIGTERM, then SIGKILL after 10 s)."""
    from .e2e._harness import Processes

    procs = Processes(tmp_path)
    yield procs
    procs.close()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (the Debian package) on a free loopback port for the module's
    tests, which share it under different key prefixes."""
    from .e2e._harness import Processes

    procs = Processes(tmp_path_factory.mktemp("redis"))
    server = procs.redis()
    yield server.url
    procs.close()
