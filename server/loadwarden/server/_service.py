"""Starting and stopping the Decision service: gRPC server, health, reflection, sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from loadwarden.v1 import admin_pb2, admin_pb2_grpc, decision_pb2, decision_pb2_grpc

from ._clock import Clock
from ._config import ServiceConfig
from ._core import DecisionCore
from ._errors import ConfigError, InvalidArgument
from ._loadmonitor import HostMonitor, LoadWeights
from ._persistence import Persister, restore
from ._reflection import enable_reflection
from ._servicer import AdminServicer, DecisionServicer
from ._store import STORES, MemoryStore, StateStore

log = logging.getLogger("loadwarden.server")

DECISION_SERVICE = decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
SERVICE_NAMES = (DECISION_SERVICE, ADMIN_SERVICE)

_SERVER_OPTIONS = (
    # Without this, Linux lets a second process bind the same port and steal half the calls.
    ("grpc.so_reuseport", 0),
)


@dataclass
class RunningService:
    """A started service. ``port`` is the bound port (useful with port 0); ``host`` keeps
    IPv6 brackets, so ``target`` is dialable as is."""

    server: grpc.aio.Server
    core: DecisionCore
    health: health.aio.HealthServicer
    host: str
    port: int
    persister: Persister | None
    _tasks: list[asyncio.Task[None]]

    @property
    def target(self) -> str:
        """``host:port`` for clients."""
        return f"{self.host}:{self.port}"

    async def stop(self, grace_s: float | None = None) -> None:
        """Reports NOT_SERVING, then lets in-flight RPCs finish for ``grace_s`` seconds."""
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.server.stop(grace_s)
        if self.persister is not None:
            await self.persister.save()  # after the last outcome was applied


async def start_service(
    config: ServiceConfig,
    *,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    extra_handlers: Sequence[grpc.GenericRpcHandler] = (),
    store: StateStore | None = None,
) -> RunningService:
    """Builds the decision core from ``config`` and starts serving on ``config.listen``.

    Args:
        config: Validated service configuration.
        clock: Time source; the system clock by default.
        rng: Randomness for strategies; ``random.Random(config.seed)`` by default.
        extra_handlers: More gRPC handlers to serve on the same port (benchmarks use
            this to put an empty handler beside the real ones).
        store: Where learned state is kept; built from ``config.state`` by default.

    Raises:
        ConfigError: a pool's strategy or parameters are invalid.
        OSError: the address cannot be bound.
    """
    core = DecisionCore(config.limits, clock=clock, rng=rng or random.Random(config.seed))
    for spec in config.pools:
        where = f"pools.{spec.settings.name}"
        try:
            core.configure_pool(spec.settings, spec.servers, where=where)
        except InvalidArgument as exc:
            raise ConfigError(exc.field, exc.problem) from None
    for operation in config.operations:
        core.configure_operation(operation)
    if config.monitor.enabled:
        m = config.monitor
        core.monitor = HostMonitor(
            core.clock,
            interval_s=m.interval_ms / 1000.0,
            weights=LoadWeights(m.cpu_weight, m.memory_weight, m.load_average_weight),
            stale_after_s=m.stale_after_ms / 1000.0 if m.stale_after_ms else None,
        )
        core.monitor.sample_now()  # primes psutil's CPU counter; the first real reading follows
    if store is None:
        store = STORES[config.state.store](config.state.path) if config.state.store == "file" else MemoryStore()
    restore(core, store)

    server = grpc.aio.server(options=_SERVER_OPTIONS)
    decision_pb2_grpc.add_DecisionServiceServicer_to_server(DecisionServicer(core), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(core), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection((*SERVICE_NAMES, health.SERVICE_NAME), server)
    if extra_handlers:
        server.add_generic_rpc_handlers(tuple(extra_handlers))

    host = config.listen.rpartition(":")[0]
    try:
        port = server.add_insecure_port(config.listen)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {config.listen}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}")
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    tasks = [asyncio.create_task(_sweep(core, config.expiry_interval_ms / 1000.0), name="loadwarden-sweeper")]
    if core.monitor is not None:
        tasks.append(asyncio.create_task(core.monitor.run(), name="loadwarden-host-monitor"))
    persister = None
    if store.durable:
        persister = Persister(core, store, config.state.save_interval_ms / 1000.0)
        tasks.append(asyncio.create_task(persister.run(), name="loadwarden-persister"))
    log.info("loadwarden serving on %s:%d (%d pools)", host, port, len(config.pools))
    return RunningService(server, core, health_servicer, host, port, persister, tasks)


async def _sweep(core: DecisionCore, interval_s: float) -> None:
    # Expires decisions even when no request arrives to do it on the way.
    while True:
        await asyncio.sleep(interval_s or 1.0)
        core.expire()


async def serve(config: ServiceConfig, ready: asyncio.Event | None = None) -> None:
    """Runs the service until SIGTERM or SIGINT, then drains gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Handlers first: a signal that arrives as soon as we announce readiness must drain too.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start_service(config)
    print(f"loadwarden listening on {running.target}", flush=True)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("loadwarden draining (grace %d ms)", config.shutdown_grace_ms)
    await running.stop(config.shutdown_grace_ms / 1000.0)
    log.info("loadwarden stopped")
